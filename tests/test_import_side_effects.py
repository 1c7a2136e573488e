"""``import cxr_max`` changes nothing for other datasets; ``datasets.load_dataset("cxr_max", ...)`` still works.

The comparison runs in fresh subprocesses (one that imports cxr_max, one that does not) so neither sees the
other's import state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

import cxr_max
from cxr_max import registration

ROOT = Path(__file__).resolve().parents[1]

# Loads json, parquet and imagefolder data (and one refused call) and prints everything observable about it and
# about datasets' process-wide state as one JSON object.
PROBE = r'''
import hashlib, json, os, sys
import datasets, datasets.config, datasets.inspect, datasets.load
import datasets.packaged_modules as pm

loads = []
original_count = datasets.load.increase_load_count
datasets.load.increase_load_count = lambda name: (loads.append(name), original_count(name))[1]

if sys.argv[1] == "with":
    import cxr_max  # noqa: F401
    assert datasets.load_dataset_builder("cxr_max", "mimic").__class__.__name__ == "CxrMax"

data, cache = sys.argv[2], sys.argv[3]

def digest(value):
    if hasattr(value, "tobytes"):  # a decoded image
        return hashlib.sha256(value.tobytes()).hexdigest()[:16]
    return value

def observe(kind, **kw):
    out = {}
    try:
        builder = datasets.load_dataset_builder(kind, cache_dir=cache, **kw)
        out["builder"] = [type(builder).__module__, type(builder).__qualname__, builder.config_id, builder.hash,
                          os.path.relpath(builder.cache_dir, cache)]
        ds = datasets.load_dataset(kind, cache_dir=cache, **kw)
        out["splits"] = {name: {"features": split.features.to_dict(), "rows": split.num_rows,
                                "data": [{k: digest(v) for k, v in row.items()} for row in split],
                                "files": [os.path.relpath(f["filename"], cache) for f in split.cache_files]}
                         for name, split in ds.items()}
    except Exception as e:  # the same error, with the same message, either way
        out["error"] = [type(e).__name__, str(e).replace(os.getcwd(), "<cwd>")]
    return out

module = datasets.load.dataset_module_factory("json", data_files=os.path.join(data, "rows.jsonl"))
report = {
    "json": observe("json", data_files={"train": os.path.join(data, "rows.jsonl")}),
    "parquet": observe("parquet", data_files={"train": os.path.join(data, "rows.parquet")}),
    "imagefolder": observe("imagefolder", data_dir=os.path.join(data, "images")),
    "json without files": observe("json"),
    "json module": [module.module_path, module.hash, sorted(module.builder_kwargs)],
    "packaged modules": sorted(map(list, ((k, list(v)) for k, v in pm._PACKAGED_DATASETS_MODULES.items()))),
    "extensions": sorted(pm._EXTENSION_TO_MODULE.items()),
    "get_module": [datasets.load.PackagedDatasetModuleFactory.get_module.__module__,
                   datasets.load.PackagedDatasetModuleFactory.get_module.__qualname__,
                   sorted(vars(datasets.load.PackagedDatasetModuleFactory))],
    "inspect resolves with": datasets.inspect.dataset_module_factory is datasets.load.dataset_module_factory,
    "config": {k: repr(sorted(v) if isinstance(v, (set, frozenset)) else v) for k, v in sorted(vars(datasets.config).items()) if k.isupper()},
    "load counts": loads,
}
print(json.dumps(report, default=repr))
'''


def _write_data(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rows = [{"text": f"row {i}", "label": i % 3, "score": i / 7} for i in range(12)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet")
    for i, cls in enumerate(["effusion", "normal", "effusion", "normal"]):
        d = folder / "images" / "train" / cls
        d.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), color=40 * i).save(d / f"img{i}.png")


def _probe(mode: str, data: Path, cache: Path) -> dict:
    cwd = cache.parent / f"cwd-{mode}"  # an empty working folder: nothing there to glob for data files
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode, str(data), str(cache)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_json_parquet_and_imagefolder_load_the_same_with_and_without_import_cxr_max(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_data(data)
    without = _probe("without", data, tmp_path / "cache-without")
    with_ = _probe("with", data, tmp_path / "cache-with")
    # the probe really loaded the data (so equality below compares something)
    assert without["json"]["splits"]["train"]["rows"] == 12 and without["parquet"]["splits"]["train"]["rows"] == 12
    assert without["imagefolder"]["splits"]["train"]["features"]["label"]["names"] == ["effusion", "normal"]
    assert without["json without files"]["error"][0] == "EmptyDatasetError"
    # datasets' download counter is called for each packaged name as usual (and never for "cxr_max", which the
    # "with" probe also resolved)
    assert without["load counts"] == ["json"] * 3 + ["parquet"] * 2 + ["imagefolder"] * 2 + ["json"]
    for key in without:
        assert with_[key] == without[key], key
    assert with_ == without


def test_import_cxr_max_registers_only_a_wrapper_that_delegates():
    from datasets import load
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    assert registration.is_registered()
    assert "cxr_max" not in _PACKAGED_DATASETS_MODULES
    assert not getattr(load.PackagedDatasetModuleFactory.get_module, "_cxr_max", False)
    wrapper = load.dataset_module_factory
    module = wrapper("cxr_max")
    assert (module.module_path, module.builder_kwargs) == ("cxr_max.builder", {"dataset_name": "cxr_max"})
    registration.unregister()
    try:
        assert load.dataset_module_factory is wrapper.__wrapped__ and not registration.is_registered()
        registration.unregister()  # a no-op now
        assert load.dataset_module_factory is wrapper.__wrapped__
    finally:
        registration.register()
    assert registration.is_registered() and load.dataset_module_factory is not wrapper  # a new, equivalent wrapper
    registration.register()  # idempotent: no second layer
    assert load.dataset_module_factory.__wrapped__ is wrapper.__wrapped__


def test_datasets_inspect_sees_the_cxr_max_configs_too():
    from datasets import inspect as dinspect
    from datasets import load

    from cxr_max.builder import CONFIG_NAMES

    assert dinspect.dataset_module_factory is load.dataset_module_factory
    assert datasets.get_dataset_config_names("cxr_max") == list(CONFIG_NAMES)
    registration.unregister()
    try:
        assert dinspect.dataset_module_factory is load.dataset_module_factory is not None
        assert not registration.is_registered()
    finally:
        registration.register()


def test_the_cxr_max_name_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="data_files"):
        datasets.load_dataset_builder("cxr_max", "mimic", data_files={"train": "x.json"})
    with pytest.raises(ValueError, match="revision"):
        datasets.load_dataset_builder("cxr_max", "mimic", revision="main")


def test_registration_fails_clearly_when_datasets_changes(monkeypatch):
    from datasets import load

    monkeypatch.delattr(load, "dataset_module_factory")
    with pytest.raises(RuntimeError, match=r"cxr_max\.load_dataset"):
        registration.register()


def test_unregister_leaves_a_later_wrapper_in_place(monkeypatch):
    from datasets import load

    ours = load.dataset_module_factory

    def theirs(path, *args, **kwargs):
        return ours(path, *args, **kwargs)

    theirs.__wrapped__ = ours
    monkeypatch.setattr(load, "dataset_module_factory", theirs)
    assert registration.is_registered()
    with pytest.raises(RuntimeError, match="wrapped again"):
        registration.unregister()
    assert load.dataset_module_factory is theirs


def test_datasets_load_dataset_cxr_max_works_after_import(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty cwd: no data files to find, and none needed
    ds = datasets.load_dataset("cxr_max", "mimic", split="validation", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows > 0 and "labels" in ds.column_names
    same = cxr_max.load_dataset("mimic", split="validation", cache_dir=str(tmp_path / "hf"))
    assert same.cache_files == ds.cache_files  # both entry points share one cache folder


# ------------------------------------------------------------------ cxr_max.load_dataset: two call styles


def test_load_dataset_takes_datasets_arguments_after_the_builder_name(tmp_path):
    from cxr_max.builder import CONFIG_NAMES

    assert "cxr_max" not in CONFIG_NAMES  # what makes the two styles unambiguous
    hf = str(tmp_path / "hf")
    by_config = cxr_max.load_dataset("mimic", "validation", cache_dir=hf)
    styles = [
        cxr_max.load_dataset("cxr_max", "mimic", split="validation", cache_dir=hf),  # TypeError before
        cxr_max.load_dataset("cxr_max", name="mimic", split="validation", cache_dir=hf),
        cxr_max.load_dataset(path="cxr_max", name="mimic", split="validation", cache_dir=hf),
        cxr_max.load_dataset("cxr_max", "mimic", None, None, "validation", hf),  # datasets' positional order
        datasets.load_dataset("cxr_max", "mimic", split="validation", cache_dir=hf),
    ]
    for ds in styles:
        assert ds.cache_files == by_config.cache_files and ds.num_rows == by_config.num_rows > 0
    assert cxr_max.load_dataset("cxr_max", cache_dir=hf)["validation"].cache_files == by_config.cache_files


def test_load_dataset_in_datasets_style_binds_like_datasets(tmp_path):
    missing = tmp_path / "no-such-root"
    # the third positional argument is data_dir, as in datasets.load_dataset (not a split)
    with pytest.raises(Exception, match="no-such-root") as by_position:
        cxr_max.load_dataset("cxr_max", "mimic", str(missing), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(type(by_position.value), match="no-such-root"):
        cxr_max.load_dataset("mimic", data_dir=str(missing), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(TypeError, match="data_files, features"):
        cxr_max.load_dataset("cxr_max", "sft", data_files="x.json", features=datasets.Features())
    with pytest.raises(TypeError, match="too many positional"):
        cxr_max.load_dataset("cxr_max", "mimic", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
                             "o", "p", "q")  # more positional arguments than datasets.load_dataset has

"""cxr_max.builder.context and the builder's state: explicit objects, nothing large pickled, the cache key."""

from __future__ import annotations

import pickle
import shutil
from collections import Counter
from pathlib import Path

import pytest

import cxr_max.builder.cache as cache_module
from cxr_max.builder import CxrMax, Scratch, code_digest
from cxr_max.builder.context import BuildContext, drain
from cxr_max.errors import SkipLog
from cxr_max.sources import resolve_source


def test_the_builder_creates_no_attribute_after_init(tmp_path):
    """Every attribute a build uses exists from __init__ on (no state made on first use)."""
    b = CxrMax(config_name="trajectories", images="path", cache_dir=str(tmp_path / "hf"))
    before = set(vars(b))
    b.download_and_prepare(num_proc=2)
    b.as_dataset()
    assert set(vars(b)) == before
    stream = CxrMax(config_name="studies", images="path", cache_dir=str(tmp_path / "hf2"))
    before = set(vars(stream))
    next(iter(stream.as_streaming_dataset(split="validation")))
    assert set(vars(stream)) == before


def test_the_context_pickles_small_and_reopens_from_the_scratch_folder(synthetic_root):
    cfg = CxrMax(config_name="trajectories", images="path").config
    ctx = BuildContext(cfg, resolve_source(), Scratch.create(), SkipLog())
    with pytest.raises(RuntimeError, match="_split_generators"):
        ctx.index()
    index = ctx.publish_index()
    ctx.root()  # a process-local MimicRoot (tables, reports archive): not pickled
    blob = pickle.dumps(ctx)
    assert len(blob) < index.nbytes / 2
    worker = pickle.loads(blob)
    assert worker.index().equals(index) and worker.all_dicom_ids().equals(ctx.all_dicom_ids())
    assert worker.scratch == ctx.scratch and worker.source == ctx.source


def test_skip_counts_travel_through_the_scratch_folder(tmp_path):
    scratch = Scratch(tmp_path)
    a, b = SkipLog(), SkipLog()
    a.add("malformed JSON", "f.jsonl:3")
    b.add("malformed JSON", "g.jsonl:9")
    b.add("missing image file", "x.jpg")
    scratch.write_skips(a)
    scratch.write_skips(b)
    total = SkipLog()
    scratch.collect_skips(total)
    assert total.counts == Counter({"malformed JSON": 2, "missing image file": 1})
    assert sorted(total.examples["malformed JSON"]) == ["f.jsonl:3", "g.jsonl:9"]
    assert not list(tmp_path.glob("skips-*"))
    source, into = SkipLog(), SkipLog()
    source.add("r", "w")
    same = source
    drain(source, into)
    assert into.counts == Counter({"r": 1}) and source is same and source.total == 0 and not source.examples


def test_the_code_digest_covers_the_builder_package_and_what_it_reads(tmp_path, monkeypatch):
    here = Path(cache_module.__file__).resolve().parents[1]  # the cxr_max folder
    real = code_digest()
    pkg = tmp_path / "cxr_max"
    shutil.copytree(here, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_module, "__file__", str(pkg / "builder" / "cache.py"))
    before = code_digest()
    assert before == real  # a copy of the same code: the same digest (paths are taken relative to cxr_max/)
    for rel in ("builder/specs.py", "builder/shards.py", "sources.py", "mimic/reports.py", "mimic/tables.py",
                "trajectories/io.py", "synthetic/world.py", "labels.py", "errors.py"):
        f = pkg / rel
        f.write_text(f.read_text() + "\n# a fix\n")
        after = code_digest()
        assert after != before, rel
        before = after
    (pkg / "teachers" / "client.py").write_text("# not read by a build\n")
    assert code_digest() == before

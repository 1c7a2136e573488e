"""Real PhysioNet copies as users hold them: partial downloads, broken files, archive forms, radiologist
test labels, several workers, the caches. Each test builds on a small synthetic world or the tiny tree of
``fixtures_mimic`` (no mocks of the readers)."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

import cxr_max
from cxr_max.builder import CxrMax, code_digest, image_problem
from cxr_max.errors import DataError
from cxr_max.mimic import MimicRoot, ReportStore
from cxr_max.synthetic import ensure_synthetic, load_truth
from cxr_max.synthetic.build import study_dir
from fixtures_mimic import TEST_SET_LABELS, make_mimic_tree


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A small synthetic world (tiny pixels) with every teacher: ~40 images x 7 teachers."""
    return ensure_synthetic(tmp_path_factory.mktemp("small") / "w", seed=6, n_patients=14, pixels="tiny")


def _jpg(root: Path, t) -> Path:
    return root / "mimic-cxr-jpg" / study_dir(t.subject_id, t.study_id) / f"{t.dicom_id}.jpg"


def _load(name, tmp_path, **kw):
    return cxr_max.load_dataset(name, cache_dir=str(tmp_path / "hf"), **kw)


def _partial_copy(small: Path, tmp_path: Path, keep) -> tuple[Path, Path, set[str]]:
    """A copy holding the tables, the JPGs of the images ``keep(truth)`` selects, and only their trajectories."""
    truth = load_truth(small)
    wanted = {d for d, t in truth.items() if keep(t)}
    jpg = tmp_path / "partial" / "mimic-cxr-jpg"
    jpg.mkdir(parents=True)
    for f in (small / "mimic-cxr-jpg").glob("*.csv.gz"):
        shutil.copy(f, jpg / f.name)
    for d in wanted:
        src = _jpg(small, truth[d])
        dst = jpg / src.relative_to(small / "mimic-cxr-jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    traj = tmp_path / "partial" / "traj"
    for f in sorted((small / "trajectories").rglob("*.jsonl")):
        lines = [ln for ln in f.read_text().splitlines() if json.loads(ln)["dicom_id"] in wanted]
        out = traj / f.relative_to(small / "trajectories")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(ln + "\n" for ln in lines))
    return jpg, traj, wanted


# --- (1) a partial download: only the images the requested rows join to are checked, in the workers


def test_a_copy_holding_only_the_needed_images_builds_under_the_default_policy(small, tmp_path):
    jpg, traj, wanted = _partial_copy(small, tmp_path, lambda t: t.view != "LATERAL" and t.split != "validate")
    assert len(wanted) < len(load_truth(small))  # the copy is partial: metadata lists images not on disk
    for config in ("trajectories", "sft", "studies"):
        ds = _load(config, tmp_path / config, data_dir=str(jpg), trajectories=str(traj), splits=("train", "test"))
        ids = {d for split in ds.values() for d in split["dicom_id"]}
        assert ids == wanted, config
    sft = _load("sft", tmp_path / "sft2", split="test", data_dir=str(jpg), trajectories=str(traj), splits=("test",))
    assert sft[0]["images"][0].mode == "RGB"
    # the mimic config asks for every image of the metadata: it names the first missing file, and says how to go on
    with pytest.raises(DataError, match=r"missing image file.*on_error='skip'"):
        _load("mimic", tmp_path / "m", data_dir=str(jpg), splits=("train", "test"))
    b = CxrMax(config_name="mimic", data_dir=str(jpg), on_error="skip", cache_dir=str(tmp_path / "m2"), splits=("train", "test"))
    b.download_and_prepare()
    in_splits = {d for d, t in load_truth(small).items() if t.split != "validate"}
    assert b.skips.counts["missing image file"] == len(in_splits - wanted)
    assert sum(d.num_rows for d in b.as_dataset().values()) == len(wanted)


def test_no_image_is_opened_before_the_workers_run(small, tmp_path, monkeypatch):
    """_split_generators reads tables only; the image checks run inside _generate_tables."""
    import cxr_max.builder as builder_module

    b = CxrMax(config_name="trajectories", data_dir=str(small / "mimic-cxr-jpg"),
               trajectories=str(small / "trajectories"), cache_dir=str(tmp_path / "hf"))
    calls = []
    monkeypatch.setattr(builder_module, "image_problem", lambda p, level: calls.append(p))
    gens = b._split_generators(None)
    assert calls == []
    chunk = gens[0].gen_kwargs["chunks"][0]
    next(b._generate_tables([chunk]))
    assert calls and all(p.endswith(".jpg") for p in calls)


# --- (2) verification catches truncated and empty JPGs and names the file


def test_verify_catches_truncated_and_empty_jpgs(tmp_path):
    world = ensure_synthetic(tmp_path / "w", seed=5, n_patients=8, pixels="tiny", teachers=False,
                             broken={"truncated": 1, "empty": 1, "missing": 1})
    broken = json.loads((world / "broken_files.json").read_text())
    truth = load_truth(world)
    truncated = _jpg(world, truth[broken["truncated"][0]])
    from PIL import Image

    with Image.open(truncated) as im:
        im.verify()  # what check_images="verify" used to do: a truncated JPEG passes it
    assert image_problem(str(truncated), "verify") == "truncated JPEG (no end-of-image marker)"
    assert image_problem(str(_jpg(world, truth[broken["empty"][0]])), "verify") == "empty image file"
    assert image_problem(str(_jpg(world, truth[broken["missing"][0]])), "exists") == "missing image file"
    good = next(d for d in truth if all(d not in v for v in broken.values()))
    assert image_problem(str(_jpg(world, truth[good])), "verify") is None
    assert image_problem(str(_jpg(world, truth[good])), "decode") is None
    with pytest.raises(DataError) as exc:
        _load("mimic", tmp_path, data_dir=str(world / "mimic-cxr-jpg"))
    assert str(exc.value).startswith(tuple(str(_jpg(world, truth[v[0]])) for v in broken.values()))
    b = CxrMax(config_name="mimic", data_dir=str(world / "mimic-cxr-jpg"), on_error="skip", cache_dir=str(tmp_path / "b"))
    b.download_and_prepare()
    assert {k: b.skips.counts[k] for k in ("missing image file", "truncated JPEG", "empty image file")} == \
        {"missing image file": 1, "truncated JPEG": 1, "empty image file": 1}
    assert any(str(truncated) in e for e in b.skips.examples["truncated JPEG"])


# --- (3) reports: tar.gz, and a config that asks for reports and finds none says so


def test_reports_tar_gz_is_read(tmp_path):
    tree = make_mimic_tree(tmp_path, reports="tar.gz")
    root = MimicRoot(tree.jpg_root, tree.dicom_root)
    assert root.report_source.name == "mimic-cxr-reports.tar.gz"
    assert "Small left pleural effusion." in root.report("50414267")["IMPRESSION"]
    assert "tar.gz::" in root.reports.where("10000032", "50414267") and len(root.reports) == 5
    mimic = _load("mimic", tmp_path, data_dir=str(tree.jpg_root), dicom_dir=str(tree.dicom_root), images="path")
    assert all(r is not None and "IMPRESSION" in r for r in mimic["train"]["report"])
    assert all(i for i in mimic["train"]["impression"])


def test_broken_tar_gz_names_the_file(tmp_path):
    tree = make_mimic_tree(tmp_path, reports="tar.gz")
    tar = tree.dicom_root / "mimic-cxr-reports.tar.gz"
    tar.write_bytes(tar.read_bytes()[:60])
    with pytest.raises(DataError, match="mimic-cxr-reports.tar.gz.*not a readable tar.gz"):
        ReportStore(tar)


def test_mimic_config_without_reports_says_so(tmp_path, caplog):
    tree = make_mimic_tree(tmp_path, reports=None)
    with caplog.at_level(logging.WARNING, logger="cxr_max"):
        ds = _load("mimic", tmp_path, data_dir=str(tree.jpg_root), dicom_dir=str(tree.dicom_root), images="path")
    assert all(r is None for r in ds["train"]["report"])
    assert any("no reports found" in r.message and "will be null" in r.message for r in caplog.records)


# --- (4) the radiologists' test labels


def test_radiologist_test_labels(tmp_path):
    tree = make_mimic_tree(tmp_path, test_labels=True)
    root = MimicRoot(tree.jpg_root, tree.dicom_root)
    table = root.radiologist_labels()
    assert "Lung Opacity" in table.column_names and "Airspace Opacity" not in table.column_names
    assert "subject_id" not in table.column_names and table["study_id"].to_pylist() == list(TEST_SET_LABELS)
    ds = _load("mimic", tmp_path, data_dir=str(tree.jpg_root), images="path", test_labels="radiologist")
    test = ds["test"][0]["labels"]
    assert test["Lung Opacity"] == 1.0 and test["Pleural Effusion"] == 0.0 and test["No Finding"] is None
    assert ds["train"][0]["labels"] == _load("mimic", tmp_path / "x", data_dir=str(tree.jpg_root), images="path")["train"][0]["labels"]
    bare = make_mimic_tree(tmp_path / "bare")
    with pytest.raises(DataError, match="test-set-labeled"):
        _load("mimic", tmp_path / "y", data_dir=str(bare.jpg_root), images="path", test_labels="radiologist")


# --- (5) studies and duplicates with several workers; streaming with several DataLoader workers


def _per_image(ds) -> dict[str, int]:
    return {r["dicom_id"]: len(r["trajectories"]) for split in ds.values() for r in split}


def test_studies_config_is_the_same_with_two_workers(small, tmp_path):
    kw = dict(data_dir=str(small / "mimic-cxr-jpg"), trajectories=str(small / "trajectories"), images="path")
    one = _load("studies", tmp_path / "one", **kw)
    two = cxr_max.load_dataset("studies", cache_dir=str(tmp_path / "two"), num_proc=2, shards=3, **kw)
    assert _per_image(one) == _per_image(two) and set(_per_image(one).values()) == {7}
    traj_one = _load("trajectories", tmp_path / "t1", **kw)
    traj_two = cxr_max.load_dataset("trajectories", cache_dir=str(tmp_path / "t2"), num_proc=2, **kw)
    key = lambda d: sorted((r["dicom_id"], r["teacher"]) for s in d.values() for r in s.select_columns(["dicom_id", "teacher"]))
    assert key(traj_one) == key(traj_two)


def test_studies_streamed_by_two_dataloader_workers(small, tmp_path):
    import torch

    kw = dict(data_dir=str(small / "mimic-cxr-jpg"), trajectories=str(small / "trajectories"), images="path")
    stream = cxr_max.load_dataset("studies", split="train", streaming=True, shards=4, **kw)
    assert stream.num_shards == 4
    loader = torch.utils.data.DataLoader(stream, num_workers=2, batch_size=None, collate_fn=lambda x: x)
    rows = {r["dicom_id"]: len(r["trajectories"]) for r in loader}
    assert rows == {r["dicom_id"]: len(r["trajectories"]) for r in _load("studies", tmp_path, split="train", **kw)}


def test_duplicate_keys_in_different_files_are_caught_with_two_workers(small, tmp_path):
    traj = tmp_path / "traj"
    shutil.copytree(small / "trajectories", traj)
    files = sorted(traj.rglob("*.jsonl"))
    line = files[0].read_text().splitlines()[0]
    extra = traj / "zz-copy" / "part-00000.jsonl"
    extra.parent.mkdir()
    extra.write_text(line + "\n")  # the same key in a second file, which another worker may read
    with pytest.raises(DataError, match="duplicate record") as exc:
        cxr_max.load_dataset("trajectories", data_dir=str(small / "mimic-cxr-jpg"), trajectories=str(traj),
                             images="path", cache_dir=str(tmp_path / "hf"), num_proc=2)
    assert str(extra) in str(exc.value) or str(files[0]) in str(exc.value)


# --- (6) scale: ranges not slices, reports per study, skips from workers, Key keys, timestamps


def test_mimic_shards_are_ranges_and_pickle_small(small, tmp_path):
    b = CxrMax(config_name="mimic", data_dir=str(small / "mimic-cxr-jpg"), cache_dir=str(tmp_path / "hf"))
    gens = b._split_generators(None)
    chunks = [c for g in gens for c in g.gen_kwargs["chunks"]]
    assert all(set(c) == {"start", "stop"} and isinstance(c["start"], int) for c in chunks)
    index_bytes = b._image_index().nbytes
    assert len(pickle.dumps(b)) < index_bytes / 2 and "_index" not in b.__getstate__()
    key, table = next(b._generate_tables(chunks[:1]))
    assert isinstance(key, datasets.builder.Key)
    assert pa.types.is_timestamp(table.schema.field("study_datetime").type)
    assert b.info.features["study_datetime"].dtype == "timestamp[us]"


def test_reports_are_parsed_once_per_study(small, tmp_path, monkeypatch):
    import cxr_max.mimic as mimic_module

    calls = []
    real = mimic_module.parse_report
    monkeypatch.setattr(mimic_module, "parse_report", lambda text: calls.append(text) or real(text))
    ds = _load("mimic", tmp_path, data_dir=str(small / "mimic-cxr-jpg"), dicom_dir=str(small / "mimic-cxr"), images="path")
    rows = [r for s in ds.values() for r in s.select_columns(["study_id", "report"])]
    with_report = {r["study_id"] for r in rows if r["report"] is not None}
    assert len(rows) > len(with_report) and len(calls) == len(with_report)


def test_worker_skip_counts_reach_the_end_of_build_summary(small, tmp_path, caplog):
    traj = tmp_path / "traj"
    shutil.copytree(small / "trajectories", traj)
    for f in sorted(traj.rglob("*.jsonl"))[:2]:  # two files: with two workers, two processes skip
        f.write_text(f.read_text() + '{"broken json\n')
    b = CxrMax(config_name="trajectories", data_dir=str(small / "mimic-cxr-jpg"), trajectories=str(traj),
               images="path", on_error="skip", cache_dir=str(tmp_path / "hf"))
    with caplog.at_level(logging.WARNING, logger="cxr_max"):
        b.download_and_prepare(num_proc=2)
    reason = next(k for k in b.skips.counts if "malformed JSON" in k)
    assert b.skips.counts[reason] == 2
    assert any("malformed JSON" in r.message and "build" in r.message for r in caplog.records)


# --- (7) caching


def test_config_hash_covers_every_module_the_build_reads(tmp_path, monkeypatch):
    import cxr_max.builder.cache as cache_module

    here = Path(cache_module.__file__).resolve().parents[1]  # the cxr_max folder
    pkg = tmp_path / "cxr_max"
    shutil.copytree(here, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_module, "__file__", str(pkg / "builder" / "cache.py"))
    before = code_digest()
    for rel in ("builder/specs.py", "mimic/reports.py", "mimic/tables.py", "trajectories/io.py", "synthetic/world.py"):
        f = pkg / rel
        f.write_text(f.read_text() + "\n# a fix\n")
        after = code_digest()
        assert after != before, rel
        before = after


def test_one_cache_for_both_entry_points(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "hf"
    a = cxr_max.load_dataset("mimic", split="validation", cache_dir=str(cache), images="path")
    built = sorted(p for p in cache.rglob("dataset_info.json"))
    b = datasets.load_dataset("cxr_max", "mimic", split="validation", cache_dir=str(cache), images="path")
    assert sorted(p for p in cache.rglob("dataset_info.json")) == built and len(built) == 1
    assert a.cache_files[0]["filename"] == b.cache_files[0]["filename"]


# --- (9) views: frontal variants, and an empty ViewPosition with a frontal ViewCodeSequence


def test_frontal_views_include_variants_and_the_code_meaning_fallback(synthetic_root, tmp_path):
    import csv
    import gzip

    with gzip.open(synthetic_root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        meta = list(csv.DictReader(f))
    variants = ("AP AXIAL", "PA LLD", "PA RLD", "AP LLD", "AP RLD")
    frontal = {m["dicom_id"] for m in meta if m["ViewPosition"] in ("PA", "AP", *variants)
               or not m["ViewPosition"] and m["ViewCodeSequence_CodeMeaning"] in ("postero-anterior", "antero-posterior")}
    assert any(not m["ViewPosition"] for m in meta) and any(m["ViewPosition"] in variants for m in meta)
    ds = _load("mimic", tmp_path, images="path", views="frontal")
    assert {d for s in ds.values() for d in s["dicom_id"]} == frontal


# --- (8) the authors' files through the builder


def test_authors_json_array_folder_through_the_builder(small, tmp_path):
    truth = load_truth(small)
    t = next(x for x in truth.values() if x.split == "train" and x.view != "LATERAL")
    prompt = "This is a patient's chest DR image <image>. Please help me determine the patient's disease."
    row = {"messages": [{"role": "system", "content": "You are a radiologist."}, {"role": "user", "content": prompt},
                        {"role": "assistant", "content": "<think> Big heart. </think>The disease of this patient is cardiomegaly."}],
           "images": [{"path": f"files/p{t.subject_id[:2]}/p{t.subject_id}/s{t.study_id}/{t.dicom_id}.jpg"}],
           "rejected_response": "<think> Clear. </think>The disease of this patient is no finding.",
           "model": "qwen-vl-max", "rejected_model": "gpt-5-nano"}
    folder = tmp_path / "authors"
    folder.mkdir()
    (folder / "APO.json").write_text(json.dumps([row]))
    kw = dict(data_dir=str(small / "mimic-cxr-jpg"), trajectories=str(folder), adapter="ms_swift", splits=("train",))
    sft = _load("sft", tmp_path / "a", split="train", include_refusals=True, **kw)
    assert sorted(sft["teacher"]) == ["gpt-5-nano", "qwen-vl-max"]
    msgs = next(r for r in sft if r["teacher"] == "qwen-vl-max")["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"][0]["text"] == "You are a radiologist."
    traj = _load("trajectories", tmp_path / "b", split="train", **kw)
    assert set(traj["subject_id"]) == {t.subject_id} and set(traj["dicom_id"]) == {t.dicom_id}


def test_synthetic_world_ships_radiologist_test_labels(small, tmp_path):
    ds = _load("mimic", tmp_path, split="test", data_dir=str(small / "mimic-cxr-jpg"), images="path", test_labels="radiologist")
    truth = load_truth(small)
    assert ds.num_rows and all(r["labels"] == truth[r["dicom_id"]].labels for r in ds)
    header = (small / "mimic-cxr-jpg" / "mimic-cxr-2.1.0-test-set-labeled.csv").read_text().splitlines()[0]
    assert header.startswith("study_id,") and "Airspace Opacity" in header and "subject_id" not in header

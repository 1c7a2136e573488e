"""The cxr_max datasets builder end to end: every config, registration, real-layout copies, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

import cxr_max
from cxr_max.builder import CONFIG_NAMES, CxrMax
from cxr_max.errors import DataError
from cxr_max.training import APOConfig
from cxr_max.training.apo_trainer import validate_apo_rows
from cxr_max.labels import CHEXPERT_LABELS
from cxr_max.synthetic import SIM_TEACHERS, load_truth


def _load(name, tmp_path, **kw):
    return cxr_max.load_dataset(name, cache_dir=str(tmp_path / "hf"), **kw)


@pytest.fixture(scope="module")
def real_layout(synthetic_root, tmp_path_factory) -> dict:
    """A copy of the synthetic data laid out as a researcher's disk: separate roots, no cache names."""
    base = tmp_path_factory.mktemp("physionet")
    jpg = base / "physionet.org/files/mimic-cxr-jpg/2.1.0"
    dcm = base / "physionet.org/files/mimic-cxr/2.1.0"
    shutil.copytree(synthetic_root / "mimic-cxr-jpg", jpg)
    shutil.copytree(synthetic_root / "mimic-cxr", dcm)
    traj = base / "cxr-max"
    shutil.copytree(synthetic_root / "trajectories", traj)
    return {"data_dir": str(jpg), "dicom_dir": str(dcm), "trajectories": str(traj), "truth": load_truth(synthetic_root)}


def test_every_config_loads_on_the_embedded_default(tmp_path):
    mimic = _load("mimic", tmp_path)
    assert set(mimic) == {"train", "validation", "test"}
    row = mimic["train"][0]
    assert row["image"].mode == "L" and row["image"].size[0] > 32
    assert set(row["labels"]) == set(CHEXPERT_LABELS)
    assert row["report"] and "IMPRESSION" in row["report"]
    traj = _load("trajectories", tmp_path)
    n_images = sum(d.num_rows for d in mimic.values())
    teachers = set(traj["train"]["teacher"])
    assert teachers == set(SIM_TEACHERS)
    # one trajectory per image x teacher (default: one task, one sample)
    assert sum(d.num_rows for d in traj.values()) == n_images * len(SIM_TEACHERS)
    studies = _load("studies", tmp_path)
    assert sum(d.num_rows for d in studies.values()) == n_images
    assert len(studies["test"][0]["trajectories"]) == len(SIM_TEACHERS)
    ms = _load("ms_cxr_t", tmp_path)
    assert list(ms) == ["test"] and ms["test"].num_rows > 0
    assert set(ms["test"]["pleural_effusion_progression"]) <= {"improving", "stable", "worsening", None}


def test_sft_rows_are_trl_conversational_vlm_rows(tmp_path):
    from trl.data_utils import is_conversational

    sft = _load("sft", tmp_path, split="train")
    row = sft[0]
    assert is_conversational(row)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert sum(part["type"] == "image" for part in row["messages"][0]["content"]) == len(row["images"]) == 1
    assert row["images"][0].mode == "RGB"
    assert not any("As an AI" in m["content"][0]["text"] for m in sft[:200]["messages"] for m in m[1:])
    with_refusals = _load("sft", tmp_path, split="train", include_refusals=True)
    assert with_refusals.num_rows > sft.num_rows


def test_registration_with_datasets_load_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty cwd: no data files to find, and none needed
    ds = datasets.load_dataset("cxr_max", "mimic", split="validation", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows > 0 and "labels" in ds.column_names


def test_registration_fails_clearly_when_datasets_changes(monkeypatch):
    import datasets.load

    from cxr_max.registration import register

    monkeypatch.delattr(datasets.load, "dataset_module_factory")
    with pytest.raises(RuntimeError, match="cxr_max.load_dataset"):
        register()


def test_readme_example_on_a_physionet_style_copy(real_layout, tmp_path):
    kw = {"data_dir": real_layout["data_dir"], "trajectories": real_layout["trajectories"]}
    ds = datasets.load_dataset("cxr_max", "trajectories", cache_dir=str(tmp_path / "hf"), **kw)
    assert ds["train"].num_rows > 0
    sft = cxr_max.load_dataset("sft", split="train", cache_dir=str(tmp_path / "hf2"), **kw)
    assert sft.num_rows > 0
    mimic = cxr_max.load_dataset("mimic", data_dir=real_layout["data_dir"], dicom_dir=real_layout["dicom_dir"],
                                 cache_dir=str(tmp_path / "hf3"), views="frontal")
    # frontal: PA, AP, their variants, and empty ViewPositions whose ViewCodeSequence says frontal
    assert set(mimic["train"]["view_position"]) <= {"PA", "AP", "AP AXIAL", "PA LLD", "PA RLD", "AP LLD", "AP RLD", None}
    # without the DICOM/report root the report columns are null, not an error
    no_reports = cxr_max.load_dataset("mimic", split="test", data_dir=real_layout["data_dir"], cache_dir=str(tmp_path / "hf4"))
    assert set(no_reports["report"]) == {None}


def test_options_filter_and_paths(real_layout, tmp_path):
    teacher = sorted(SIM_TEACHERS)[0]
    ds = cxr_max.load_dataset("trajectories", split="train", data_dir=real_layout["data_dir"],
                              trajectories=real_layout["trajectories"], teachers=[teacher], images="path",
                              splits=["train"], cache_dir=str(tmp_path / "hf"))
    assert set(ds["teacher"]) == {teacher}
    assert isinstance(ds[0]["image"], str) and os.path.isfile(ds[0]["image"])


def test_streaming_and_num_proc_give_the_same_rows(tmp_path):
    streamed = cxr_max.load_dataset("trajectories", split="validation", streaming=True, images="path")
    keys_s = sorted((r["dicom_id"], r["teacher"]) for r in streamed)
    built = cxr_max.load_dataset("trajectories", split="validation", images="path", num_proc=2, cache_dir=str(tmp_path / "hf"))
    assert keys_s == sorted(zip(built["dicom_id"], built["teacher"]))
    assert len(keys_s) == len(set(keys_s)) > 0


def test_apo_config_says_what_it_needs(tmp_path):
    with pytest.raises(ValueError, match="compare"):
        cxr_max.load_dataset("apo", preferences=str(tmp_path / "nope"), cache_dir=str(tmp_path / "hf"))


def test_apo_config_joins_preferences(synthetic_root, tmp_path):
    truth = load_truth(synthetic_root)
    train = [t for t in truth.values() if t.split == "train"][:3]
    prefs = tmp_path / "prefs"
    prefs.mkdir()
    with open(prefs / "part-0.jsonl", "w") as f:
        for t in train:
            f.write(json.dumps({
                "subject_id": t.subject_id, "study_id": t.study_id, "dicom_id": t.dicom_id,
                "prompt": "This is a patient's chest DR image <image>. Please help me determine the patient's disease.",
                "chosen": "<think> a </think>The disease of this patient is edema.",
                "rejected": ["<think> b </think>x", "<think> c </think>y"], "rejected_teachers": ["t1", "t2"],
                "rejected_weights": [1.0, 2.0], "rejected_agreement": [0.25, 0.75],
                "consensus_method": "vote", "consensus_confidence": 0.9}) + "\n")
    ds = cxr_max.load_dataset("apo", split="train", preferences=str(prefs), cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 3
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert len(row["rejected"]) == 2 and row["rejected_weights"] == [1.0, 2.0]
    assert row["images"][0].mode == "RGB"
    # the compare stage's agreement reaches the rows, so ranking="full" can order the negatives by it
    assert row["rejected_agreement"] == [0.25, 0.75]
    args = APOConfig(output_dir=str(tmp_path / "o"), ranking="full", full_ranking_by="rejected_agreement",
                     use_cpu=True, bf16=False, report_to=[])
    fixed = validate_apo_rows(ds.remove_columns("images").select(range(1)), args)[0]
    assert fixed["rejected_teachers"] == ["t2", "t1"] and fixed["rejected_weights"] == [2.0, 1.0]
    # a row whose agreement is unknown cannot be ranked: an error naming the row, not the given order
    unknown = ds.remove_columns("images").select(range(1)).map(lambda r: {"rejected_agreement": [None, None]})
    with pytest.raises(DataError, match="row 0.*rejected_agreement|rejected_agreement.*row 0"):
        validate_apo_rows(unknown, args)


# ---------------------------------------------------------------------------------------------
# Bad input: an error naming file and row, or a counted skip


def _one_teacher_file(real_layout) -> Path:
    return sorted(Path(real_layout["trajectories"]).rglob("*.jsonl"))[0]


def _bad_copy(real_layout, tmp_path, mutate) -> str:
    traj = tmp_path / "traj"
    shutil.copytree(real_layout["trajectories"], traj)
    mutate(sorted(traj.rglob("*.jsonl"))[0])
    return str(traj)


def _build(real_layout, traj, tmp_path, **kw):
    b = CxrMax(config_name="trajectories", data_dir=real_layout["data_dir"], trajectories=traj, images="path",
               cache_dir=str(tmp_path / "hf"), **kw)
    b.download_and_prepare()
    return b, b.as_dataset()


@pytest.mark.parametrize(
    "mutate, message, kind",
    [
        (lambda p: p.write_bytes(p.read_bytes() + b'{"dicom_id": "x", broken\n'), "malformed JSON", "malformed JSON"),
        (lambda p: p.write_bytes(p.read_bytes() + b'{"teacher": "\xff\xfe"}\n'), "not UTF-8", "not UTF-8"),
        (lambda p: p.write_text(p.read_text() + p.read_text().splitlines()[0] + "\n"), "duplicate record", "duplicate record"),
        (lambda p: p.write_text(p.read_text() + json.dumps({**json.loads(p.read_text().splitlines()[0]),
                                                            "dicom_id": "deadbeef-00000000-00000000-00000000-00000000"}) + "\n"),
         "not in the MIMIC-CXR metadata", "absent from the metadata"),
        (lambda p: p.write_text(p.read_text() + json.dumps({**json.loads(p.read_text().splitlines()[0]), "sample": 7,
                                                            "labels": {"Edema": "yes"}}) + "\n"), "label 'Edema'", "label"),
    ],
    ids=["malformed-json", "non-utf8", "duplicate", "unknown-id", "bad-label"],
)
def test_bad_trajectory_rows_raise_with_file_and_row_or_are_counted(real_layout, tmp_path, mutate, message, kind):
    traj = _bad_copy(real_layout, tmp_path, mutate)
    bad_file = sorted(Path(traj).rglob("*.jsonl"))[0]
    n_lines = len(bad_file.read_bytes().splitlines())
    with pytest.raises((DataError, datasets.exceptions.DatasetGenerationError)) as exc:
        _build(real_layout, traj, tmp_path / "a")
    err = exc.value if isinstance(exc.value, DataError) else exc.value.__cause__
    assert isinstance(err, DataError) and message in str(err)
    assert str(bad_file) in str(err) and f"row {n_lines}" in str(err)
    builder, ds = _build(real_layout, traj, tmp_path / "b", on_error="skip")
    assert sum(n for reason, n in builder.skips.counts.items() if kind in reason) == 1
    clean = _build(real_layout, real_layout["trajectories"], tmp_path / "c")[1]
    assert sum(d.num_rows for d in ds.values()) == sum(d.num_rows for d in clean.values())


def test_missing_and_corrupt_images(real_layout, tmp_path):
    jpg = tmp_path / "jpg"
    shutil.copytree(real_layout["data_dir"], jpg)
    files = sorted(jpg.rglob("*.jpg"))
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:40])  # truncated JPEG
    with pytest.raises((DataError, datasets.exceptions.DatasetGenerationError)) as exc:
        cxr_max.load_dataset("mimic", data_dir=str(jpg), cache_dir=str(tmp_path / "hf"))
    assert str(files[0]) in str(exc.value) or str(files[1]) in str(exc.value)
    b = CxrMax(config_name="mimic", data_dir=str(jpg), on_error="skip", cache_dir=str(tmp_path / "hf2"))
    b.download_and_prepare()
    assert b.skips.counts["missing image file"] == 1 and b.skips.counts["truncated JPEG"] == 1
    total = sum(d.num_rows for d in b.as_dataset().values())
    assert total == len(files) - 2


def test_ms_swift_rows_through_the_adapter(real_layout, tmp_path):
    truth = real_layout["truth"]
    t = next(iter(truth.values()))
    rel = f"files/p{t.subject_id[:2]}/p{t.subject_id}/s{t.study_id}/{t.dicom_id}.jpg"
    prompt = "This is a patient's chest DR image <image>. Please help me determine the patient's disease."
    row = {"messages": [{"role": "user", "content": prompt},
                        {"role": "assistant", "content": "<think> The heart is enlarged. </think>The disease of this patient is cardiomegaly."}],
           "images": [rel],
           "rejected_messages": [{"role": "user", "content": prompt},
                                 {"role": "assistant", "content": "As an AI, I cannot provide medical diagnoses."}],
           "rejected_images": [rel]}
    row2 = dict(row, rejected_messages=[row["rejected_messages"][0], {"role": "assistant", "content": "<think>x</think>Edema."}])
    src = tmp_path / "swift.jsonl"
    src.write_text(json.dumps(row) + "\n" + json.dumps(row2) + "\n")
    ds = cxr_max.load_dataset("trajectories", data_dir=real_layout["data_dir"], trajectories=str(src), adapter="ms_swift",
                              images="path", split=t.split.replace("validate", "validation"), cache_dir=str(tmp_path / "hf"))
    rows = sorted(ds, key=lambda r: (r["teacher"], r["sample"]))
    assert [(r["teacher"], r["sample"]) for r in rows] == [("ms-swift-chosen", 0), ("ms-swift-rejected", 0), ("ms-swift-rejected", 1)]
    assert rows[0]["reasoning"] == "The heart is enlarged." and rows[0]["answer"].startswith("The disease")
    assert rows[1]["refusal"] is True and rows[2]["refusal"] is False


def test_column_mapping_for_other_layouts(real_layout, tmp_path):
    t = next(iter(real_layout["truth"].values()))
    src = tmp_path / "other.jsonl"
    src.write_text(json.dumps({"image_id": t.dicom_id, "model": "my-teacher", "output": "<think>r</think>Edema."}) + "\n")
    ds = cxr_max.load_dataset("trajectories", data_dir=real_layout["data_dir"], trajectories=str(src),
                              mapping={"image_id": "dicom_id", "model": "teacher", "output": "raw"}, images="path",
                              split=t.split.replace("validate", "validation"), cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 1
    r = ds[0]
    assert (r["subject_id"], r["study_id"], r["reasoning"], r["answer"]) == (t.subject_id, t.study_id, "r", "Edema.")


def test_unknown_config_and_options_are_clear():
    with pytest.raises(ValueError, match="images must be"):
        CxrMax(config_name="mimic", images="pixels")
    with pytest.raises(ValueError, match="unknown split"):
        CxrMax(config_name="mimic", splits=["dev"])
    assert set(CONFIG_NAMES) == {"mimic", "trajectories", "studies", "sft", "apo", "ms_cxr_t"}


def test_import_registers_in_a_fresh_interpreter(tmp_path):
    code = "import cxr_max, datasets.load as l; print(l.dataset_module_factory('cxr_max').module_path)"
    env = {**os.environ, "PYTHONPATH": str(Path(cxr_max.__file__).resolve().parents[1])}  # this checkout's cxr_max
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env=env)
    assert out.stdout.strip() == "cxr_max.builder"

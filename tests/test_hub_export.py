"""Export to parquet + card: safety filter, shards, manifest, and loading with plain `datasets` (no cxr_max)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cxr_max.errors import DataError
from cxr_max.hub import export_dataset, num_shards, read_manifest
from cxr_max.hub.safety import image_signature, report_sentences, scan_table, split_sentences
from cxr_max.labels import CHEXPERT_LABELS

REPORT_SENTENCE = "There is a moderate left pleural effusion with adjacent basilar atelectasis."
REPORT = (
    "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n FINDINGS: " + REPORT_SENTENCE +
    " The cardiomediastinal silhouette is within normal limits.\n\n IMPRESSION: Left pleural effusion."
)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (16, 16), 77).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def make_configs(n: int = 24, raw_override: dict[int, str] | None = None) -> dict[str, datasets.DatasetDict]:
    """Builder-shaped toy configs: a trajectories config (with the report text joined in) and a mimic config."""
    raw = [f"<think>Blunting of the left costophrenic angle, case {i}.</think>Pleural effusion." for i in range(n)]
    for i, text in (raw_override or {}).items():
        raw[i] = text
    labels = {name: None for name in CHEXPERT_LABELS}
    traj = datasets.Dataset.from_dict(
        {
            "subject_id": [f"1{i:07d}" for i in range(n)],
            "study_id": [f"5{i:07d}" for i in range(n)],
            "dicom_id": [f"dcm-{i // 2}" for i in range(n)],
            "teacher": ["gpt-5-nano" if i % 2 else "glm-4.5v" for i in range(n)],
            "teacher_version": ["2025-08" if i % 2 else "2025-07" for i in range(n)],
            "prompt": ["Explain the basis for the diagnosis of pleural effusion. <image>"] * n,
            "raw": raw,
            "refusal": [i % 4 == 1 for i in range(n)],  # gpt: rows 1,5,9,... -> every other gpt row refuses
            "status": ["ok"] * n,
            "labels": [labels | {"Pleural Effusion": 1.0}] * n,
            "report": [REPORT] * n,
        },
        features=datasets.Features(
            {
                **{k: datasets.Value("string") for k in ("subject_id", "study_id", "dicom_id", "teacher",
                                                          "teacher_version", "prompt", "raw")},
                "refusal": datasets.Value("bool"),
                "status": datasets.Value("string"),
                "labels": {name: datasets.Value("float32") for name in CHEXPERT_LABELS},
                "report": datasets.Value("string"),
            }
        ),
    )
    m = n // 2
    mimic = datasets.Dataset.from_dict(
        {
            "subject_id": [f"1{i:07d}" for i in range(m)],
            "dicom_id": [f"dcm-{i}" for i in range(m)],
            "image": [{"bytes": JPEG, "path": None}] * m,
            "findings": [REPORT_SENTENCE] * m,
            "view_position": ["PA"] * m,
        }
    ).cast_column("image", datasets.Image())
    return {
        "trajectories": datasets.DatasetDict({"train": traj.select(range(n - 4)), "test": traj.select(range(n - 4, n))}),
        "mimic": datasets.DatasetDict({"train": mimic}),
    }


def _all_values(folder) -> tuple[list[str], list[bytes], set[str]]:
    """Every string and bytes value of every shard of an export (nested ones too), and every column name."""
    strings, blobs, columns = [], [], set()

    def walk(v):
        if isinstance(v, str):
            strings.append(v)
        elif isinstance(v, bytes):
            blobs.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for shard in sorted(folder.rglob("*.parquet")):
        table = pq.read_table(shard)
        columns.update(table.column_names)
        for row in table.to_pylist():
            walk(row)
    return strings, blobs, columns


@pytest.mark.parametrize(
    "rows, shard_rows, expected",
    [(0, 100, 1), (10, 100, 1), (101, 100, 8), (1000, 100, 16), (5, 2, 3), (20_001, 20_000, 8)],
)
def test_num_shards(rows, shard_rows, expected):
    assert num_shards(rows, shard_rows) == expected


def test_default_mimic_export_has_no_pixels_and_no_report_text(tmp_path):
    result = export_dataset(make_configs(), tmp_path / "exp", source="mimic", shard_rows=3, progress=False)
    strings, blobs, columns = _all_values(tmp_path / "exp")
    # no pixel or report column, no image bytes anywhere, no report sentence anywhere (shards, card, manifest)
    assert not columns & {"image", "report", "findings"}
    assert {"subject_id", "study_id", "dicom_id", "raw", "labels", "teacher"} <= columns
    assert not any(image_signature(b) for b in blobs)
    for path in (tmp_path / "exp").rglob("*"):
        if path.is_file():
            assert JPEG[:64] not in path.read_bytes()
    text = strings + [(tmp_path / "exp" / "README.md").read_text(), (tmp_path / "exp" / "cxr_max_export.json").read_text()]
    for report_sentence in split_sentences(REPORT):
        assert not any(report_sentence in " ".join(s.lower().split()) for s in text), report_sentence
    m = result.manifest
    assert m["dropped_columns"] == {"trajectories": ["report"], "mimic": ["image", "findings"]}
    assert not m["sensitive"] and m["include_pixels"] is False and m["include_reports"] is False
    assert "no image pixels and no MIMIC-CXR report text" in result.card.content


def test_pixel_check_detects_what_the_default_export_removes(tmp_path):
    """The same checks find JPEG bytes and report text when the flags put them in (so the test above can fail)."""
    export_dataset(make_configs(), tmp_path / "exp", source="mimic", include_pixels=True, include_reports=True,
                   progress=False)
    strings, blobs, columns = _all_values(tmp_path / "exp")
    assert {"image", "report", "findings"} <= columns
    assert any(image_signature(b) == "JPEG" for b in blobs)
    assert any(REPORT_SENTENCE in s for s in strings)
    manifest = read_manifest(tmp_path / "exp")
    assert manifest["sensitive"] is True
    readme = (tmp_path / "exp" / "README.md").read_text()
    assert "license: other" in readme and "physionet" in readme.lower()
    assert "This export contains credentialed MIMIC-CXR data" in readme


def test_trajectory_quoting_a_report_sentence_is_caught(tmp_path):
    configs = make_configs(raw_override={3: f"<think>{REPORT_SENTENCE}</think>Effusion."})
    with pytest.raises(DataError) as e:
        export_dataset(configs, tmp_path / "exp", source="mimic", progress=False)
    msg = str(e.value)
    assert "trajectories/train" in msg and "row 3" in msg and "'raw'" in msg and "MIMIC report" in msg
    assert not (tmp_path / "exp").exists()  # nothing half-written
    assert not list(tmp_path.iterdir())
    result = export_dataset(configs, tmp_path / "exp", source="mimic", on_error="skip", progress=False)
    assert result.skips.total == 1
    assert result.manifest["configs"]["trajectories"]["train"]["num_rows"] == 19
    strings, _, _ = _all_values(tmp_path / "exp")
    assert not any(REPORT_SENTENCE in s for s in strings)


def test_explicit_reports_are_protected_too(tmp_path):
    configs = {"trajectories": datasets.Dataset.from_dict(
        {"dicom_id": ["a", "b"], "raw": ["Fine. The heart size is normal and the lungs are clear bilaterally.", "ok"]})}
    with pytest.raises(DataError, match="row 0"):
        export_dataset(configs, tmp_path / "e", source="mimic", progress=False,
                       reports=["The heart size is normal and the lungs are clear bilaterally.\nNo effusion."])
    export_dataset(configs, tmp_path / "e", source="mimic", progress=False)  # no reports known -> fine


def test_base64_image_in_a_text_column_is_caught(tmp_path):
    b64 = base64.b64encode(JPEG).decode()
    configs = {"trajectories": datasets.Dataset.from_dict({"dicom_id": ["a", "b"], "thumbnail": ["", b64]})}
    with pytest.raises(DataError, match=r"trajectories/train, row 1.*'thumbnail'.*base64"):
        export_dataset(configs, tmp_path / "e", source="mimic", progress=False)


def test_scan_table_finds_image_bytes_in_nested_binary():
    dicom = b"\0" * 128 + b"DICM" + b"\1" * 10
    table = pa.table({"x": pa.array([[b"abc"], [b"zz", JPEG], [dicom]], pa.list_(pa.binary()))})
    found = scan_table(table, check_pixels=True, sentences=frozenset(), row_offset=10)
    assert [(v.row, v.reason) for v in found] == [(11, "JPEG image bytes"), (12, "DICOM image bytes")]
    assert scan_table(table, check_pixels=False, sentences=frozenset()) == []


def test_asking_for_pixels_without_the_flag_is_an_error(tmp_path):
    with pytest.raises(DataError, match="include_pixels=True"):
        export_dataset(make_configs(), tmp_path / "e", source="mimic", keep_columns=["image"], progress=False)
    with pytest.raises(DataError, match="include_reports=True"):
        export_dataset(make_configs(), tmp_path / "e", source="mimic", keep_columns=["report"], progress=False)


def test_synthetic_export_is_complete(tmp_path):
    result = export_dataset(make_configs(), tmp_path / "e", source="synthetic", progress=False)
    assert result.manifest["dropped_columns"] == {} and not result.manifest["sensitive"]
    _, blobs, columns = _all_values(tmp_path / "e")
    assert {"image", "report", "findings"} <= columns and any(image_signature(b) for b in blobs)
    assert "synthetic" in (tmp_path / "e" / "README.md").read_text()


def test_shards_are_equal_and_card_maps_configs(tmp_path):
    configs = {"trajectories": datasets.Dataset.from_dict({"dicom_id": [str(i) for i in range(203)],
                                                           "answer": ["x"] * 203})}
    result = export_dataset(configs, tmp_path / "e", source="mimic", shard_rows=20, progress=False)
    files = result.manifest["configs"]["trajectories"]["train"]["files"]
    assert len(files) == 16
    sizes = [pq.read_metadata(tmp_path / "e" / f).num_rows for f in files]
    assert sum(sizes) == 203 and max(sizes) - min(sizes) <= 1
    meta = result.card.data.to_dict()
    assert meta["configs"] == [{"config_name": "trajectories",
                                "data_files": [{"split": "train", "path": "data/trajectories/train-*.parquet"}]}]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 203
    assert meta["license"] == "cc-by-nc-sa-4.0"


def test_teachers_table_in_card(tmp_path):
    result = export_dataset(make_configs(), tmp_path / "e", source="mimic", progress=False)
    content = result.card.content
    # 24 trajectories, 12 per teacher, 12 images each; gpt (odd rows) refuses on rows 1,5,9,13,17,21 -> 50.0%
    assert "| gpt-5-nano | 2025-08 | 12 | 12 | 50.0% | 0 |" in content
    assert "| glm-4.5v | 2025-07 | 12 | 12 | 0.0% | 0 |" in content


def test_output_folder_rules(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a cxr_max export"):
        export_dataset(make_configs(), tmp_path / "other", source="mimic", progress=False)
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"
    export_dataset(make_configs(), tmp_path / "e", source="mimic", progress=False)
    with pytest.raises(DataError, match="overwrite"):
        export_dataset(make_configs(), tmp_path / "e", source="mimic", progress=False)
    export_dataset(make_configs(8), tmp_path / "e", source="mimic", progress=False, overwrite=True)
    assert read_manifest(tmp_path / "e")["configs"]["trajectories"]["train"]["num_rows"] == 4


def test_read_manifest_rejects_non_exports(tmp_path):
    with pytest.raises(DataError, match="not a cxr_max export"):
        read_manifest(tmp_path)
    export_dataset(make_configs(), tmp_path / "e", source="mimic", progress=False)
    manifest = json.loads((tmp_path / "e" / "cxr_max_export.json").read_text())
    shard = tmp_path / "e" / manifest["configs"]["mimic"]["train"]["files"][0]
    pq.write_table(pa.table({"dicom_id": ["x"], "report": [REPORT]}), shard)  # a hand-mixed folder
    with pytest.raises(DataError, match="report column 'report'"):
        read_manifest(tmp_path / "e")
    shard.unlink()
    with pytest.raises(DataError, match="missing"):
        read_manifest(tmp_path / "e")


def test_plain_datasets_loads_the_export_without_cxr_max(tmp_path):
    """A separate interpreter, isolated (-I), run outside the repo, with cxr_max blocked from importing."""
    export_dataset(make_configs(), tmp_path / "exp", source="mimic", shard_rows=3, progress=False)
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "cxr_max" or name.startswith("cxr_max."):
                    raise ImportError("cxr_max is blocked in this test")

        sys.meta_path.insert(0, Block())
        import datasets

        folder = sys.argv[1]
        ds = datasets.load_dataset(folder, "trajectories")
        it = datasets.load_dataset(folder, "trajectories", split="train", streaming=True)
        streamed = [row["dicom_id"] for row in it]
        mimic = datasets.load_dataset(folder, "mimic", split="train")
        print(json.dumps({
            "splits": {k: len(v) for k, v in ds.items()},
            "columns": ds["train"].column_names,
            "first": ds["train"][0]["raw"],
            "label": ds["train"][0]["labels"]["Pleural Effusion"],
            "streamed": len(streamed),
            "n_shards": it.num_shards,
            "mimic_columns": mimic.column_names,
            "cxr_max_loaded": any(m.startswith("cxr_max") for m in sys.modules),
        }))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path / "exp")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["splits"] == {"train": 20, "test": 4}
    assert out["streamed"] == 20 and out["n_shards"] == 8
    assert out["first"].startswith("<think>Blunting") and out["label"] == 1.0
    assert "report" not in out["columns"] and out["mimic_columns"] == ["subject_id", "dicom_id", "view_position"]
    assert out["cxr_max_loaded"] is False


def test_embedding_pixels_writes_to_disk_not_memory(tmp_path):
    """With --include-pixels a real copy is ~0.5 TB: the embedded table goes to a cache file, in small batches."""
    from cxr_max.hub.export import _embed

    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(JPEG)
        paths.append(str(p))
    ds = datasets.Dataset.from_dict({"image": paths}, features=datasets.Features({"image": datasets.Image()}))
    ds.save_to_disk(tmp_path / "ds")
    on_disk = datasets.load_from_disk(str(tmp_path / "ds"))
    out = _embed(on_disk)
    assert out.cache_files and all(str(tmp_path / "ds") in f["filename"] for f in out.cache_files)
    assert out.data.to_pylist()[0]["image"]["bytes"] == JPEG


def test_export_of_a_copy_without_reports_warns_and_dicom_dir_fills_them(tmp_path, caplog):
    import logging

    from fixtures_mimic import make_mimic_tree

    from cxr_max.cli.hub import run_export

    tree = make_mimic_tree(tmp_path / "copy", reports="zip")
    with caplog.at_level(logging.WARNING, logger="cxr_max"):
        res = run_export(["mimic"], tmp_path / "a", data_dir=tree.jpg_root, include_reports=True, overwrite=True)
    assert any("no reports found" in r.message and "--dicom-dir" in r.message for r in caplog.records)
    assert res.manifest["include_reports"] is True
    table = pq.read_table(next((tmp_path / "a" / "data" / "mimic").glob("train-*.parquet")))
    assert set(table["report"].to_pylist()) == {None}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxr_max"):
        run_export(["mimic"], tmp_path / "b", data_dir=tree.jpg_root, dicom_dir=tree.dicom_root, include_reports=True)
    assert not any("no reports found" in r.message for r in caplog.records)
    table = pq.read_table(next((tmp_path / "b" / "data" / "mimic").glob("train-*.parquet")))
    assert all(r and "IMPRESSION" in r for r in table["report"].to_pylist())

"""cxr_max.mimic.root.MimicRoot: the joined image and study tables, reports, and validation."""

import gzip

import pytest

from cxr_max.errors import DataError, SkipLog
from cxr_max.mimic import IMAGES_SCHEMA, STUDIES_SCHEMA, MimicRoot, read_dicom, read_jpg
from cxr_max.trajectories.schema import LABELS_TYPE

try:
    from fixtures_mimic import IMAGE_IDS, IMAGES, make_mimic_tree
except ImportError:  # tests/ imported as a package
    from tests.fixtures_mimic import IMAGE_IDS, IMAGES, make_mimic_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_mimic_tree(tmp_path_factory.mktemp("mimic"), dicom=True, reports="tree")


def test_images_one_row_per_image_in_metadata_order(tree):
    table = MimicRoot(tree.jpg_root, tree.dicom_root).images()
    assert table.schema == IMAGES_SCHEMA and table.schema.field("labels").type == LABELS_TYPE
    rows = table.to_pylist()
    assert [r["dicom_id"] for r in rows] == IMAGE_IDS
    assert [r["split"] for r in rows] == [img[5] for img in IMAGES]
    first = rows[1]
    assert first["subject_id"] == "10000032" and first["study_id"] == "50414267"
    assert first["view_position"] == "PA" and rows[3]["view_position"] is None
    assert first["rows"] == 24 and first["columns"] == 20 and first["study_time"] == "213014.531"
    assert first["image_path"] == str(tree.jpg_root / f"files/p10/p10000032/s50414267/{IMAGE_IDS[1]}.jpg")
    assert first["dicom_path"] == str(tree.dicom_root / f"files/p10/p10000032/s50414267/{IMAGE_IDS[1]}.dcm")
    assert first["report_path"] == str(tree.dicom_root / "files/p10/p10000032/s50414267.txt")
    assert first["labels"]["Atelectasis"] == 1.0 and first["labels"]["Cardiomegaly"] == -1.0
    assert first["labels"]["Pleural Effusion"] == 0.0 and first["labels"]["No Finding"] is None
    assert rows[6]["labels"] is None  # the study has no label row: null as a whole
    # the paths lead to readable files
    assert read_jpg(first["image_path"]).size == (20, 24)
    assert read_dicom(first["dicom_path"]).size == (20, 24)


def test_negbio_labels_and_no_dicom_root(tree):
    table = MimicRoot(tree.jpg_root, labels="negbio").images()
    row = table.to_pylist()[1]
    assert row["labels"]["Atelectasis"] == 0.0 and row["labels"]["Cardiomegaly"] is None
    assert table["dicom_path"].null_count == table.num_rows
    assert table["report_path"].null_count == table.num_rows  # no reports next to the JPGs
    with pytest.raises(ValueError, match="labels must be one of"):
        MimicRoot(tree.jpg_root, labels="chexbert")


def test_images_without_split_or_label_rows_keep_nulls(tmp_path):
    t = make_mimic_tree(tmp_path, dicom=False, reports=None)
    split = t.jpg_root / "mimic-cxr-2.0.0-split.csv.gz"
    lines = gzip.decompress(split.read_bytes()).decode().splitlines()
    split.write_bytes(gzip.compress(("\n".join(lines[:-2]) + "\n").encode()))  # drop the last two images
    rows = MimicRoot(t.jpg_root).images().to_pylist()
    assert [r["split"] for r in rows[-3:]] == ["validate", None, None]


def test_studies_ordered_per_patient(tree):
    studies = MimicRoot(tree.jpg_root, tree.dicom_root).studies()
    assert studies.schema == STUDIES_SCHEMA
    rows = studies.to_pylist()
    assert [(r["study_id"], r["study_index"], r["previous_study_id"]) for r in rows] == [
        ("56699142", 0, None), ("50414267", 1, "56699142"), ("53189527", 2, "50414267"),
        ("57375967", 0, None), ("59999999", 0, None),
    ]
    s = rows[1]
    assert s["n_images"] == 2 and s["dicom_ids"] == IMAGE_IDS[1:3] and s["view_positions"] == ["PA", "LATERAL"]
    assert s["split"] == "train" and s["labels"]["Atelectasis"] == 1.0
    assert rows[4]["labels"] is None and rows[3]["labels"]["Support Devices"] == 1.0


@pytest.mark.parametrize("reports", ["tree", "zip", "zip-prefixed"])
def test_report_text_and_sections(tmp_path, reports):
    t = make_mimic_tree(tmp_path, dicom=True, reports=reports)
    with MimicRoot(t.jpg_root, t.dicom_root) as root:
        text = root.report_text("50414267")
        assert "FINAL REPORT" in text
        assert root.report({"study_id": "57375967", "subject_id": "10000764"})["IMPRESSION"] == "Small right pleural effusion."
        assert root.report("50414267")["FINDINGS"].startswith("There is a small left pleural effusion.")
        paths = root.images()["report_path"]
        assert (paths.null_count == 0) == (reports == "tree")
        with pytest.raises(DataError, match="not in the metadata"):
            root.report_text("50000000")


def test_missing_report_raises_or_counts(tmp_path):
    t = make_mimic_tree(tmp_path, dicom=True, reports="tree")
    (t.dicom_root / "files/p10/p10000032/s50414267.txt").unlink()
    with pytest.raises(DataError, match="no report for study 50414267"):
        MimicRoot(t.jpg_root, t.dicom_root).report_text("50414267")
    skips = SkipLog()
    root = MimicRoot(t.jpg_root, t.dicom_root, on_error="skip", skips=skips)
    assert root.report("50414267") is None and skips.total == 1
    with pytest.raises(DataError, match="no reports"):
        MimicRoot(t.jpg_root).report_text("50414267")


def test_bad_table_rows_follow_the_root_policy(tmp_path):
    t = make_mimic_tree(tmp_path, dicom=False, reports=None)
    path = t.jpg_root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    text = gzip.decompress(path.read_bytes()).decode().replace("-1.0", "maybe", 1)
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataError, match="not a number") as info:
        MimicRoot(t.jpg_root).images()
    assert info.value.path == path and info.value.row == 2
    root = MimicRoot(t.jpg_root, on_error="skip")
    rows = root.images().to_pylist()
    assert rows[1]["labels"] is None  # its study's label row was skipped, and counted:
    assert root.skips.total == 1


def test_validate_clean_copy(tree):
    report = MimicRoot(tree.jpg_root, tree.dicom_root).validate(progress=False)
    assert report.ok, report.summary()
    assert report.counts["images"] == 7 and report.counts["studies"] == 5 and report.counts["subjects"] == 3
    assert report.issue("study-without-labels").count == 1
    assert report.issue("missing-image-files") is None and report.missing_tables == []
    assert "result: OK" in report.summary()


def test_validate_broken_copy(tmp_path):
    t = make_mimic_tree(tmp_path, dicom=True, reports="tree")
    missing_jpg = t.jpg_root / f"files/p10/p10000032/s50414267/{IMAGE_IDS[1]}.jpg"
    missing_jpg.unlink()
    (t.dicom_root / f"files/p10/p10000764/s57375967/{IMAGE_IDS[4]}.dcm").unlink()
    (t.dicom_root / "files/p11/p11000001/s59999999.txt").unlink()
    split = t.jpg_root / "mimic-cxr-2.0.0-split.csv.gz"
    lines = gzip.decompress(split.read_bytes()).decode().splitlines()
    lines.append(f"{IMAGE_IDS[0]},53189527,10000032,test")  # duplicated dicom_id
    lines.append("ffffffff-ffffffff-ffffffff-ffffffff-ffffffff,50000001,10000032,train")  # no metadata
    lines.append(lines[5].replace("validate", "train").replace(IMAGE_IDS[4], IMAGE_IDS[4][:-1] + "0"))  # stray
    lines[6] = lines[6].replace("validate", "test")  # patient 10000764 in two splits
    split.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (t.jpg_root / "mimic-cxr-2.0.0-negbio.csv.gz").unlink()

    report = MimicRoot(t.jpg_root, t.dicom_root).validate(progress=False)
    assert not report.ok
    missing = report.issue("missing-image-files")
    assert missing.count == 1 and missing.examples == [str(missing_jpg)]
    assert report.issue("missing-dicom-files").count == 1
    assert report.issue("missing-reports").count == 1
    assert report.issue("bad-rows-split").count == 1 and "duplicated dicom_id" in report.issue("bad-rows-split").message
    assert report.issue("split-without-metadata").count == 2
    assert report.issue("patient-in-several-splits").examples == ["10000764"]
    summary = report.summary()
    assert "ERRORS FOUND" in summary and "missing-image-files" in summary
    # rich can render it
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report)
    assert "missing-image-files" in console.export_text()
    # negbio is not needed with labels="chexpert", but it is with labels="negbio"
    assert "missing-table-negbio" not in summary
    negbio = MimicRoot(t.jpg_root, t.dicom_root, labels="negbio").validate(check_files=False, progress=False)
    assert negbio.missing_tables == ["negbio"] and not negbio.ok


def test_validate_missing_columns_and_tables(tmp_path):
    t = make_mimic_tree(tmp_path, dicom=False, reports=None)
    meta = t.jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz"
    lines = gzip.decompress(meta.read_bytes()).decode().splitlines()
    header = lines[0].split(",")
    keep = [i for i, c in enumerate(header) if c not in ("StudyDate", "Rows")]
    lines = [",".join(line.split(",")[i] for i in keep) for line in lines]
    meta.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (t.jpg_root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    report = MimicRoot(t.jpg_root).validate(progress=False)
    assert report.missing_columns == {"metadata": ["Rows", "StudyDate"]}
    assert report.missing_tables == ["split"]
    assert report.issue("files-not-checked") is not None and not report.ok
    with pytest.raises(DataError, match=r"missing column\(s\) \['Rows', 'StudyDate'\]"):
        MimicRoot(t.jpg_root).images()


def test_root_must_exist(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        MimicRoot(tmp_path / "nope")


def test_benchmark_join_matches_per_row_baseline():
    from cxr_max.mimic.bench import run

    result = run(3000)
    assert result["rows_identical"] is True
    assert set(result["seconds"]) >= {"join: pyarrow images()", "join: per-row Python"}

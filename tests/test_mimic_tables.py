"""cxr_max.mimic.tables: typed pyarrow readers for the MIMIC-CXR CSV tables and their bad inputs."""

import datetime as dt

import pyarrow as pa
import pytest

from cxr_max.errors import DataError, SkipLog
from cxr_max.labels import CHEXPERT_LABELS
from cxr_max.mimic import find_table, order_studies, read_labels, read_metadata, read_record_list, read_split, read_study_list, read_table

try:
    from fixtures_mimic import IMAGE_IDS, IMAGES, META_COLUMNS, make_mimic_tree, write_csv
except ImportError:  # tests/ imported as a package
    from tests.fixtures_mimic import IMAGE_IDS, IMAGES, META_COLUMNS, make_mimic_tree, write_csv

LABEL_HEADER = ["subject_id", "study_id", *CHEXPERT_LABELS]


def _labels_row(subject, study, **values):
    return [subject, study, *(values.get(n.replace(" ", "_"), "") for n in CHEXPERT_LABELS)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_mimic_tree(tmp_path_factory.mktemp("mimic"), dicom=True, reports=None)


def test_metadata_types_and_values(tree):
    meta = read_metadata(tree.jpg_root)  # a folder finds the .csv.gz
    assert meta.num_rows == len(IMAGES)
    assert meta.schema.field("subject_id").type == pa.string()
    assert meta.schema.field("Rows").type == pa.int32()
    assert meta.schema.field("study_datetime").type == pa.timestamp("us")
    rows = meta.to_pylist()
    assert [r["dicom_id"] for r in rows] == IMAGE_IDS
    assert rows[0]["subject_id"] == "10000032" and rows[0]["Rows"] == 24
    assert rows[3]["ViewPosition"] is None  # empty -> null, not ""
    assert rows[1]["ViewPosition"] == "PA"
    # leading zeros dropped in StudyTime: 84725.234 is 08:47:25.234
    assert rows[3]["study_datetime"] == dt.datetime(2180, 5, 6, 8, 47, 25, 234000)
    assert rows[1]["study_datetime"] == dt.datetime(2180, 5, 6, 21, 30, 14, 531000)
    assert rows[6]["StudyTime"] is None and rows[6]["study_datetime"] == dt.datetime(2150, 1, 1)
    assert rows[0]["StudyTime"] == "165500.312"  # kept as printed


def test_labels_keep_positive_negative_uncertain_and_unmentioned(tree):
    labels = read_labels(tree.jpg_root, "chexpert")
    assert all(labels.schema.field(n).type == pa.float32() for n in CHEXPERT_LABELS)
    by_study = {r["study_id"]: r for r in labels.to_pylist()}
    row = by_study["50414267"]
    assert (row["Atelectasis"], row["Cardiomegaly"], row["Pleural Effusion"], row["No Finding"]) == (1.0, -1.0, 0.0, None)
    negbio = {r["study_id"]: r for r in read_labels(tree.jpg_root, "negbio").to_pylist()}
    assert negbio["50414267"]["Atelectasis"] == 0.0
    with pytest.raises(ValueError, match="labels must be one of"):
        read_labels(tree.jpg_root, "chexbert")


def test_split_and_record_lists(tree):
    split = read_split(tree.jpg_root)
    assert split.column_names == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["split"].to_pylist()) == {"train", "validate", "test"}
    records = read_record_list(tree.dicom_root)
    assert records["path"][0].as_py().endswith(".dcm")
    studies = read_study_list(tree.dicom_root)
    assert studies.num_rows == 5 and studies["path"][0].as_py().endswith(".txt")


def test_find_table_prefers_gz_and_falls_back_to_csv(tmp_path):
    with pytest.raises(DataError, match="missing table 'split'") as info:
        find_table(tmp_path, "split")
    assert str(tmp_path) in str(info.value)
    assert find_table(tmp_path, "split", required=False) is None
    rows = [["d1", "50000001", "10000001", "train"]]
    plain = write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], rows, gz=False)
    assert find_table(tmp_path, "split") == plain
    assert read_split(tmp_path).num_rows == 1
    gz = write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], rows * 0)
    assert find_table(tmp_path, "split") == gz
    assert read_table(gz).num_rows == 0  # the table name is taken from the file name
    with pytest.raises(ValueError, match="unknown table"):
        find_table(tmp_path, "labels")


def test_missing_columns_name_file_and_columns(tmp_path):
    path = write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "Rows"], [["a", "10000001", "5"]])
    with pytest.raises(DataError) as info:
        read_metadata(path)
    msg = str(info.value)
    assert str(path) in msg and "'study_id'" in msg and "'StudyDate'" in msg and "'ViewPosition'" in msg
    # not skippable: a missing column is a broken file, not a bad row
    with pytest.raises(DataError, match="missing column"):
        read_metadata(path, on_error="skip", skips=SkipLog())


def _bad_labels(tmp_path):
    rows = [
        _labels_row("10000001", "50000001", Edema="1.0"),
        _labels_row("10000001", "50000002", Edema="yes"),  # line 3: not a number
        _labels_row("10000002", "50000003", Pneumothorax="2.0"),  # line 4: a number, but not a label value
        _labels_row("10000002", "50000004", Pneumothorax="-1"),
    ]
    return write_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", LABEL_HEADER, rows)


def test_non_numeric_label_raises_naming_file_row_and_column(tmp_path):
    path = _bad_labels(tmp_path)
    with pytest.raises(DataError) as info:
        read_labels(path)
    err = info.value
    assert err.path == path and err.row == 3
    assert "'Edema'" in str(err) and "not a number" in str(err) and "'yes'" in str(err)


def test_bad_label_values_are_counted_skips(tmp_path):
    path = _bad_labels(tmp_path)
    skips = SkipLog()
    table = read_labels(path, on_error="skip", skips=skips)
    assert table["study_id"].to_pylist() == ["50000001", "50000004"]
    assert table["Pneumothorax"].to_pylist() == [None, -1.0]
    assert skips.total == 2
    assert any("not a number" in r for r in skips.counts) and any("1, 0, -1" in r for r in skips.counts)
    assert any(f"{path}:4" in e for ex in skips.examples.values() for e in ex)


def test_on_error_skip_needs_a_skiplog(tmp_path):
    with pytest.raises(ValueError, match="SkipLog"):
        read_labels(_bad_labels(tmp_path), on_error="skip")


def _meta_row(dicom, subject="10000001", study="50000001", rows="10", date="21800101", time="101010"):
    return [dicom, subject, study, "", "PA", rows, "10", date, time, "", "", ""]


def test_metadata_bad_rows_raise_and_skip(tmp_path):
    path = write_csv(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv",
        META_COLUMNS,
        [
            _meta_row("a"),
            _meta_row("b", rows="ten"),  # line 3
            _meta_row("c", date="21801345"),  # line 4: month 13
            _meta_row("d", time="256000"),  # line 5: hour 25
            _meta_row("a"),  # line 6: duplicated dicom_id
            _meta_row("../../x"),  # line 7: would climb out of the root
            _meta_row("", ),  # line 8: missing dicom_id
            _meta_row("e"),
        ],
    )
    with pytest.raises(DataError) as info:
        read_metadata(path)
    assert info.value.row == 8 and "missing dicom_id" in str(info.value)  # key checks run first
    skips = SkipLog()
    table = read_metadata(path, on_error="skip", skips=skips)
    assert table["dicom_id"].to_pylist() == ["a", "e"]
    assert skips.total == 6
    reasons = " | ".join(skips.counts)
    for fragment in ("'Rows'", "StudyDate", "StudyTime", "duplicated dicom_id", "path separator", "missing dicom_id"):
        assert fragment in reasons


def test_duplicate_raises_on_second_occurrence(tmp_path):
    path = write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
                     [["a", "50000001", "10000001", "train"], ["b", "50000001", "10000001", "train"], ["a", "50000001", "10000001", "test"]])
    with pytest.raises(DataError, match="duplicated dicom_id") as info:
        read_split(path)
    assert info.value.row == 4


def test_rows_with_wrong_cell_count(tmp_path):
    path = tmp_path / "mimic-cxr-2.0.0-split.csv"
    path.write_text("dicom_id,study_id,subject_id,split\na,50000001,10000001,train\nb,50000001\nc,50000002,10000001,test\n")
    with pytest.raises(DataError, match="cannot parse CSV") as info:
        read_split(path)
    assert str(path) in str(info.value)
    skips = SkipLog()
    assert read_split(path, on_error="skip", skips=skips)["dicom_id"].to_pylist() == ["a", "c"]
    assert skips.total == 1 and "expected 4" in next(iter(skips.counts))


def test_validate_ids_flags_non_physionet_ids(tmp_path):
    path = write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
                     [[IMAGE_IDS[0], "50000001", "10000001", "train"], ["not-an-id", "50000001", "10000001", "train"]])
    assert read_split(path).num_rows == 2  # opt-in
    with pytest.raises(DataError, match="dicom_id is not in the PhysioNet format") as info:
        read_split(path, validate_ids=True)
    assert info.value.row == 3


def test_corrupt_gzip_and_non_utf8_header(tmp_path):
    path = tmp_path / "mimic-cxr-2.0.0-split.csv.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read table file") as info:
        read_split(path)
    assert str(path) in str(info.value)
    latin = tmp_path / "cxr-study-list.csv"
    latin.write_bytes("subject_id,study_id,path\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_study_list(latin)


def test_order_studies_sorts_by_datetime_within_patient(tree):
    ordered = order_studies(read_metadata(tree.jpg_root))
    rows = ordered.to_pylist()
    assert [(r["subject_id"], r["study_id"], r["study_index"], r["previous_study_id"]) for r in rows] == [
        ("10000032", "56699142", 0, None),  # same day as 50414267 but 08:47 < 21:30
        ("10000032", "50414267", 1, "56699142"),
        ("10000032", "53189527", 2, "50414267"),
        ("10000764", "57375967", 0, None),
        ("11000001", "59999999", 0, None),
    ]

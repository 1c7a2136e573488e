"""cxr_max.mimic.paths: the PhysioNet path rule, identifier checks and safe_join."""

from pathlib import Path

import pytest

from cxr_max.errors import DataError
from cxr_max.mimic import dcm_relpath, jpg_relpath, report_relpath, safe_join, study_relpath, validate_ids

SUBJECT, STUDY, DICOM = "10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"


def test_relpaths_follow_physionet_layout():
    assert jpg_relpath(SUBJECT, STUDY, DICOM) == f"files/p10/p10000032/s50414267/{DICOM}.jpg"
    assert dcm_relpath(SUBJECT, STUDY, DICOM) == f"files/p10/p10000032/s50414267/{DICOM}.dcm"
    assert report_relpath(SUBJECT, STUDY) == "files/p10/p10000032/s50414267.txt"
    assert study_relpath(SUBJECT, STUDY) == "files/p10/p10000032/s50414267"
    # integers (and integral floats, as pandas prints CSV ids) give the same path
    assert jpg_relpath(10000032, 50414267.0, DICOM) == jpg_relpath(SUBJECT, STUDY, DICOM)
    assert report_relpath(19999999, 59999999) == "files/p19/p19999999/s59999999.txt"


@pytest.mark.parametrize(
    "ids, fragment",
    [
        (dict(subject_id="20000032"), "subject_id '20000032'"),
        (dict(subject_id="1000003"), "subject_id"),
        (dict(study_id="40414267"), "study_id '40414267'"),
        (dict(dicom_id="02aa804e-bde0afdd-112c0b34-7bc16630"), "dicom_id"),
        (dict(dicom_id="02AA804Z-bde0afdd-112c0b34-7bc16630-4e384014"), "dicom_id"),
    ],
)
def test_validate_ids_rejects_bad_formats(ids, fragment):
    with pytest.raises(DataError, match=fragment):
        validate_ids(**ids)


def test_validation_is_opt_in():
    validate_ids(SUBJECT, STUDY, DICOM)  # good ids pass
    assert jpg_relpath("20000032", "abc", "x") == "files/p20/p20000032/sabc/x.jpg"
    with pytest.raises(DataError, match="study_id"):
        jpg_relpath("10000032", "abc", DICOM, validate=True)


def test_ids_that_are_path_parts_are_refused():
    with pytest.raises(DataError, match="path separator"):
        jpg_relpath(SUBJECT, STUDY, "../../etc/passwd")
    with pytest.raises(DataError, match="path separator"):
        report_relpath(SUBJECT, "..")
    with pytest.raises(DataError):
        jpg_relpath(None, STUDY, DICOM)


def test_safe_join_accepts_relative_paths(tmp_path):
    assert safe_join(tmp_path, "files/p10/x.jpg") == tmp_path / "files/p10/x.jpg"
    assert safe_join(tmp_path, "files/../files/p10/x.jpg") == tmp_path / "files/p10/x.jpg"
    assert safe_join(str(tmp_path), Path("a/b")) == tmp_path / "a/b"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("../secret.txt", "escapes the root"),
        ("files/../../secret.txt", "escapes the root"),
        ("files\\..\\..\\secret.txt", "escapes the root"),
        ("..", "escapes the root"),
        ("/etc/passwd", "absolute"),
        ("C:\\Windows\\win.ini", "absolute"),
        ("\\\\host\\share\\x", "absolute"),
        ("", "empty"),
        ("a\x00b", "NUL"),
    ],
)
def test_safe_join_refuses_escapes(tmp_path, bad, reason):
    with pytest.raises(DataError, match=reason) as info:
        safe_join(tmp_path, bad)
    assert str(tmp_path) in str(info.value)  # the error names the root

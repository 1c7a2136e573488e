"""The PhysioNet MIMIC-CXR path rule, written once.

Both MIMIC-CXR-JPG and MIMIC-CXR (DICOM) store one folder per patient and one folder per study::

    files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg    (JPG copy)
    files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.dcm    (DICOM copy)
    files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt               (free-text report)

Identifiers are strings as PhysioNet prints them: ``subject_id`` is 8 digits starting with 1,
``study_id`` is 8 digits starting with 5, ``dicom_id`` is 5 dash-separated groups of 8 lowercase
hex characters. Checking them is opt-in (``validate=True`` or :func:`validate_ids`) because some
callers carry other identifiers through the same layout. The whole layout: docs/data.md
("MIMIC-CXR on disk").
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from cxr_max.errors import DataError

SUBJECT_ID_RE = re.compile(r"1\d{7}")
STUDY_ID_RE = re.compile(r"5\d{7}")
DICOM_ID_RE = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")

# The same rules as pyarrow/RE2 patterns, for vectorised checks over whole columns.
SUBJECT_ID_PATTERN = r"^1\d{7}$"
STUDY_ID_PATTERN = r"^5\d{7}$"
DICOM_ID_PATTERN = r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$"


def _as_id(value: object, name: str) -> str:
    """An identifier as a string; integers (and integral floats from a CSV) are printed plainly."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"{name} must be a string or an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise DataError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
    text = str(value).strip()
    if not text:
        raise DataError(f"{name} is empty")
    return text


def validate_ids(subject_id: object = None, study_id: object = None, dicom_id: object = None) -> None:
    """Raise :class:`DataError` if a given identifier does not follow the PhysioNet format.

    Identifiers left as ``None`` are not checked.
    """
    checks = (
        ("subject_id", subject_id, SUBJECT_ID_RE, "8 digits starting with 1"),
        ("study_id", study_id, STUDY_ID_RE, "8 digits starting with 5"),
        ("dicom_id", dicom_id, DICOM_ID_RE, "5 dash-separated groups of 8 lowercase hex characters"),
    )
    for name, value, pattern, rule in checks:
        if value is None:
            continue
        text = _as_id(value, name)
        if not pattern.fullmatch(text):
            raise DataError(f"{name} {text!r} is not a MIMIC-CXR identifier ({rule})")


def _ids(subject_id: object, study_id: object, dicom_id: object | None, validate: bool) -> tuple[str, str, str | None]:
    subject = _as_id(subject_id, "subject_id")
    study = _as_id(study_id, "study_id")
    dicom = None if dicom_id is None else _as_id(dicom_id, "dicom_id")
    if validate:
        validate_ids(subject, study, dicom)
    for name, value in (("subject_id", subject), ("study_id", study), ("dicom_id", dicom)):
        if value is not None and ("/" in value or "\\" in value or value in (".", "..")):
            raise DataError(f"{name} {value!r} contains a path separator")
    if len(subject) < 2:
        raise DataError(f"subject_id {subject!r} is too short to name a p?? group folder")
    return subject, study, dicom


def study_relpath(subject_id: object, study_id: object, *, validate: bool = False) -> str:
    """``files/p10/p10000032/s50414267`` : the study folder, relative to a MIMIC root."""
    subject, study, _ = _ids(subject_id, study_id, None, validate)
    return f"files/p{subject[:2]}/p{subject}/s{study}"


def jpg_relpath(subject_id: object, study_id: object, dicom_id: object, *, validate: bool = False) -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.jpg`` relative to the MIMIC-CXR-JPG root."""
    subject, study, dicom = _ids(subject_id, study_id, dicom_id, validate)
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def dcm_relpath(subject_id: object, study_id: object, dicom_id: object, *, validate: bool = False) -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.dcm`` relative to the MIMIC-CXR (DICOM) root."""
    subject, study, dicom = _ids(subject_id, study_id, dicom_id, validate)
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.dcm"


def report_relpath(subject_id: object, study_id: object, *, validate: bool = False) -> str:
    """``files/p10/p10000032/s50414267.txt``: the report sits next to the study folder."""
    subject, study, _ = _ids(subject_id, study_id, None, validate)
    return f"files/p{subject[:2]}/p{subject}/s{study}.txt"


def safe_join(root: str | os.PathLike, relpath: str | os.PathLike) -> Path:
    """Join ``relpath`` under ``root``, refusing anything that could point outside it.

    Raises :class:`DataError` for an absolute path (POSIX ``/x``, Windows ``C:\\x`` or ``\\\\host``),
    an empty path, a NUL byte, or a path whose ``..`` parts climb above ``root``. The check is on the
    text of the path (symbolic links inside ``root`` are followed as usual, since mirrored MIMIC copies
    are often links). Backslashes are treated as separators so Windows-style paths are caught too.
    """
    text = os.fspath(relpath)
    if not text:
        raise DataError("empty relative path", path=root)
    if "\x00" in text:
        raise DataError(f"path {text!r} contains a NUL byte", path=root)
    posix = text.replace("\\", "/")
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(text).drive or PureWindowsPath(text).root:
        raise DataError(f"refusing absolute path {text!r}; expected a path relative to the root", path=root)
    normal = posixpath.normpath(posix)
    if normal == ".." or normal.startswith("../"):
        raise DataError(f"refusing path {text!r}: it escapes the root", path=root)
    return Path(root) / normal


def file_paths(root, subject, study, tail: list):
    """``<root>/files/p<subject[:2]>/p<subject>/s<study><tail...>``, built column-wise (Arrow string
    columns of subject and study ids; ``tail`` are further columns or strings joined after the study)."""
    import pyarrow.compute as pc

    group = pc.utf8_slice_codeunits(subject, 0, 2)
    return pc.binary_join_element_wise(f"{root}/files/p", group, "/p", subject, "/s", study, *tail, "")

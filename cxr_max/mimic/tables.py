"""Readers for the MIMIC-CXR(-JPG) CSV tables, returning pyarrow Tables.

Files (gzip CSV as PhysioNet ships them, or the same files uncompressed):

=============  =====================================  =====================================
name           file                                   one row per
=============  =====================================  =====================================
metadata       ``mimic-cxr-2.0.0-metadata.csv.gz``    image (``dicom_id``)
split          ``mimic-cxr-2.0.0-split.csv.gz``       image (``dicom_id``)
chexpert       ``mimic-cxr-2.0.0-chexpert.csv.gz``    study (``study_id``)
negbio         ``mimic-cxr-2.0.0-negbio.csv.gz``      study (``study_id``)
record-list    ``cxr-record-list.csv.gz``             DICOM image (``dicom_id``)
study-list     ``cxr-study-list.csv.gz``              study (``study_id``)
test-labels    ``mimic-cxr-2.1.0-test-set-labeled``   test study (``study_id``), radiologists'
=============  =====================================  =====================================

``mimic-cxr-2.1.0-test-set-labeled.csv`` (MIMIC-CXR-JPG 2.1.0) holds radiologists' labels of the
test studies: ``study_id`` without ``subject_id``, and ``Airspace Opacity`` where the labeler tables
say ``Lung Opacity``; :func:`read_radiologist_labels` returns it with the CheXpert names.

Conventions of every reader here:

* Identifiers stay strings, exactly as printed (``"10000032"``). Other text stays a string too;
  an empty cell is null (so an empty ``ViewPosition`` is null, not ``""``).
* Label columns are float32 with 1.0 positive, 0.0 negative, -1.0 uncertain and **null = not
  mentioned**; the four stay distinct. A value that is not a number, or a number other than 1, 0 or
  -1, is bad input.
* ``Rows`` / ``Columns`` are int32. The metadata gains ``study_datetime`` (timestamp, microseconds)
  built from ``StudyDate`` (YYYYMMDD) and ``StudyTime`` (HHMMSS.ffffff, leading zeros often dropped:
  ``84725.234`` is 08:47:25.234). A missing StudyTime counts as midnight; a missing StudyDate gives a
  null datetime.
* Bad input follows :mod:`cxr_max.errors`: with ``on_error="raise"`` the first bad row raises a
  :class:`~cxr_max.errors.DataError` naming the file, the row and the column; with
  ``on_error="skip"`` the row is left out and counted in the given :class:`~cxr_max.errors.SkipLog`.
  Row numbers are CSV line numbers (the header is line 1). Bad rows are: a missing identifier, a bad
  label or integer value, an impossible date or time, a duplicated key (the first occurrence is kept),
  a row with the wrong number of cells, and, with ``validate_ids=True``, an identifier that does not
  follow the PhysioNet format. A missing column is never skippable: it raises, naming the columns.
* Conversions run as vectorised pyarrow compute over whole columns; Python only loops over the bad
  rows.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cxr_max.errors import DataError, OnError, SkipLog, handle
from cxr_max.labels import CHEXPERT_LABELS
from cxr_max.mimic.paths import DICOM_ID_PATTERN, STUDY_ID_PATTERN, SUBJECT_ID_PATTERN

LabelSource = Literal["chexpert", "negbio"]
LABEL_SOURCES: tuple[str, ...] = ("chexpert", "negbio")

_NUMBER_RE = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_ID_PATTERNS = {"subject_id": SUBJECT_ID_PATTERN, "study_id": STUDY_ID_PATTERN, "dicom_id": DICOM_ID_PATTERN}


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """What one MIMIC-CXR table must contain and how its columns are typed."""

    name: str
    stem: str  # file name without ``.csv`` / ``.csv.gz``
    required: tuple[str, ...]
    key: tuple[str, ...]  # columns that identify a row; duplicates are bad rows
    labels: tuple[str, ...] = ()  # float32 label columns (1 / 0 / -1 / null)
    integers: tuple[str, ...] = ()  # int32 columns

    @property
    def filenames(self) -> tuple[str, str]:
        return (f"{self.stem}.csv.gz", f"{self.stem}.csv")


# CheXpert name -> the name the radiologists' test-set table uses.
RADIOLOGIST_NAMES = {"Lung Opacity": "Airspace Opacity"}

_META_OPTIONAL = (
    "PerformedProcedureStepDescription",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)

TABLES: dict[str, TableSpec] = {
    "metadata": TableSpec(
        "metadata",
        "mimic-cxr-2.0.0-metadata",
        required=("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"),
        key=("dicom_id",),
        integers=("Rows", "Columns"),
    ),
    "split": TableSpec(
        "split", "mimic-cxr-2.0.0-split", required=("dicom_id", "study_id", "subject_id", "split"), key=("dicom_id",)
    ),
    "chexpert": TableSpec(
        "chexpert",
        "mimic-cxr-2.0.0-chexpert",
        required=("subject_id", "study_id", *CHEXPERT_LABELS),
        key=("study_id",),
        labels=CHEXPERT_LABELS,
    ),
    "negbio": TableSpec(
        "negbio",
        "mimic-cxr-2.0.0-negbio",
        required=("subject_id", "study_id", *CHEXPERT_LABELS),
        key=("study_id",),
        labels=CHEXPERT_LABELS,
    ),
    "record-list": TableSpec(
        "record-list", "cxr-record-list", required=("subject_id", "study_id", "dicom_id", "path"), key=("dicom_id",)
    ),
    "study-list": TableSpec(
        "study-list", "cxr-study-list", required=("subject_id", "study_id", "path"), key=("study_id",)
    ),
    "test-labels": TableSpec(
        "test-labels",
        "mimic-cxr-2.1.0-test-set-labeled",
        required=("study_id", *(RADIOLOGIST_NAMES.get(n, n) for n in CHEXPERT_LABELS)),
        key=("study_id",),
        labels=tuple(RADIOLOGIST_NAMES.get(n, n) for n in CHEXPERT_LABELS),
    ),
}


# --------------------------------------------------------------------------------------------- files


def find_table(root: str | os.PathLike, name: str, *, required: bool = True) -> Path | None:
    """The path of table ``name`` (a key of :data:`TABLES`) under ``root``: the ``.csv.gz`` or plain ``.csv``.

    The gzip file wins when both exist. When neither exists, raises :class:`DataError` naming the
    folder and the file names looked for, or returns ``None`` with ``required=False``.
    """
    spec = _spec(name)
    for filename in spec.filenames:
        candidate = Path(root) / filename
        if candidate.is_file():
            return candidate
    if required:
        raise DataError(f"missing table {name!r}: none of {list(spec.filenames)} found", path=root)
    return None


def table_name_of(path: str | os.PathLike) -> str:
    """Which table a file is, from its name (``.../mimic-cxr-2.0.0-split.csv.gz`` -> ``"split"``)."""
    filename = Path(path).name
    for name, spec in TABLES.items():
        if filename in spec.filenames:
            return name
    raise DataError(f"not a known MIMIC-CXR table file name; expected one of {[s.filenames[0] for s in TABLES.values()]}", path=path)


def _spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; known tables: {sorted(TABLES)}") from None


def _resolve(path_or_root: str | os.PathLike, name: str) -> Path:
    path = Path(path_or_root)
    return find_table(path, name) if path.is_dir() else path


def read_header(path: Path) -> list[str]:
    """The column names on the first line (gzip detected from the ``.gz`` suffix, as pyarrow does)."""
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
        with raw:
            first = raw.readline()
    except FileNotFoundError:
        raise DataError("table file not found", path=path) from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read table file: {e}", path=path) from e
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"header is not valid UTF-8 ({e.reason} at byte {e.start})", path=path, row=1) from e
    if not line.strip():
        raise DataError("table file is empty (no header line)", path=path)
    return [c.strip() for c in next(csv.reader(io.StringIO(line)))]


# ----------------------------------------------------------------------------------------- reading


def read_table(
    path: str | os.PathLike,
    name: str | None = None,
    *,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
    validate_ids: bool = False,
) -> pa.Table:
    """Read one MIMIC-CXR table file into a pyarrow Table (types as described in the module docs).

    ``name`` is a key of :data:`TABLES`; by default it is taken from the file name. Columns beyond the
    required ones are kept as strings. The metadata table gains a ``study_datetime`` column.
    """
    path = Path(path)
    spec = _spec(name) if name is not None else TABLES[table_name_of(path)]
    return _read_with_spec(path, spec, on_error=on_error, skips=skips, validate_ids=validate_ids)


def _read_with_spec(
    path: Path, spec: TableSpec, *, on_error: OnError = "raise", skips: SkipLog | None = None, validate_ids: bool = False
) -> pa.Table:
    columns = read_header(path)
    missing = [c for c in spec.required if c not in columns]
    if missing:
        raise DataError(f"table {spec.name!r} is missing column(s) {missing}; it has {columns}", path=path)

    parse = pacsv.ParseOptions()
    if on_error == "skip":
        if skips is None:
            raise ValueError('on_error="skip" needs a SkipLog to count the skips in')

        def _bad_shape(row: pacsv.InvalidRow) -> str:
            where = f"{path}:{row.number}" if row.number is not None else str(path)
            skips.add(f"row has {row.actual_columns} cells, expected {row.expected_columns}", where)
            return "skip"

        parse = pacsv.ParseOptions(invalid_row_handler=_bad_shape)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise DataError(f"cannot parse CSV: {e}", path=path) from e

    checker = _RowChecker(path, table.num_rows, on_error, skips)
    for column in spec.key:
        checker.flag(pc.is_null(table[column]).to_numpy(zero_copy_only=False), f"missing {column}", column, table[column])
    for column in ("subject_id", "study_id", "dicom_id"):
        if column in table.column_names:  # ids become path parts: never let one climb out of the root
            unsafe = pc.fill_null(pc.match_substring_regex(table[column], r"[/\\\x00]|^\.\.?$"), False)
            checker.flag(_np(unsafe), "identifier contains a path separator or is '.'/'..'", column, table[column])
    if validate_ids:
        for column, pattern in _ID_PATTERNS.items():
            if column in table.column_names:
                bad = pc.invert(pc.fill_null(pc.match_substring_regex(table[column], pattern), True))
                checker.flag(_np(bad), f"{column} is not in the PhysioNet format", column, table[column])

    converted: dict[str, pa.ChunkedArray] = {}
    for column in spec.labels:
        converted[column] = _labels(table[column], column, checker)
    for column in spec.integers:
        converted[column] = _integers(table[column], column, checker)
    for column, values in converted.items():
        table = table.set_column(table.column_names.index(column), column, values)
    if spec.name == "metadata":
        table = table.append_column("study_datetime", _study_datetime(table["StudyDate"], table["StudyTime"], checker))
    _flag_duplicates(table, spec.key, checker)
    return checker.apply(table)


def read_metadata(path_or_root: str | os.PathLike, **kwargs) -> pa.Table:
    """``mimic-cxr-2.0.0-metadata``: one row per image, with ``study_datetime`` derived. Takes a file or its folder."""
    return read_table(_resolve(path_or_root, "metadata"), "metadata", **kwargs)


def read_split(path_or_root: str | os.PathLike, **kwargs) -> pa.Table:
    """``mimic-cxr-2.0.0-split``: one row per image with ``split`` in train / validate / test."""
    return read_table(_resolve(path_or_root, "split"), "split", **kwargs)


def read_labels(path_or_root: str | os.PathLike, labels: LabelSource = "chexpert", **kwargs) -> pa.Table:
    """The CheXpert- or NegBio-labeler table: one row per study, 14 float32 label columns."""
    if labels not in LABEL_SOURCES:
        raise ValueError(f"labels must be one of {LABEL_SOURCES}, not {labels!r}")
    return read_table(_resolve(path_or_root, labels), labels, **kwargs)


def read_radiologist_labels(path_or_root: str | os.PathLike, **kwargs) -> pa.Table:
    """``mimic-cxr-2.1.0-test-set-labeled.csv``: radiologists' labels, one row per test study, with the
    CheXpert column names (``Airspace Opacity`` -> ``Lung Opacity``). A copy that already says
    ``Lung Opacity`` is read as well."""
    path = _resolve(path_or_root, "test-labels")
    spec = TABLES["test-labels"]
    if "Lung Opacity" in read_header(path) and "Airspace Opacity" not in read_header(path):
        spec = dataclasses.replace(spec, required=("study_id", *CHEXPERT_LABELS), labels=CHEXPERT_LABELS)
    table = _read_with_spec(path, spec, **kwargs)
    return table.rename_columns([{v: k for k, v in RADIOLOGIST_NAMES.items()}.get(c, c) for c in table.column_names])


def radiologist_label_struct(table: pa.Table, study_ids: pa.ChunkedArray | pa.Array) -> pa.StructArray:
    """The 14-label struct of each study in ``study_ids`` from :func:`read_radiologist_labels`'s table;
    null (as a whole) for a study the radiologists did not label."""
    from cxr_max.labels import LABELS_TYPE

    if isinstance(study_ids, pa.ChunkedArray):
        study_ids = study_ids.combine_chunks()
    at = pc.index_in(study_ids, value_set=table["study_id"].combine_chunks())
    fields = [table[name].combine_chunks().take(at) for name in CHEXPERT_LABELS]
    missing = pc.is_null(at)
    if isinstance(missing, pa.ChunkedArray):
        missing = missing.combine_chunks()
    return pa.StructArray.from_arrays(fields, fields=list(LABELS_TYPE), mask=missing)


def read_record_list(path_or_root: str | os.PathLike, **kwargs) -> pa.Table:
    """``cxr-record-list`` of MIMIC-CXR (DICOM): subject_id, study_id, dicom_id, path."""
    return read_table(_resolve(path_or_root, "record-list"), "record-list", **kwargs)


def read_study_list(path_or_root: str | os.PathLike, **kwargs) -> pa.Table:
    """``cxr-study-list`` of MIMIC-CXR (DICOM): subject_id, study_id, path (of the report)."""
    return read_table(_resolve(path_or_root, "study-list"), "study-list", **kwargs)


# ------------------------------------------------------------------------------------ bad-row logic


def _np(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


class _RowChecker:
    """Collects bad rows of one table; raises on the first one or counts and drops them at the end."""

    def __init__(self, path: Path, n: int, on_error: OnError, skips: SkipLog | None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.path, self.on_error, self.skips = path, on_error, skips
        self.bad = np.zeros(n, dtype=bool)

    def flag(self, mask: np.ndarray, reason: str, column: str, values: pa.ChunkedArray | None = None) -> None:
        """Mark rows where ``mask`` is true as bad, for ``reason`` in ``column``."""
        rows = np.flatnonzero(mask & ~self.bad)
        if rows.size == 0:
            return
        if self.on_error == "raise":
            i = int(rows[0])
            shown = f" (value {values[i].as_py()!r})" if values is not None and values[i].is_valid else ""
            raise DataError(f"column {column!r}: {reason}{shown}", path=self.path, row=i + 2)
        for i in rows:
            handle(DataError(f"column {column!r}: {reason}", path=self.path, row=int(i) + 2), "skip", self.skips)
        self.bad[rows] = True

    def apply(self, table: pa.Table) -> pa.Table:
        return table.filter(pa.array(~self.bad)) if self.bad.any() else table


def _labels(values: pa.ChunkedArray, column: str, checker: _RowChecker) -> pa.ChunkedArray:
    text = pc.utf8_trim_whitespace(values)
    numeric = pc.match_substring_regex(text, _NUMBER_RE)  # null where the cell is empty
    checker.flag(_np(pc.invert(pc.fill_null(numeric, True))), "label value is not a number", column, values)
    number = pc.cast(pc.if_else(numeric, text, None), pa.float64())
    allowed = pc.is_in(number, value_set=pa.array([1.0, 0.0, -1.0]))
    checker.flag(_np(pc.and_(pc.is_valid(number), pc.invert(allowed))), "label value must be 1, 0, -1 or empty", column, values)
    return pc.cast(pc.if_else(allowed, number, None), pa.float32())


def _integers(values: pa.ChunkedArray, column: str, checker: _RowChecker) -> pa.ChunkedArray:
    text = pc.utf8_trim_whitespace(values)
    ok = pc.match_substring_regex(text, r"^\d{1,9}(\.0*)?$")
    checker.flag(_np(pc.invert(pc.fill_null(ok, True))), "not a whole non-negative number", column, values)
    return pc.cast(pc.cast(pc.if_else(ok, text, None), pa.float64()), pa.int32())


def _study_datetime(dates: pa.ChunkedArray, times: pa.ChunkedArray, checker: _RowChecker) -> pa.ChunkedArray:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS[.ffffff], leading zeros optional) -> timestamp[us]."""
    date_text = pc.utf8_trim_whitespace(dates)
    day = pc.strptime(date_text, format="%Y%m%d", unit="us", error_is_null=True)
    date_ok = pc.and_(pc.match_substring_regex(date_text, r"^\d{8}$"), pc.is_valid(day))
    checker.flag(_np(pc.invert(pc.fill_null(date_ok, True))), "StudyDate is not a valid YYYYMMDD date", "StudyDate", dates)

    time_text = pc.utf8_trim_whitespace(times)
    time_ok = pc.match_substring_regex(time_text, r"^\d{1,6}(\.\d+)?$")
    t = pc.cast(pc.if_else(time_ok, time_text, None), pa.float64()).to_numpy(zero_copy_only=False)
    t = np.nan_to_num(np.asarray(t, dtype=np.float64), nan=0.0)  # missing time -> midnight
    hours = np.floor(t / 10000)
    minutes = np.floor((t - hours * 10000) / 100)
    seconds = t - hours * 10000 - minutes * 100
    in_range = (hours < 24) & (minutes < 60) & (seconds < 60)
    bad_time = ~_np(pc.fill_null(time_ok, True)) | ~in_range
    checker.flag(bad_time, "StudyTime is not a valid HHMMSS[.ffffff] time", "StudyTime", times)

    micros = np.round((hours * 3600 + minutes * 60 + seconds) * 1e6).astype(np.int64)
    micros[bad_time] = 0
    offset = pa.array(micros, type=pa.duration("us"))
    return pc.add(day, offset)


def _flag_duplicates(table: pa.Table, key: tuple[str, ...], checker: _RowChecker) -> None:
    """Flag every occurrence of a key after its first (among rows not already bad)."""
    if table.num_rows == 0:
        return
    counts = table.select(list(key)).group_by(list(key)).aggregate([([], "count_all")])
    dups = counts.filter(pc.greater(counts["count_all"], 1))
    if dups.num_rows == 0:
        return
    if len(key) == 1:
        candidate = _np(pc.fill_null(pc.is_in(table[key[0]], value_set=dups[key[0]].combine_chunks()), False))
    else:  # not used by the PhysioNet tables, kept general
        candidate = np.ones(table.num_rows, dtype=bool)
    rows = np.flatnonzero(candidate & ~checker.bad)
    keys = table.select(list(key)).take(pa.array(rows)).to_pylist()
    seen: set[tuple] = set()
    later = np.zeros(table.num_rows, dtype=bool)
    for i, row in zip(rows, keys):
        k = tuple(row[c] for c in key)
        if k in seen:
            later[i] = True
        seen.add(k)
    checker.flag(later, "duplicated " + "/".join(key) + " (the first occurrence is kept)", "/".join(key), table[key[0]])


# ------------------------------------------------------------------------------------ study order


def order_studies(metadata: pa.Table) -> pa.Table:
    """One row per study, ordered within each patient by time: the order of a patient's studies.

    Takes a table with ``subject_id``, ``study_id`` and ``study_datetime`` (the metadata table, one
    row per image, or any table derived from it). Returns ``subject_id, study_id, study_datetime
    (earliest image of the study), study_index (0 for a patient's first study), previous_study_id
    (null for the first)``, sorted by subject_id, study_datetime, study_id. Studies without a datetime
    sort last within their patient; ties are broken by study_id so the order is deterministic.
    """
    per_study = metadata.group_by(["subject_id", "study_id"]).aggregate([("study_datetime", "min")])
    per_study = per_study.rename_columns({"study_datetime_min": "study_datetime"})
    return rank_studies(per_study.select(["subject_id", "study_id", "study_datetime"]))


def rank_studies(per_study: pa.Table) -> pa.Table:
    """Sort a one-row-per-study table by subject_id, study_datetime, study_id and add ``study_index``
    and ``previous_study_id`` (see :func:`order_studies`). Other columns are carried along."""
    ordered = per_study.sort_by(
        [("subject_id", "ascending", "at_end"), ("study_datetime", "ascending", "at_end"), ("study_id", "ascending", "at_end")]
    )
    n = ordered.num_rows
    subjects = ordered["subject_id"].to_numpy(zero_copy_only=False)
    starts = np.ones(n, dtype=bool)
    if n:
        starts[1:] = subjects[1:] != subjects[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    index = np.arange(n) - first
    studies = ordered["study_id"].to_numpy(zero_copy_only=False)
    previous = np.empty(n, dtype=object)
    if n:
        previous[1:] = np.where(starts[1:], None, studies[:-1])
    ordered = ordered.append_column("study_index", pa.array(index, type=pa.int32()))
    return ordered.append_column("previous_study_id", pa.array(previous.tolist(), type=pa.string()))

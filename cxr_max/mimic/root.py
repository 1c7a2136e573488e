"""One local MIMIC-CXR copy: :class:`MimicRoot` joins the tables into one row per image or study.

A MIMIC-CXR-JPG root holds ``files/`` and the tables (metadata, split, chexpert, negbio). An optional
MIMIC-CXR (DICOM) root holds the same ``files/`` tree with ``.dcm`` images, the per-study ``.txt``
reports, ``mimic-cxr-reports.zip`` and the record lists. A table is looked for in the JPG root first,
then in the DICOM root. Table columns and value codes: docs/data.md ("MIMIC-CXR on disk").

All joins are pyarrow joins on whole tables and the paths are built with vectorised string compute,
so :meth:`MimicRoot.images` over the full 377,110-image metadata takes seconds, not minutes; nothing
is checked on disk there (that is :meth:`MimicRoot.validate`'s job).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_max.mimic.validate import ValidationReport

import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.errors import DataError, OnError, SkipLog
from cxr_max.labels import CHEXPERT_LABELS, LABELS_TYPE
from cxr_max.mimic.paths import file_paths
from cxr_max.mimic.reports import ReportStore, find_report_source, parse_report
from cxr_max.mimic.tables import LABEL_SOURCES, LabelSource, find_table, rank_studies, read_table

SPLITS: tuple[str, ...] = ("train", "validate", "test")

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string()),
        pa.field("study_id", pa.string()),
        pa.field("dicom_id", pa.string()),
        pa.field("split", pa.string()),
        pa.field("view_position", pa.string()),
        pa.field("study_date", pa.string()),
        pa.field("study_time", pa.string()),
        pa.field("study_datetime", pa.timestamp("us")),
        pa.field("rows", pa.int32()),
        pa.field("columns", pa.int32()),
        pa.field("image_path", pa.string()),
        pa.field("dicom_path", pa.string()),
        pa.field("report_path", pa.string()),
        pa.field("labels", LABELS_TYPE),
    ]
)

STUDIES_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string()),
        pa.field("study_id", pa.string()),
        pa.field("study_datetime", pa.timestamp("us")),
        pa.field("study_index", pa.int32()),
        pa.field("previous_study_id", pa.string()),
        pa.field("split", pa.string()),
        pa.field("n_images", pa.int32()),
        pa.field("dicom_ids", pa.list_(pa.string())),
        pa.field("view_positions", pa.list_(pa.string())),
        pa.field("report_path", pa.string()),
        pa.field("labels", LABELS_TYPE),
    ]
)


def _label_struct(table: pa.Table, present: str) -> pa.StructArray:
    """The 14 label columns as one struct column, null where ``present`` (bool column) is null."""
    fields = [table[name].combine_chunks() for name in CHEXPERT_LABELS]
    missing = pc.is_null(table[present]).combine_chunks()
    return pa.StructArray.from_arrays(fields, fields=list(LABELS_TYPE), mask=missing)


class MimicRoot:
    """A local MIMIC-CXR(-JPG) copy, read through the PhysioNet layout.

    Args:
        jpg_root: the MIMIC-CXR-JPG folder (``files/`` + the ``mimic-cxr-2.0.0-*.csv.gz`` tables).
        dicom_root: optional MIMIC-CXR (DICOM) folder; gives ``dicom_path`` and usually the reports.
        labels: which labeler's table fills ``labels``: ``"chexpert"`` (default) or ``"negbio"``.
        reports: where reports are, if not found automatically: a folder with the ``files/.../s*.txt``
            tree, ``mimic-cxr-reports.zip`` or ``mimic-cxr-reports.tar.gz``. By default the zip, then the
            tar.gz, then the tree, in the DICOM root and then the JPG root.
        on_error: ``"raise"`` (default) or ``"skip"`` for bad rows in the tables and bad reports.
        skips: the :class:`SkipLog` for ``on_error="skip"`` (one is created when not given; see
            :attr:`skips`).
        validate_ids: also treat identifiers not in the PhysioNet format as bad rows.
    """

    def __init__(
        self,
        jpg_root: str | os.PathLike,
        dicom_root: str | os.PathLike | None = None,
        *,
        labels: LabelSource = "chexpert",
        reports: str | os.PathLike | None = None,
        on_error: OnError = "raise",
        skips: SkipLog | None = None,
        validate_ids: bool = False,
    ):
        if labels not in LABEL_SOURCES:
            raise ValueError(f"labels must be one of {LABEL_SOURCES}, not {labels!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.jpg_root = Path(jpg_root).absolute()
        self.dicom_root = Path(dicom_root).absolute() if dicom_root is not None else None
        if not self.jpg_root.is_dir():
            raise DataError("MIMIC-CXR-JPG root is not a folder", path=self.jpg_root)
        if self.dicom_root is not None and not self.dicom_root.is_dir():
            raise DataError("MIMIC-CXR (DICOM) root is not a folder", path=self.dicom_root)
        self.labels = labels
        self.on_error = on_error
        self.skips = skips if skips is not None else SkipLog()
        self.validate_ids = validate_ids
        self._reports_arg = Path(reports).absolute() if reports is not None else None
        self._store: ReportStore | None = None

    def __repr__(self) -> str:
        return f"MimicRoot({str(self.jpg_root)!r}, dicom_root={self.dicom_root and str(self.dicom_root)!r}, labels={self.labels!r})"

    # ------------------------------------------------------------------------------------ tables
    def table_path(self, name: str, *, required: bool = True) -> Path | None:
        """Where table ``name`` is: the JPG root first, then the DICOM root."""
        for root in (self.jpg_root, self.dicom_root):
            if root is not None:
                found = find_table(root, name, required=False)
                if found is not None:
                    return found
        if required:
            where = " or ".join(str(r) for r in (self.jpg_root, self.dicom_root) if r is not None)
            raise DataError(f"missing table {name!r} (looked in {where})", path=self.jpg_root)
        return None

    def read(self, name: str) -> pa.Table:
        """Read a table of this copy with this root's error policy (not cached)."""
        return read_table(
            self.table_path(name), name, on_error=self.on_error, skips=self.skips, validate_ids=self.validate_ids
        )

    @functools.cached_property
    def metadata(self) -> pa.Table:
        """``mimic-cxr-2.0.0-metadata`` as read by :func:`~cxr_max.mimic.tables.read_table` (cached)."""
        return self.read("metadata")

    @functools.cached_property
    def split(self) -> pa.Table:
        """``mimic-cxr-2.0.0-split`` (cached)."""
        return self.read("split")

    def radiologist_labels(self) -> pa.Table:
        """``mimic-cxr-2.1.0-test-set-labeled.csv``: the radiologists' labels of the test studies, with
        CheXpert column names (see :func:`~cxr_max.mimic.tables.read_radiologist_labels`)."""
        from cxr_max.mimic.tables import read_radiologist_labels

        path = self.table_path("test-labels", required=False)
        if path is None:
            raise DataError(
                "no radiologist test labels: mimic-cxr-2.1.0-test-set-labeled.csv is not in this copy "
                "(it ships with MIMIC-CXR-JPG 2.1.0)", path=self.jpg_root)
        return read_radiologist_labels(path, on_error=self.on_error, skips=self.skips)

    @functools.cached_property
    def label_table(self) -> pa.Table:
        """The chosen labeler's table (``chexpert`` or ``negbio``), one row per study (cached)."""
        return self.read(self.labels)

    # ---------------------------------------------------------------------------------- reports
    @property
    def report_source(self) -> Path | None:
        """The reports zip or tree used, or None when this copy has no reports."""
        if self._reports_arg is not None:
            return self._reports_arg
        return find_report_source(self.dicom_root, self.jpg_root)

    @property
    def reports(self) -> ReportStore | None:
        """The :class:`ReportStore` over :attr:`report_source` (opened once), or None."""
        if self._store is None:
            source = self.report_source
            if source is None:
                return None
            self._store = ReportStore(source, on_error=self.on_error, skips=self.skips)
        return self._store

    @functools.cached_property
    def _subject_of(self) -> dict[str, str]:
        meta = self.metadata
        return dict(zip(meta["study_id"].to_pylist(), meta["subject_id"].to_pylist()))

    def _study_key(self, study: Any, subject_id: Any = None) -> tuple[str, str]:
        if isinstance(study, dict):
            subject_id = study.get("subject_id", subject_id)
            study = study["study_id"]
        study_id = str(study)
        if subject_id is None:
            subject_id = self._subject_of.get(study_id)
            if subject_id is None:
                raise DataError(f"study {study_id} is not in the metadata", path=self.table_path("metadata"))
        return str(subject_id), study_id

    def report_text(self, study: Any, subject_id: Any = None) -> str | None:
        """The free-text report of a study (a study_id, or a row dict with study_id/subject_id).

        Raises DataError when the copy has no reports or the study's report is missing or not
        UTF-8; under ``on_error="skip"`` returns None and counts it.
        """
        subject, study_id = self._study_key(study, subject_id)
        store = self.reports
        if store is None:
            raise DataError("this MIMIC copy has no reports (no mimic-cxr-reports.zip or files/**/s*.txt)", path=self.dicom_root or self.jpg_root)
        return store.text(subject, study_id)

    def report(self, study: Any, subject_id: Any = None) -> dict[str, str] | None:
        """The report of a study split into sections by :func:`~cxr_max.mimic.reports.parse_report`."""
        text = self.report_text(study, subject_id)
        return None if text is None else parse_report(text)

    def close(self) -> None:
        """Close the reports zip if one was opened."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "MimicRoot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- joins
    def _report_paths(self, subject: pa.ChunkedArray, study: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
        source = self.report_source
        if source is not None and source.is_dir():
            return file_paths(source, subject, study, [".txt"])
        return pa.nulls(len(subject), pa.string())

    def images(self) -> pa.Table:
        """One row per image of the metadata, in metadata order, with the columns of :data:`IMAGES_SCHEMA`.

        ``split`` is null for images the split table does not list; ``labels`` is null (as a whole)
        for studies without a label row, and inside it null means "not mentioned". ``image_path``
        is absolute (JPG root); ``dicom_path`` is null without a DICOM root; ``report_path`` is the
        per-study ``.txt`` where reports come as a tree, null where they come in the zip or are
        absent. Paths are where the files belong, not checked on disk (see :meth:`validate`).
        """
        meta = self.metadata
        subject, study, dicom = meta["subject_id"], meta["study_id"], meta["dicom_id"]
        # Vectorised lookups keep metadata order: dicom_id is unique in the split table (the reader
        # enforces it), study_id in the label table.
        split = self.split
        at = pc.index_in(dicom, value_set=split["dicom_id"].combine_chunks())
        columns = {
            "subject_id": subject,
            "study_id": study,
            "dicom_id": dicom,
            "split": split["split"].take(at),
            "view_position": meta["ViewPosition"],
            "study_date": meta["StudyDate"],
            "study_time": meta["StudyTime"],
            "study_datetime": meta["study_datetime"],
            "rows": meta["Rows"],
            "columns": meta["Columns"],
            "image_path": file_paths(self.jpg_root, subject, study, ["/", dicom, ".jpg"]),
            "dicom_path": (
                file_paths(self.dicom_root, subject, study, ["/", dicom, ".dcm"])
                if self.dicom_root is not None
                else pa.nulls(meta.num_rows, pa.string())
            ),
            "report_path": self._report_paths(subject, study),
            "labels": self._labels_of_studies(subject, study),
        }
        return pa.table(columns, schema=IMAGES_SCHEMA)

    def studies(self) -> pa.Table:
        """One row per study (:data:`STUDIES_SCHEMA`), ordered by subject_id then study time.

        ``study_index`` counts a patient's studies from 0 in time order and ``previous_study_id``
        names the one before (see :func:`~cxr_max.mimic.tables.order_studies`). ``dicom_ids`` and
        ``view_positions`` list the study's images in metadata order; ``split`` is the study's split
        (the smallest name if its images disagree, which :meth:`validate` reports).
        """
        images = self.images()
        per_study = images.group_by(["subject_id", "study_id"], use_threads=False).aggregate(
            [("study_datetime", "min"), ("dicom_id", "count"), ("dicom_id", "list"), ("view_position", "list"), ("split", "min")]
        )
        ordered = rank_studies(per_study.rename_columns({"study_datetime_min": "study_datetime"}))
        subject, study = ordered["subject_id"], ordered["study_id"]
        columns = {
            "subject_id": subject,
            "study_id": study,
            "study_datetime": ordered["study_datetime"],
            "study_index": ordered["study_index"],
            "previous_study_id": ordered["previous_study_id"],
            "split": ordered["split_min"],
            "n_images": pc.cast(ordered["dicom_id_count"], pa.int32()),
            "dicom_ids": ordered["dicom_id_list"],
            "view_positions": ordered["view_position_list"],
            "report_path": self._report_paths(subject, study),
            "labels": self._labels_of_studies(subject, study),
        }
        return pa.table(columns, schema=STUDIES_SCHEMA)

    def _labels_of_studies(self, subject: pa.ChunkedArray, study: pa.ChunkedArray) -> pa.StructArray:
        """The label struct of each (subject, study), by vectorised lookup of study_id in the label table.

        A copy without the label table (e.g. a teacher-collection folder) gets null labels throughout;
        ``validate()`` still reports the table as missing.
        """
        if find_table(self.jpg_root, self.labels, required=False) is None and (
            self.dicom_root is None or find_table(self.dicom_root, self.labels, required=False) is None
        ):
            return pa.nulls(len(study), LABELS_TYPE)
        table = self.label_table
        index = pc.index_in(study, value_set=table["study_id"].combine_chunks())  # study_id is unique there
        found = table.select(["subject_id", *CHEXPERT_LABELS]).take(index)
        same_subject = pc.fill_null(pc.equal(found["subject_id"], subject), False)
        found = found.append_column("_has_labels", pc.if_else(same_subject, True, pa.scalar(None, pa.bool_())))
        return _label_struct(found, "_has_labels")

    # ------------------------------------------------------------------------------ validation
    def validate(self, *, check_files: bool = True, max_examples: int = 5, progress: bool = True,
                 verify_images: bool = False, needed: Any = None) -> "ValidationReport":
        """Check this copy and return a :class:`ValidationReport` (it never raises on bad data).

        Checks: the tables exist and have their columns; bad rows in each table (as counted skips);
        duplicated dicom_ids; split rows with no metadata and metadata rows with no split; split
        rows whose subject/study disagree with the metadata; split names outside train / validate
        / test; patients in more than one split; studies with no label row and label rows with no
        study; all-blank label rows; identifiers not in the PhysioNet format; view positions beyond
        PA/AP/LATERAL; and, with ``check_files``, images (JPG and, with a DICOM root, DICOM) and reports
        listed but absent on disk, empty JPGs, and (``verify_images``) truncated JPGs. ``needed`` (the
        dicom_ids some rows join to) turns missing images nobody needs into a "partial-copy" note.
        """
        from cxr_max.mimic.validate import validate_root

        return validate_root(self, check_files=check_files, max_examples=max_examples, progress=progress,
                             verify_images=verify_images, needed=needed)


__all__ = ["MimicRoot", "IMAGES_SCHEMA", "STUDIES_SCHEMA", "SPLITS"]

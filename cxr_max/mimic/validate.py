"""Checking a local MIMIC-CXR copy: :class:`ValidationReport` and the checks behind
:meth:`cxr_max.mimic.root.MimicRoot.validate`."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.errors import DataError, SkipLog
from cxr_max.mimic.paths import DICOM_ID_PATTERN, STUDY_ID_PATTERN, SUBJECT_ID_PATTERN
from cxr_max.mimic.tables import read_table

if TYPE_CHECKING:
    from cxr_max.mimic.root import MimicRoot

Level = Literal["error", "warning", "info"]


@dataclasses.dataclass
class Issue:
    """One finding of a validation: a check that failed ``count`` times, with a few examples."""

    level: Level
    check: str  # short stable code, e.g. "missing-image-files"
    message: str
    count: int = 1
    examples: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ValidationReport:
    """What :meth:`MimicRoot.validate` found. ``ok`` is true when there is no error-level issue.

    Print it with ``print(report.summary())`` or render it with rich (``console.print(report)``).
    """

    jpg_root: str
    dicom_root: str | None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    missing_tables: list[str] = dataclasses.field(default_factory=list)
    missing_columns: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    issues: list[Issue] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(issue.level == "error" for issue in self.issues)

    def issue(self, check: str) -> Issue | None:
        """The issue with code ``check``, or None when that check passed."""
        return next((i for i in self.issues if i.check == check), None)

    def add(self, level: Level, check: str, message: str, count: int = 1, examples: list[str] | None = None) -> None:
        self.issues.append(Issue(level, check, message, int(count), list(examples or [])))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"ok": self.ok}

    def summary(self) -> str:
        """A plain-text summary, one line per issue."""
        lines = [f"MIMIC-CXR copy at {self.jpg_root}" + (f" (DICOM: {self.dicom_root})" if self.dicom_root else "")]
        if self.counts:
            lines.append("  " + ", ".join(f"{n:,} {what}" for what, n in self.counts.items()))
        if not self.issues:
            lines.append("  OK: no problems found")
        for i in self.issues:
            ex = f"  e.g. {'; '.join(i.examples)}" if i.examples else ""
            lines.append(f"  {i.level.upper():7} {i.check}: {i.message} [{i.count:,}]{ex}")
        lines.append("  result: " + ("OK" if self.ok else "ERRORS FOUND"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        title = f"MIMIC-CXR copy at {self.jpg_root}" + (f" (DICOM: {self.dicom_root})" if self.dicom_root else "")
        table = Table(title=title, show_lines=False)
        for col in ("level", "check", "count", "message", "examples"):
            table.add_column(col, overflow="fold")
        style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
        for i in self.issues:
            table.add_row(Text(i.level, style=style[i.level]), i.check, f"{i.count:,}", i.message, "\n".join(i.examples))
        counts = Text(", ".join(f"{n:,} {what}" for what, n in self.counts.items()))
        verdict = Text("OK" if self.ok else "ERRORS FOUND", style="bold green" if self.ok else "bold red")
        return Group(counts, table, verdict) if self.issues else Group(counts, Text("no problems found"), verdict)


def _examples(values: pa.ChunkedArray | pa.Array | list, n: int) -> list[str]:
    items = values[:n].to_pylist() if not isinstance(values, list) else values[:n]
    return [str(v) for v in items]


def _read(root: "MimicRoot", name: str, report: ValidationReport, required: bool, max_examples: int) -> pa.Table | None:
    path = root.table_path(name, required=False)
    if path is None:
        report.missing_tables.append(name)
        report.add("error" if required else "warning", f"missing-table-{name}", f"table {name!r} not found", 1)
        return None
    skips = SkipLog(max_examples=max_examples)
    try:
        table = read_table(path, name, on_error="skip", skips=skips)
    except DataError as e:
        if "missing column" in e.reason:
            from cxr_max.mimic.tables import TABLES, read_header

            have = read_header(path)
            report.missing_columns[name] = [c for c in TABLES[name].required if c not in have]
            report.add("error", f"missing-columns-{name}", str(e), len(report.missing_columns[name]))
        else:
            report.add("error", f"unreadable-table-{name}", str(e), 1)
        return None
    for reason, n in skips.counts.most_common():
        report.add("error", f"bad-rows-{name}", f"{path.name}: {reason}", n, skips.examples.get(reason, []))
    return table


def _missing_on_disk(paths: list[str], what: str, progress: bool) -> list[str]:
    """The paths that are not files, with a rich progress bar for long lists."""
    return [p for p, problem in _file_problems(paths, what, progress, "exists") if problem]


def _file_problems(paths: list[str], what: str, progress: bool, level: str) -> list[tuple[str, str | None]]:
    """(path, problem or None) for each path: "exists" only stats (an empty file is a problem too),
    "verify" also checks the JPEG signature and end-of-image marker (see :func:`cxr_max.mimic.images.image_problem`)."""
    from rich.progress import track

    from cxr_max.mimic.images import image_problem

    it = track(paths, description=f"checking {what}", disable=not progress or len(paths) < 2000, transient=True)
    out = []
    for p in it:
        try:
            size = os.path.getsize(p)
        except OSError:
            out.append((p, "missing image file"))
            continue
        if size == 0:
            out.append((p, "empty image file"))
        elif level == "verify":
            out.append((p, image_problem(p, "verify")))
        else:
            out.append((p, None))
    return out


def validate_root(root: "MimicRoot", *, check_files: bool = True, max_examples: int = 5, progress: bool = True,
                  verify_images: bool = False, needed: "pa.Array | None" = None) -> ValidationReport:
    """Run every check of :meth:`MimicRoot.validate` on ``root``.

    ``verify_images`` also checks each JPG's signature and end-of-image marker (truncated downloads);
    ``needed`` (dicom_ids the user's rows join to, e.g. a trajectory folder's): missing images outside it
    are a partial copy (info), inside it an error.
    """
    report = ValidationReport(str(root.jpg_root), str(root.dicom_root) if root.dicom_root else None)
    ex = max_examples
    meta = _read(root, "metadata", report, True, ex)
    split = _read(root, "split", report, True, ex)
    labels = _read(root, root.labels, report, True, ex)
    if root.dicom_root is not None:
        _read(root, "record-list", report, False, ex)
        _read(root, "study-list", report, False, ex)

    if meta is not None:
        report.counts.update(
            images=meta.num_rows,
            studies=len(pc.unique(meta["study_id"])),
            subjects=len(pc.unique(meta["subject_id"])),
        )
        for column, pattern in (("subject_id", SUBJECT_ID_PATTERN), ("study_id", STUDY_ID_PATTERN), ("dicom_id", DICOM_ID_PATTERN)):
            bad = meta.filter(pc.invert(pc.match_substring_regex(meta[column], pattern)))
            if bad.num_rows:
                report.add("warning", f"id-format-{column}", f"metadata {column} values not in the PhysioNet format", bad.num_rows, _examples(bad[column], ex))
        no_view = meta.filter(pc.is_null(meta["ViewPosition"]))
        if no_view.num_rows:
            report.add("info", "no-view-position", "images with an empty ViewPosition (views='frontal' falls back to "
                       "ViewCodeSequence_CodeMeaning)", no_view.num_rows, _examples(no_view["dicom_id"], ex))
        views = pc.value_counts(meta["ViewPosition"].combine_chunks()).to_pylist()
        other = {v["values"]: v["counts"] for v in views if v["values"] not in (None, "PA", "AP", "LATERAL")}
        if other:
            report.add("info", "other-view-positions", "images in view positions other than PA/AP/LATERAL: "
                       + ", ".join(f"{k} {n}" for k, n in sorted(other.items(), key=lambda kv: -kv[1])), sum(other.values()),
                       _examples(meta.filter(pc.is_in(meta["ViewPosition"], pa.array(list(other))))["dicom_id"], ex))

    if meta is not None and split is not None:
        report.counts["split rows"] = split.num_rows
        orphans = split.join(meta.select(["dicom_id"]), keys="dicom_id", join_type="left anti")
        if orphans.num_rows:
            report.add("error", "split-without-metadata", "split rows whose dicom_id is not in the metadata", orphans.num_rows, _examples(orphans["dicom_id"], ex))
        unsplit = meta.join(split.select(["dicom_id"]), keys="dicom_id", join_type="left anti")
        if unsplit.num_rows:
            report.add("warning", "metadata-without-split", "images with no row in the split table", unsplit.num_rows, _examples(unsplit["dicom_id"], ex))
        both = meta.select(["dicom_id", "subject_id", "study_id"]).join(
            split.select(["dicom_id", "subject_id", "study_id"]), keys="dicom_id", join_type="inner", right_suffix="_split"
        )
        differ = both.filter(
            pc.or_(pc.not_equal(both["subject_id"], both["subject_id_split"]), pc.not_equal(both["study_id"], both["study_id_split"]))
        )
        if differ.num_rows:
            report.add("error", "split-id-mismatch", "split rows whose subject_id/study_id differ from the metadata", differ.num_rows, _examples(differ["dicom_id"], ex))
        unknown = split.filter(pc.invert(pc.fill_null(pc.is_in(split["split"], value_set=pa.array(["train", "validate", "test"])), False)))
        if unknown.num_rows:
            report.add("error", "unknown-split", "split values outside train / validate / test", unknown.num_rows, _examples(unknown["split"], ex))
        per_subject = split.group_by("subject_id").aggregate([("split", "count_distinct")])
        leaky = per_subject.filter(pc.greater(per_subject["split_count_distinct"], 1))
        if leaky.num_rows:
            report.add("error", "patient-in-several-splits", "patients whose images are in more than one split", leaky.num_rows, _examples(leaky["subject_id"], ex))

    if meta is not None and labels is not None:
        studies = meta.select(["subject_id", "study_id"]).group_by(["subject_id", "study_id"]).aggregate([])
        unlabelled = studies.join(labels.select(["subject_id", "study_id"]), keys=["subject_id", "study_id"], join_type="left anti")
        if unlabelled.num_rows:
            report.add("warning", "study-without-labels", f"studies with no row in the {root.labels} table", unlabelled.num_rows, _examples(unlabelled["study_id"], ex))
        from cxr_max.labels import CHEXPERT_LABELS

        blank = labels.filter(_all_null(labels, CHEXPERT_LABELS))
        if blank.num_rows:
            report.add("warning", "blank-label-rows", f"{root.labels} rows with every label empty", blank.num_rows,
                       _examples(blank["study_id"], ex))
        stray = labels.join(studies, keys=["subject_id", "study_id"], join_type="left anti")
        if stray.num_rows:
            report.add("warning", "labels-without-study", f"{root.labels} rows whose study is not in the metadata", stray.num_rows, _examples(stray["study_id"], ex))

    if check_files and meta is not None:
        from cxr_max.mimic.paths import file_paths

        subject, study, dicom = meta["subject_id"], meta["study_id"], meta["dicom_id"]
        jpgs = file_paths(root.jpg_root, subject, study, ["/", dicom, ".jpg"]).to_pylist()
        problems = _file_problems(jpgs, "JPG files", progress, "verify" if verify_images else "exists")
        wanted = None if needed is None else set(pc.unique(needed).to_pylist())
        ids = dicom.to_pylist()
        by_kind: dict[str, list[str]] = {}
        partial: list[str] = []
        for i, (path, problem) in enumerate(problems):
            if problem is None:
                continue
            if problem == "missing image file" and wanted is not None and ids[i] not in wanted:
                partial.append(path)
            else:
                by_kind.setdefault(problem.split(" (")[0], []).append(path)
        report.counts["JPGs on disk"] = sum(1 for _, problem in problems if problem != "missing image file")
        if partial:
            report.add("info", "partial-copy", "images of the metadata absent on disk that no given trajectory needs",
                       len(partial), partial[:ex])
        names = {"missing image file": ("missing-image-files", "images listed in the metadata but absent on disk"
                                        + (" that the trajectories need" if wanted is not None else "")),
                 "empty image file": ("empty-image-files", "empty (0-byte) JPG files"),
                 "truncated JPEG": ("truncated-image-files", "JPGs without an end-of-image marker (a cut download)")}
        for kind, paths in by_kind.items():
            check, message = names.get(kind, ("corrupt-image-files", f"unreadable JPGs ({kind})"))
            report.add("error", check, message, len(paths), paths[:ex])
        if root.dicom_root is not None:
            dcms = file_paths(root.dicom_root, subject, study, ["/", dicom, ".dcm"]).to_pylist()
            missing = _missing_on_disk(dcms, "DICOM files", progress)
            if missing:
                report.add("error", "missing-dicom-files", "images listed in the metadata with no DICOM on disk", len(missing), missing[:ex])
        try:
            store = root.reports
        except DataError as e:
            report.add("error", "unreadable-reports", str(e), 1)
        else:
            if store is None:
                report.add("warning", "no-reports", "no reports found (no mimic-cxr-reports.zip, mimic-cxr-reports.tar.gz "
                           "or files/**/s*.txt): the mimic config's report columns will be null", 1,
                           [str(r) for r in (root.dicom_root, root.jpg_root) if r is not None][:1])
            else:
                report.add("info", "report-source", f"reports read from the {store.kind}", len(store) if store.kind != "tree" else 1,
                           [str(store.source)])
                keys = meta.select(["subject_id", "study_id"]).group_by(["subject_id", "study_id"]).aggregate([])
                pairs = zip(keys["subject_id"].to_pylist(), keys["study_id"].to_pylist())
                absent = [store.where(s, t) for s, t in pairs if not store.has(s, t)]
                if absent:
                    report.add("warning", "missing-reports", "studies with no report", len(absent), absent[:ex])
    elif check_files:
        report.add("info", "files-not-checked", "files on disk not checked: the metadata is missing or unreadable", 1)
    test_labels = root.table_path("test-labels", required=False)
    if test_labels is None:
        report.add("info", "no-radiologist-test-labels", "mimic-cxr-2.1.0-test-set-labeled.csv not found "
                   "(test_labels='radiologist' needs it; it ships with MIMIC-CXR-JPG 2.1.0)", 1)
    else:
        _read(root, "test-labels", report, False, ex)
    return report


def _all_null(table: pa.Table, names) -> pa.Array:
    mask = None
    for n in names:
        m = pc.is_null(table[n])
        mask = m if mask is None else pc.and_(mask, m)
    return mask

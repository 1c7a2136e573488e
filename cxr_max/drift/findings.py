"""Findings from trajectories: the ``[images x teachers x 14]`` claim tensor the compare stage works on.

Each trajectory's claims are read as the 14 CheXpert labels (positive / negative / uncertain / not
mentioned) plus the side of effusion, pneumothorax, consolidation and atelectasis. By default they
are re-extracted from the raw completion with the shared rule-based labeler
(``cxr_max.evaluation.label_reports_full``) so that real teachers work;
``source="stored"`` trusts the ``labels`` / ``laterality`` columns already in the records, and
``source="auto"`` re-extracts when the labeler is importable and falls back to the stored columns
otherwise.

Codes (numpy ``int8``):

- ``labels[i, t, k]``: ``NM`` (0, not mentioned), ``POS`` (1), ``NEG`` (2), ``UNC`` (3);
- ``state[i, t, k]`` (what a vote counts): ``ABSENT`` (0: negative or not mentioned), ``PRESENT`` (1),
  ``UNCERTAIN`` (2), or ``NO_VOTE`` (-1: teacher missing, failed, refused or nothing extractable);
- ``side[i, t, j]`` for the four lateral findings: 0 none, 1 left, 2 right, 3 bilateral.

Per-trajectory outcomes that are not votes (defined here, counted in ``Panel.flags``):

- a teacher with no record for an image (teachers present for only part of the stream): ``present``
  is False; it neither votes nor becomes a negative; coverage is reported per teacher;
- ``status == "failed"``: no vote, no negative;
- a refusal (the record's ``refusal`` flag or :func:`cxr_max.trajectories.parse.is_refusal` on the
  raw text): no vote; it stays a negative unless ``drop_refusals``;
- no extractable findings (all 14 labels not mentioned and not a refusal): no vote; stays a negative;
- contradictory laterality within one trajectory (the labeler reports a side conflict): the finding's
  presence still votes, its side is treated as unknown.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.errors import DataError, OnError, SkipLog, handle
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS
from cxr_max.trajectories.parse import is_refusal

logger = logging.getLogger("cxr_max.drift")

NM, POS, NEG, UNC = 0, 1, 2, 3
ABSENT, PRESENT, UNCERTAIN, NO_VOTE = 0, 1, 2, -1
SIDES: tuple[str | None, ...] = (None, "left", "right", "bilateral")
_SIDE_CODE = {None: 0, "left": 1, "right": 2, "bilateral": 3}
_VALUE_CODE = {None: NM, 1.0: POS, 0.0: NEG, -1.0: UNC}
LABEL_VALUES: tuple[float | None, ...] = (None, 1.0, 0.0, -1.0)  # code -> CheXpert value
LATERAL_INDEX = tuple(CHEXPERT_LABELS.index(f) for f in LATERAL_FINDINGS)

Source = Literal["text", "stored", "auto"]
# An extractor maps texts to (labels dict, laterality dict, set of findings with a side conflict).
Extraction = tuple[dict[str, Any], dict[str, Any], set[str]]
Extractor = Callable[[Sequence[str]], list[Extraction]]


@dataclasses.dataclass
class Panel:
    """Everything the compare stage knows about N teachers on M images, as aligned numpy arrays.

    Images are sorted by ``stream_pos`` (the stream order); teachers are sorted by name.
    """

    dicom_id: np.ndarray  # [I] str
    subject_id: np.ndarray  # [I] str
    study_id: np.ndarray  # [I] str
    prompt: np.ndarray  # [I] str (the first trajectory's prompt for the image)
    stream_pos: np.ndarray  # [I] float in [0, 1)
    teachers: list[str]
    present: np.ndarray  # [I, T] bool: an ok (non-failed) record exists
    refused: np.ndarray  # [I, T] bool
    empty: np.ndarray  # [I, T] bool: not refused, but nothing extractable
    labels: np.ndarray  # [I, T, 14] int8 codes NM/POS/NEG/UNC
    side: np.ndarray  # [I, T, 4] int8 side codes
    side_conflict: np.ndarray  # [I, T, 4] bool
    raw: np.ndarray  # [I, T] object (str or None)
    verbosity: np.ndarray  # [I, T] float: completion tokens, or words when tokens are missing; NaN if absent
    flags: SkipLog = dataclasses.field(default_factory=SkipLog)
    source: str = "stored"

    @property
    def usable(self) -> np.ndarray:
        """[I, T] bool: the trajectory votes (present, not refused, something extractable)."""
        return self.present & ~self.refused & ~self.empty

    @property
    def state(self) -> np.ndarray:
        """[I, T, 14] int8 vote states ABSENT / PRESENT / UNCERTAIN, NO_VOTE where not usable."""
        s = np.full(self.labels.shape, ABSENT, dtype=np.int8)
        s[self.labels == POS] = PRESENT
        s[self.labels == UNC] = UNCERTAIN
        s[~self.usable] = NO_VOTE
        return s

    @property
    def n_images(self) -> int:
        return len(self.dicom_id)

    def subset(self, keep: np.ndarray) -> "Panel":
        """The panel restricted to images where ``keep`` is True (same teachers)."""
        fields = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            fields[f.name] = v[keep] if isinstance(v, np.ndarray) else v
        return Panel(**fields)


# ---------------------------------------------------------------------------------------------
# label extraction


def _unpack(result: Any) -> Extraction:
    """Normalise one labeler result (a LabelResult-like object, a (labels, laterality) pair or a dict)."""
    if isinstance(result, tuple):
        labels, lat = result[0], result[1]
        conflict = result[2] if len(result) > 2 else set()
    elif isinstance(result, dict) and "labels" in result:
        labels, lat, conflict = result["labels"], result.get("laterality") or {}, result.get("laterality_conflict")
    elif isinstance(result, dict):
        labels, lat, conflict = result, {}, set()
    else:
        labels = result.labels
        lat = getattr(result, "laterality", None) or {}
        conflict = getattr(result, "laterality_conflict", None)
    return dict(labels or {}), dict(lat or {}), set(conflict or ())


def shared_extractor() -> Extractor | None:
    """The project's rule-based labeler as a batch function, or None when it is not importable."""
    try:
        from cxr_max import evaluation as ev
    except ImportError:
        return None
    batch = getattr(ev, "label_reports_full", None)
    single = getattr(ev, "label_report_full", None)
    if batch is not None:
        return lambda texts: [_unpack(r) for r in batch(list(texts))]
    if single is not None:
        return lambda texts: [_unpack(single(t)) for t in texts]
    return None


def _struct_codes(column: pa.ChunkedArray, names: Sequence[str], mapping: dict) -> np.ndarray:
    """A struct column (labels or laterality) -> [rows, len(names)] int8 codes; null struct -> code 0."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.zeros((len(arr), len(names)), dtype=np.int8)
    if len(arr) == 0:
        return out
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    for j, name in enumerate(names):
        field = pc.struct_field(arr, name)
        if pa.types.is_floating(field.type):
            vals = field.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
            col = np.full(len(vals), mapping[None], dtype=np.int8)
            for value, code in mapping.items():
                if value is not None:
                    col[vals == value] = code
            known = np.isnan(vals) | np.isin(vals, [v for v in mapping if v is not None])
            if not known.all():
                bad = int(np.flatnonzero(~known)[0])
                raise DataError(f"label {name!r} has value {vals[bad]!r} (must be 1, 0, -1 or null)", row=bad)
        else:
            vals = field.to_pylist()
            try:
                col = np.array([mapping[v] for v in vals], dtype=np.int8)
            except KeyError as e:
                raise DataError(f"{name!r} has unknown value {e.args[0]!r}") from None
        col[~valid] = mapping[None]
        out[:, j] = col
    return out


def _codes_from_dicts(extractions: Sequence[Extraction]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(extractions)
    labels = np.zeros((n, len(CHEXPERT_LABELS)), dtype=np.int8)
    side = np.zeros((n, len(LATERAL_FINDINGS)), dtype=np.int8)
    conflict = np.zeros((n, len(LATERAL_FINDINGS)), dtype=bool)
    for r, (lab, lat, conf) in enumerate(extractions):
        for k, name in enumerate(CHEXPERT_LABELS):
            v = lab.get(name)
            labels[r, k] = _VALUE_CODE[None if v is None else float(v)]
        for j, name in enumerate(LATERAL_FINDINGS):
            side[r, j] = _SIDE_CODE[lat.get(name)]
            conflict[r, j] = name in conf
    return labels, side, conflict


def extract_codes(texts: Sequence[str | None], extractor: Extractor, *, batch_size: int = 4096,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label codes ``[n, 14]``, side codes ``[n, 4]`` and side conflicts ``[n, 4]`` for ``texts``.

    Identical texts are labelled once (teachers repeat themselves a lot); work goes in batches.
    """
    uniq, inverse = np.unique(np.array([t or "" for t in texts], dtype=object), return_inverse=True)
    results: list[Extraction] = []
    batches = range(0, len(uniq), batch_size)
    if progress and len(uniq) > batch_size:
        from rich.progress import track

        batches = track(batches, description=f"extracting findings from {len(uniq):,} texts")
    for start in batches:
        results.extend(extractor(list(uniq[start : start + batch_size])))
    labels, side, conflict = _codes_from_dicts(results)
    return labels[inverse], side[inverse], conflict[inverse]


# ---------------------------------------------------------------------------------------------
# building the panel


def build_panel(
    table: pa.Table,
    stream_pos: pd.Series | None = None,
    *,
    source: Source = "auto",
    extractor: Extractor | None = None,
    task: str | None = None,
    sample: int = 0,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
    progress: bool = False,
) -> Panel:
    """Turn trajectory records into a :class:`Panel`.

    Args:
        table: canonical trajectory records (``cxr_max.trajectories.schema``), optionally with an extra
            ``stream_pos`` column.
        stream_pos: ``dicom_id -> position`` (from :func:`cxr_max.drift.io.stream_positions`); overrides
            a ``stream_pos`` column. One of the two is required.
        source: ``"text"`` re-extracts findings from ``raw``, ``"stored"`` trusts ``labels``/``laterality``,
            ``"auto"`` re-extracts when the shared labeler is importable.
        extractor: a batch labeler (texts -> list of (labels, laterality, conflicts)); default the shared one.
        task: which task's trajectories to compare; default the only task present (several -> error).
        sample: which sample index per (image, teacher, task) to use.
        on_error / skips: duplicate (image, teacher) records and images with no stream position are
            bad input: raised as :class:`DataError`, or counted in ``skips`` under "skip".
    """
    if stream_pos is None and "stream_pos" not in table.column_names:
        raise DataError("no stream order: pass stream positions (metadata) or add a stream_pos column")
    tasks = pc.unique(table["task"]).to_pylist()
    if task is None:
        if len(tasks) > 1:
            raise DataError(f"the trajectories hold several tasks {sorted(tasks)}; choose one with task=...")
        task = tasks[0] if tasks else "diagnose"
    mask = pc.and_(pc.equal(table["task"], task), pc.equal(table["sample"], sample))
    other = table.num_rows - pc.sum(mask.cast(pa.int64())).as_py()
    table = table.filter(mask)
    if other:
        logger.info("compare uses task=%r sample=%d; %d other record(s) not compared", task, sample, other)
    if table.num_rows == 0:
        raise DataError(f"no trajectories for task={task!r} sample={sample}")

    dicom = np.asarray(table["dicom_id"].to_numpy(zero_copy_only=False), dtype=object)
    teacher_col = np.asarray(table["teacher"].to_numpy(zero_copy_only=False), dtype=object)

    # duplicates of (image, teacher) are bad input
    key = pd.DataFrame({"d": dicom, "t": teacher_col})
    dup = key.duplicated(keep="first").to_numpy()
    keep_row = ~dup
    for r in np.flatnonzero(dup):
        handle(DataError(f"duplicate trajectory for image {dicom[r]} teacher {teacher_col[r]}", row=int(r)),
               on_error, skips)

    # stream order
    if stream_pos is not None:
        pos_row = pd.Series(stream_pos).reindex(dicom).to_numpy(dtype=np.float64)
    else:
        pos_row = table["stream_pos"].to_numpy(zero_copy_only=False).astype(np.float64)
    no_pos = np.isnan(pos_row) & keep_row
    if no_pos.any():
        seen: set[str] = set()
        for r in np.flatnonzero(no_pos):
            if dicom[r] not in seen:
                seen.add(dicom[r])
                handle(DataError(f"image {dicom[r]} has no stream position (not in the metadata)", row=int(r)),
                       on_error, skips)
        keep_row &= ~no_pos

    rows = np.flatnonzero(keep_row)
    img_codes, img_uniques = pd.factorize(dicom[rows], sort=False)
    pos_img = np.full(len(img_uniques), np.nan)
    pos_img[img_codes] = pos_row[rows]
    order = np.lexsort((np.asarray(img_uniques, dtype=str), pos_img))  # stream order, ties by dicom_id
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    img_idx = rank[img_codes]
    teachers = sorted(set(teacher_col[rows]))
    t_lookup = {t: j for j, t in enumerate(teachers)}
    t_idx = np.array([t_lookup[t] for t in teacher_col[rows]], dtype=np.int64)
    n_img, n_t = len(img_uniques), len(teachers)

    def col(name: str) -> np.ndarray:
        return np.asarray(table[name].take(pa.array(rows)).to_numpy(zero_copy_only=False), dtype=object)

    status = col("status")
    ok = np.array([s in (None, "ok") for s in status], dtype=bool)
    raw = col("raw")
    refusal_flag = np.array([bool(v) for v in col("refusal")], dtype=bool)
    refusal_text = np.array([is_refusal(t) if t else False for t in raw], dtype=bool)
    refused_row = (refusal_flag | refusal_text) & ok

    if source == "auto":
        extractor = extractor or shared_extractor()
        source = "text" if extractor is not None else "stored"
        if source == "stored":
            logger.warning("shared label extractor not importable; using the stored labels/laterality columns")
    if source == "text":
        extractor = extractor or shared_extractor()
        if extractor is None:
            raise DataError("source='text' needs cxr_max.evaluation.label_reports_full (not importable); use source='stored'")
        texts = [t if (o and not rf) else "" for t, o, rf in zip(raw, ok, refused_row)]
        lab_row, side_row, conf_row = extract_codes(texts, extractor, progress=progress)
    elif source == "stored":
        sub = table.take(pa.array(rows))
        lab_row = _struct_codes(sub["labels"], CHEXPERT_LABELS, _VALUE_CODE)
        side_row = _struct_codes(sub["laterality"], LATERAL_FINDINGS, _SIDE_CODE)
        conf_row = np.zeros_like(side_row, dtype=bool)
    else:
        raise ValueError(f"source must be 'text', 'stored' or 'auto', not {source!r}")
    lab_row[refused_row | ~ok] = NM
    side_row[refused_row | ~ok] = 0
    empty_row = ok & ~refused_row & (lab_row == NM).all(axis=1)

    tokens = col("completion_tokens")
    words = np.array([len(t.split()) if t else 0 for t in raw], dtype=np.float64)
    verb_row = np.array([float(v) if v is not None else np.nan for v in tokens], dtype=np.float64)
    verb_row = np.where(np.isnan(verb_row), words, verb_row)

    present = np.zeros((n_img, n_t), dtype=bool)
    refused = np.zeros((n_img, n_t), dtype=bool)
    empty = np.zeros((n_img, n_t), dtype=bool)
    labels = np.zeros((n_img, n_t, len(CHEXPERT_LABELS)), dtype=np.int8)
    side = np.zeros((n_img, n_t, len(LATERAL_FINDINGS)), dtype=np.int8)
    conflict = np.zeros((n_img, n_t, len(LATERAL_FINDINGS)), dtype=bool)
    raw_arr = np.full((n_img, n_t), None, dtype=object)
    verbosity = np.full((n_img, n_t), np.nan)
    present[img_idx, t_idx] = ok
    refused[img_idx, t_idx] = refused_row
    empty[img_idx, t_idx] = empty_row
    labels[img_idx, t_idx] = lab_row
    side[img_idx, t_idx] = side_row
    conflict[img_idx, t_idx] = conf_row & ok[:, None]
    raw_arr[img_idx, t_idx] = np.where(ok, raw, None)
    verbosity[img_idx, t_idx] = np.where(ok & ~refused_row, verb_row, np.nan)

    flags = SkipLog()
    for reason, m in (
        ("failed request (no vote, no negative)", ~ok),
        ("refusal (no vote)", refused_row),
        ("no extractable findings (no vote)", empty_row),
    ):
        idx = np.flatnonzero(m)
        for r in idx[: flags.max_examples]:
            flags.add(reason, f"{dicom[rows[r]]}/{teacher_col[rows[r]]}")
        if len(idx) > flags.max_examples:
            flags.counts[reason] += len(idx) - flags.max_examples
    n_conf = int(conflict.any(axis=2).sum())
    if n_conf:
        flags.counts["contradictory laterality in one trajectory (side treated as unknown)"] += n_conf

    first_row = np.full(n_img, -1)
    first_row[img_idx[::-1]] = rows[::-1]
    return Panel(
        dicom_id=np.asarray(img_uniques, dtype=object)[order],
        subject_id=np.asarray(table["subject_id"].to_numpy(zero_copy_only=False), dtype=object)[first_row],
        study_id=np.asarray(table["study_id"].to_numpy(zero_copy_only=False), dtype=object)[first_row],
        prompt=np.asarray(table["prompt"].to_numpy(zero_copy_only=False), dtype=object)[first_row],
        stream_pos=pos_img[order],
        teachers=teachers,
        present=present, refused=refused, empty=empty, labels=labels, side=side, side_conflict=conflict,
        raw=raw_arr, verbosity=verbosity, flags=flags, source=source,
    )

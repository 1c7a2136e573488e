"""The compare stage end to end: trajectories -> findings -> consensus -> reliability and drift -> apo rows.

:func:`compare` works on in-memory inputs and returns a :class:`CompareResult`;
:func:`run_compare` adds the reading (trajectory shards, metadata stream order) and the writing
(preferences file, drift report folder). ``recipes/compare.py`` and ``cxr-max drift-report`` call it.

Images that cannot get a consensus (fewer than ``min_usable`` usable trajectories, all teachers
refusing) are skipped and counted in ``CompareResult.skips``; they still count in the teachers'
refusal rates and coverage.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from cxr_max.drift import io as drift_io
from cxr_max.drift.consensus import Consensus, Method, dawid_skene_consensus, usable_images, vote_consensus
from cxr_max.drift.findings import Extractor, Panel, Source, build_panel
from cxr_max.drift.preferences import PositiveText, Weighting, build_preferences, write_preferences
from cxr_max.drift.reliability import (
    Detector, DriftPoint, detect_drift, drift_agreement, pairwise_agreement, refusal_signals, teacher_reliability,
    teacher_signals,
)
from cxr_max.drift.report import write_report
from cxr_max.errors import OnError, SkipLog

logger = logging.getLogger("cxr_max.drift")


@dataclasses.dataclass
class CompareResult:
    """Everything the compare stage produced."""

    panel: Panel  # all images (for rates and coverage)
    kept: np.ndarray  # [I] bool: images that got a consensus
    consensus: Consensus  # over panel.subset(kept)
    drift_points: list[DriftPoint]
    reliability: dict[str, Any]
    pairwise: np.ndarray  # [14, T, T]
    rows: list[dict[str, Any]]
    skips: SkipLog
    report: dict[str, Any]
    preferences_path: Path | None = None
    report_dir: Path | None = None


def compare(
    panel: Panel,
    *,
    consensus: Method = "vote",
    negative_weighting: Weighting = "uniform",
    positive_text: PositiveText = "closest-or-rendered",
    drop_refusals: bool = False,
    drop_agreeing: bool = False,
    min_usable: int = 2,
    detector: Detector = "adwin",
    detector_params: dict[str, Any] | None = None,
    n_windows: int = 10,
    model_consensus_kwargs: dict[str, Any] | None = None,
    skips: SkipLog | None = None,
    order: str = "study",
) -> CompareResult:
    """Run consensus, reliability, drift detection and preference building on a :class:`Panel`."""
    skips = skips if skips is not None else SkipLog()
    keep, reasons = usable_images(panel, min_usable=min_usable)
    for reason, mask in reasons.items():
        for i in np.flatnonzero(mask):
            skips.add(reason, str(panel.dicom_id[i]))
    sub = panel.subset(keep)
    if sub.n_images == 0:
        raise ValueError(f"no image has {min_usable} usable trajectories; nothing to compare ({skips.summary()})")
    if consensus == "vote":
        cons = vote_consensus(sub)
    elif consensus == "dawid_skene":
        cons = dawid_skene_consensus(sub)
    elif consensus == "model":
        from cxr_max.drift.model_consensus import model_consensus

        cons = model_consensus(sub, **(model_consensus_kwargs or {}))
    else:
        raise ValueError(f"consensus must be vote, dawid_skene or model, not {consensus!r}")

    # agreement signals over the images with a consensus; refusals over every image (skipped ones too)
    signals = {k: v for k, v in teacher_signals(sub, cons).items() if k[1] != "refusal"} | refusal_signals(panel)
    points = detect_drift(signals, detector=detector, params=detector_params)
    reliability = teacher_reliability(sub, cons, n_windows=n_windows)
    _full_panel_rates(panel, reliability)
    pairwise = pairwise_agreement(sub)
    seg = drift_agreement(sub, cons, points) if negative_weighting == "drift" else None
    rows = build_preferences(sub, cons, negative_weighting=negative_weighting, segment_agreement=seg,
                             positive_text=positive_text, drop_refusals=drop_refusals, drop_agreeing=drop_agreeing,
                             skips=skips)
    for name, info in reliability["teachers"].items():
        info["drift_points"] = [p.as_dict() for p in points if p.teacher == name]
    report = {
        "order": order,
        "detector": detector,
        "detector_params": detector_params or {},
        "extraction": panel.source,
        "window_edges": reliability["window_edges"],
        "consensus": {
            "method": cons.method,
            "n_images_total": int(panel.n_images),
            "n_images": int(sub.n_images),
            "n_skipped": int((~keep).sum()),
            "n_low_confidence": int(cons.low_confidence.sum()),
            "n_ties": int(cons.tie.any(axis=1).sum()),
            "mean_confidence": float(cons.confidence.mean()),
            "n_preference_rows": len(rows),
            "negative_weighting": negative_weighting,
            "positive_sources": pd.Series([r["consensus_source"] for r in rows], dtype=object).value_counts().to_dict(),
        },
        "teachers": reliability["teachers"],
        "skips": dict(skips.counts),
        "flags": dict(panel.flags.counts),
    }
    return CompareResult(panel=panel, kept=keep, consensus=cons, drift_points=points, reliability=reliability,
                         pairwise=pairwise, rows=rows, skips=skips, report=report)


def _full_panel_rates(panel: Panel, reliability: dict[str, Any]) -> None:
    """Overwrite coverage/refusal numbers with ones over every image (skipped images included)."""
    from cxr_max.drift.reliability import nan_to_none, safe_rate, window_edges, windowed_mean

    edges = window_edges(len(reliability["window_edges"]) - 1)
    for t, name in enumerate(panel.teachers):
        info = reliability["teachers"][name]
        present = panel.present[:, t]
        n = int(present.sum())
        info["n_present"] = n
        info["coverage"] = float(n / max(panel.n_images, 1))
        info["first_stream_pos"] = float(panel.stream_pos[present].min()) if n else None
        info["last_stream_pos"] = float(panel.stream_pos[present].max()) if n else None
        info["refusal_rate"] = nan_to_none(safe_rate(panel.refused[:, t].sum(), n))
        info["no_findings_rate"] = nan_to_none(safe_rate(panel.empty[:, t].sum(), n))
        win, _ = windowed_mean(panel.stream_pos[present], panel.refused[present, t].astype(float), edges)
        info["window_refusal_rate"] = [nan_to_none(x) for x in win]


def run_compare(
    trajectories: str | Path | pa.Table,
    *,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    report_dir: str | Path | None = None,
    order: Literal["study", "collected", "column"] = "study",
    source: Source = "auto",
    extractor: Extractor | None = None,
    task: str | None = None,
    fmt: Literal["jsonl", "parquet"] = "jsonl",
    on_error: OnError = "raise",
    plots: bool = True,
    progress: bool = True,
    **compare_kwargs: Any,
) -> CompareResult:
    """Read, compare and write.

    Args:
        trajectories: a folder/file of canonical trajectory shards, or a pyarrow Table.
        data_dir: MIMIC-CXR-JPG root (or a root holding ``mimic-cxr-jpg/``) whose metadata table orders
            the stream by study date and time (``order="study"``).
        out: folder for ``preferences.jsonl`` (or ``.parquet``); None writes no preferences.
        report_dir: folder for the drift report; None writes no report.
        order: ``"study"`` (metadata StudyDate/StudyTime), ``"collected"`` (first ``collected_at`` per
            image) or ``"column"`` (a ``stream_pos`` column in the table).
        source / extractor / task: see :func:`cxr_max.drift.findings.build_panel`.
        compare_kwargs: passed to :func:`compare` (consensus, negative_weighting, drop_refusals, ...).
    """
    skips = SkipLog()
    if isinstance(trajectories, pa.Table):
        table = trajectories
    else:
        table = drift_io.read_trajectories(trajectories, on_error=on_error, skips=skips)
    if order == "study":
        if data_dir is None:
            raise ValueError("order='study' needs data_dir (the MIMIC-CXR-JPG root with the metadata table)")
        pos = drift_io.stream_positions(data_dir)
    elif order == "collected":
        pos = drift_io.collected_positions(table)
    elif order == "column":
        pos = None
    else:
        raise ValueError(f"order must be study, collected or column, not {order!r}")
    panel = build_panel(table, pos, source=source, extractor=extractor, task=task, on_error=on_error, skips=skips,
                        progress=progress)
    mk = dict(compare_kwargs.pop("model_consensus_kwargs", None) or {})
    if compare_kwargs.get("consensus") == "model":
        mk.setdefault("data_dir", data_dir)
        mk.setdefault("extractor", extractor)
        mk.setdefault("progress", progress)
    result = compare(panel, skips=skips, order=order, model_consensus_kwargs=mk, **compare_kwargs)
    if out is not None:
        result.preferences_path = write_preferences(result.rows, out, fmt=fmt)
    if report_dir is not None:
        result.report_dir = write_report(result.report, result.pairwise, report_dir, plots=plots)
    if skips.total:
        logger.warning(skips.summary())
    return result

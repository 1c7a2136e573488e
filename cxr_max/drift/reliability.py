"""Teacher reliability and drift over the stream.

Reliability (per teacher, and per teacher x finding), all measured against the consensus:
agreement, false-positive rate P(teacher PRESENT | consensus ABSENT), false-negative rate
P(teacher ABSENT | consensus PRESENT), uncertain rate, side agreement on lateral findings both hold
present with a side, left/right swap rate (over the pairs where both name a single side), refusal rate, rate of trajectories with nothing extractable, verbosity
(completion tokens, or words when the record has no token count), and coverage of the stream.

Drift detection runs an established detector from ``river`` (ADWIN by default; KSWIN and
Page-Hinkley too) over each teacher's signals in stream order:

- ``overall``: the per-image agreement with the consensus on the informative findings
  (:func:`cxr_max.drift.consensus.informative_agreement_with`);
- one signal per finding: 1/0 agreement on the *informative* images only, where the teacher or the
  consensus holds the finding present or uncertain (agreement on images where both say absent would
  swamp the signal);
- ``laterality``: side agreement where both hold a lateral finding present with a known side;
- ``refusal``: 1 when the teacher refused the image (over the images it answered at all).

A drift point records where the detector fired (``detected_at``) and where the change most likely
began (``change_at``): the least-squares single change point of the signal between the previous
change point and the detection (:func:`locate_change`), since detectors fire with a delay.
Positions are stream positions in ``[0, 1)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from cxr_max.drift.consensus import Consensus
from cxr_max.drift.findings import ABSENT, LATERAL_INDEX, PRESENT, UNCERTAIN, Panel
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS

Detector = Literal["adwin", "kswin", "page_hinkley"]
AGREEMENT_SIGNALS = ("overall",) + CHEXPERT_LABELS  # the signals whose drift points segment a teacher's stream


@dataclasses.dataclass(frozen=True)
class DriftPoint:
    """One detection on one teacher's signal."""

    teacher: str
    signal: str  # "overall", a CheXpert label, "laterality" or "refusal"
    detected_at: float  # stream position where the detector fired
    change_at: float  # estimated start of the change (stream position)
    before: float  # mean of the signal over the stretch before change_at (since the previous point)
    after: float  # mean of the signal from change_at to the next point

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _detector(name: Detector, params: dict[str, Any]):
    from river import drift

    if name == "adwin":
        return drift.ADWIN(**params)
    if name == "kswin":
        return drift.KSWIN(**({"seed": 0} | params))
    if name == "page_hinkley":
        return drift.PageHinkley(**params)
    raise ValueError(f"detector must be 'adwin', 'kswin' or 'page_hinkley', not {name!r}")


def teacher_signals(panel: Panel, cons: Consensus) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """``(teacher, signal) -> (stream positions, values)`` in stream order (see the module docstring)."""
    votes = panel.state
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    pos = panel.stream_pos
    lat = list(LATERAL_INDEX)
    for t, name in enumerate(panel.teachers):
        usable = panel.usable[:, t]
        out[(name, "overall")] = (pos[usable], cons.informative_agreement[usable, t])
        for k, finding in enumerate(CHEXPERT_LABELS):
            informative = usable & ((votes[:, t, k] != ABSENT) | (cons.state[:, k] != ABSENT))
            out[(name, finding)] = (pos[informative], (votes[informative, t, k] == cons.state[informative, k]).astype(float))
        sided = usable[:, None] & (votes[:, t, lat] == PRESENT) & (cons.state[:, lat] == PRESENT) \
            & (panel.side[:, t] > 0) & (cons.side > 0) & ~panel.side_conflict[:, t]
        rows, cols = np.nonzero(sided)
        same = (panel.side[rows, t, cols] == cons.side[rows, cols]).astype(float)
        out[(name, "laterality")] = (pos[rows], same)
    return out | refusal_signals(panel)


def refusal_signals(panel: Panel) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """``(teacher, "refusal") -> (stream positions, 1.0 if refused)`` over the images each teacher answered."""
    out = {}
    for t, name in enumerate(panel.teachers):
        answered = panel.present[:, t]
        out[(name, "refusal")] = (panel.stream_pos[answered], panel.refused[answered, t].astype(float))
    return out


def detect_drift(signals: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], *, detector: Detector = "adwin",
                 params: dict[str, Any] | None = None, min_points: int = 30) -> list[DriftPoint]:
    """Run one fresh detector per signal; signals shorter than ``min_points`` are not tested."""
    points: list[DriftPoint] = []
    params = dict(params or {})
    for (teacher, signal), (pos, values) in signals.items():
        if len(values) < min_points:
            continue
        det = _detector(detector, params)
        cuts: list[tuple[int, int]] = []  # (detected index, change index)
        for i, x in enumerate(values.tolist()):
            det.update(x)
            if det.drift_detected:
                start = cuts[-1][1] if cuts else 0
                cuts.append((i, locate_change(values, start, i + 1)))
        bounds = [0] + [c for _, c in cuts] + [len(values)]
        for j, (i, c) in enumerate(cuts):
            before = values[bounds[j] : c]
            after = values[c : bounds[j + 2]]
            points.append(DriftPoint(
                teacher=teacher, signal=signal, detected_at=float(pos[i]), change_at=float(pos[c]),
                before=float(before.mean()) if len(before) else float("nan"),
                after=float(after.mean()) if len(after) else float("nan"),
            ))
    return points


def locate_change(values: np.ndarray, lo: int, hi: int) -> int:
    """Where in ``values[lo:hi]`` a single change in mean most likely happened.

    The split ``k`` maximising ``n1 * n2 / n * (mean1 - mean2) ** 2`` (the between-segment sum of
    squares, the least-squares single change point); returns an absolute index in ``(lo, hi)``.
    """
    x = np.asarray(values[lo:hi], dtype=float)
    n = len(x)
    if n < 2:
        return lo
    c = np.cumsum(x)
    k = np.arange(1, n)
    m1 = c[:-1] / k
    m2 = (c[-1] - c[:-1]) / (n - k)
    score = k * (n - k) / n * (m1 - m2) ** 2
    return lo + int(np.argmax(score)) + 1


def window_edges(n_windows: int) -> np.ndarray:
    """Equal-width stream windows over [0, 1]."""
    return np.linspace(0.0, 1.0, n_windows + 1)


def windowed_mean(pos: np.ndarray, values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and count of ``values`` in each window (NaN mean for an empty window)."""
    w = np.clip(np.searchsorted(edges, pos, side="right") - 1, 0, len(edges) - 2)
    n = np.bincount(w, minlength=len(edges) - 1)
    s = np.bincount(w, weights=values, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan), n


def _segment_means(pos: np.ndarray, values: np.ndarray, ok: np.ndarray, cuts: list[float]) -> np.ndarray:
    """[I]: the mean of ``values[ok]`` over the segment (between sorted ``cuts``) holding each position;
    the mean over every ``ok`` position for a segment without one (NaN when nothing is ``ok``)."""
    seg = np.searchsorted(np.asarray(cuts, dtype=float), pos, side="right")
    overall = float(values[ok].mean()) if ok.any() else np.nan
    n = np.bincount(seg[ok], minlength=len(cuts) + 1)
    s = np.bincount(seg[ok], weights=values[ok], minlength=len(cuts) + 1)
    return np.where(n > 0, s / np.maximum(n, 1), overall)[seg]


def segment_agreement(panel: Panel, cons: Consensus, points: list[DriftPoint]) -> np.ndarray:
    """[I, T]: each teacher's mean informative agreement over the stretch of its stream (between its own
    detected change points on agreement signals) that holds the image; its overall mean when it has none."""
    out = np.full(cons.agreement.shape, np.nan)
    for t, name in enumerate(panel.teachers):
        cuts = sorted({p.change_at for p in points if p.teacher == name and p.signal in AGREEMENT_SIGNALS})
        a = cons.informative_agreement[:, t]
        out[:, t] = _segment_means(panel.stream_pos, np.nan_to_num(a), ~np.isnan(a), cuts)
    return out


def finding_segment_agreement(panel: Panel, cons: Consensus, points: list[DriftPoint]) -> np.ndarray:
    """[I, T, 14]: per finding, each teacher's mean agreement on that finding's signal (1/0 on the images
    where it or the consensus holds the finding present or uncertain, as in :func:`teacher_signals`) over
    the stretch of its stream, between its own detected change points on *that* signal, that holds the
    image; its mean over the whole stream when the signal has no change point (NaN with no informative image)."""
    votes = panel.state
    n_k = len(CHEXPERT_LABELS)
    out = np.full(votes.shape[:2] + (n_k,), np.nan)
    informative = panel.usable[:, :, None] & ((votes != ABSENT) | (cons.state[:, None, :] != ABSENT))
    same = (votes == cons.state[:, None, :]).astype(float)
    for t, name in enumerate(panel.teachers):
        for k, finding in enumerate(CHEXPERT_LABELS):
            cuts = sorted({p.change_at for p in points if p.teacher == name and p.signal == finding})
            out[:, t, k] = _segment_means(panel.stream_pos, same[:, t, k], informative[:, t, k], cuts)
    return out


def drift_agreement(panel: Panel, cons: Consensus, points: list[DriftPoint]) -> np.ndarray:
    """[I, T]: the agreement behind the ``drift`` negative weights (:mod:`cxr_max.drift.preferences`).

    ``a[i, t] = segment_agreement[i, t] * min_k (f[i, t, k] / max_i' f[i', t, k])`` over the findings k
    on which teacher t disagrees with the consensus on image i, ``f`` being
    :func:`finding_segment_agreement`: the teacher's usual agreement in this stretch of its stream,
    scaled down by how far it has fallen, on the findings it gets wrong here, below its own best stretch
    on them. A drift on one finding (a change point on that finding's signal) so lowers the agreement,
    and raises the weight, on exactly the images where the teacher makes that error after the change;
    a finding without a change point has factor 1. A teacher that agrees on every finding, or does not
    vote (a refusal, nothing extractable), keeps :func:`segment_agreement`.
    """
    base = segment_agreement(panel, cons, points)
    per_finding = finding_segment_agreement(panel, cons, points)
    best = np.where(np.isnan(per_finding), -np.inf, per_finding).max(axis=0)  # [T, 14], -inf: no data
    with np.errstate(invalid="ignore", divide="ignore"):
        drop = np.where(best > 0, per_finding / best, 1.0)
    wrong = panel.usable[:, :, None] & (panel.state != cons.state[:, None, :]) & ~np.isnan(per_finding)
    factor = np.where(wrong, drop, np.inf).min(axis=2)
    return np.where(np.isfinite(factor), base * factor, base)


def safe_rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` element-wise, NaN where ``den`` is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def pairwise_agreement(panel: Panel) -> np.ndarray:
    """[14, T, T]: share of images where both teachers vote and say the same state (NaN without overlap)."""
    votes = panel.state
    usable = panel.usable
    n_t = len(panel.teachers)
    out = np.full((len(CHEXPERT_LABELS), n_t, n_t), np.nan)
    for a in range(n_t):
        for b in range(a, n_t):
            both = usable[:, a] & usable[:, b]
            if both.any():
                same = (votes[both, a] == votes[both, b]).mean(axis=0)
                out[:, a, b] = out[:, b, a] = same
    return out


def teacher_reliability(panel: Panel, cons: Consensus, *, n_windows: int = 10) -> dict[str, Any]:
    """Every per-teacher number (JSON-ready): coverage, refusals, verbosity, agreement, confusion rates,
    laterality, and agreement per stream window."""
    votes = panel.state
    edges = window_edges(n_windows)
    signals = teacher_signals(panel, cons)
    lat = list(LATERAL_INDEX)
    result: dict[str, Any] = {"window_edges": edges.tolist(), "teachers": {}}
    for t, name in enumerate(panel.teachers):
        present = panel.present[:, t]
        usable = panel.usable[:, t]
        n_present = int(present.sum())
        v = votes[usable, t]
        c = cons.state[usable]
        per_finding = {}
        for k, finding in enumerate(CHEXPERT_LABELS):
            cp, ca = c[:, k] == PRESENT, c[:, k] == ABSENT
            pos_w, val_w = signals[(name, finding)]
            win, nwin = windowed_mean(pos_w, val_w, edges)
            per_finding[finding] = {
                "agreement": float((v[:, k] == c[:, k]).mean()) if len(v) else None,
                "informative_agreement": float(val_w.mean()) if len(val_w) else None,
                "false_positive_rate": nan_to_none(safe_rate(((v[:, k] == PRESENT) & ca).sum(), ca.sum())),
                "false_negative_rate": nan_to_none(safe_rate(((v[:, k] == ABSENT) & cp).sum(), cp.sum())),
                "uncertain_rate": float((v[:, k] == UNCERTAIN).mean()) if len(v) else None,
                "positive_rate": float((v[:, k] == PRESENT).mean()) if len(v) else None,
                "window_agreement": [nan_to_none(x) for x in win],
                "window_n": nwin.tolist(),
            }
            if cons.confusion is not None:
                per_finding[finding]["dawid_skene_confusion"] = [[nan_to_none(x) for x in row] for row in cons.confusion[k, t]]
        # laterality: where both hold a lateral finding present with known sides
        sided = usable[:, None] & (votes[:, t, lat] == PRESENT) & (cons.state[:, lat] == PRESENT) \
            & (panel.side[:, t] > 0) & (cons.side > 0) & ~panel.side_conflict[:, t]
        ts, cs = panel.side[:, t][sided], cons.side[sided]
        swap = ((ts == 1) & (cs == 2)) | ((ts == 2) & (cs == 1))
        per_side = {}
        for j, finding in enumerate(LATERAL_FINDINGS):
            m = sided[:, j]
            tj, cj = panel.side[m, t, j], cons.side[m, j]
            sw = ((tj == 1) & (cj == 2)) | ((tj == 2) & (cj == 1))
            per_side[finding] = {"n": int(m.sum()), "agreement": nan_to_none(safe_rate((tj == cj).sum(), m.sum())),
                                 "swap_rate": nan_to_none(safe_rate(sw.sum(), ((tj < 3) & (cj < 3)).sum()))}
        pos_o, val_o = signals[(name, "overall")]
        win_o, n_o = windowed_mean(pos_o, val_o, edges)
        pos_r, val_r = signals[(name, "refusal")]
        win_r, _ = windowed_mean(pos_r, val_r, edges)
        verb = panel.verbosity[:, t]
        verb = verb[~np.isnan(verb)]
        result["teachers"][name] = {
            "n_present": n_present,
            "coverage": float(n_present / max(panel.n_images, 1)),
            "first_stream_pos": nan_to_none(panel.stream_pos[present].min()) if n_present else None,
            "last_stream_pos": nan_to_none(panel.stream_pos[present].max()) if n_present else None,
            "refusal_rate": nan_to_none(safe_rate(panel.refused[:, t].sum(), n_present)),
            "no_findings_rate": nan_to_none(safe_rate(panel.empty[:, t].sum(), n_present)),
            "side_conflict_rate": nan_to_none(safe_rate(panel.side_conflict[:, t].any(axis=1).sum(), n_present)),
            "verbosity_mean": float(verb.mean()) if len(verb) else None,
            "verbosity_median": float(np.median(verb)) if len(verb) else None,
            "agreement": float(np.nanmean(cons.agreement[:, t])) if usable.any() else None,
            "informative_agreement": float(np.nanmean(cons.informative_agreement[:, t])) if usable.any() else None,
            "laterality_n": int(sided.sum()),
            "laterality_agreement": nan_to_none(safe_rate((ts == cs).sum(), sided.sum())),
            "laterality_swap_rate": nan_to_none(safe_rate(swap.sum(), ((ts < 3) & (cs < 3)).sum())),
            "laterality": per_side,
            "window_agreement": [nan_to_none(x) for x in win_o],
            "window_n": n_o.tolist(),
            "window_refusal_rate": [nan_to_none(x) for x in win_r],
            "findings": per_finding,
        }
    return result


def nan_to_none(x) -> float | None:
    """``float(x)``, or None for NaN (the JSON reports' missing value)."""
    x = float(x)
    return None if np.isnan(x) else x

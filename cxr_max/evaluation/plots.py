"""PNG charts for evaluation results: per-finding bars with intervals, and one-number-per-model charts.

Every function takes ``{"value", "ci_low", "ci_high"}`` dicts (what :mod:`cxr_max.evaluation.runner`
produces) and writes one PNG. Figures are made with matplotlib's object API (:func:`figure`), never pyplot, so
library code never switches the caller's backend (a notebook keeps its own) and holds no global figure state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxr_max.evaluation.predict import TABLE_FINDINGS

Interval = Mapping[str, float]


def figure(nrows: int = 1, ncols: int = 1, **kwargs):
    """``(fig, axes)`` like ``pyplot.subplots`` but from :class:`matplotlib.figure.Figure` directly: no backend
    is selected or switched and nothing needs closing (``fig.savefig`` renders with Agg on its own)."""
    from matplotlib.figure import Figure

    fig_kw = {k: kwargs.pop(k) for k in ("figsize", "dpi") if k in kwargs}
    fig = Figure(**fig_kw)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _err(cs: Sequence[Interval]) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([c["value"] for c in cs], dtype=float)
    lo = np.array([c.get("ci_low", c["value"]) for c in cs], dtype=float)
    hi = np.array([c.get("ci_high", c["value"]) for c in cs], dtype=float)
    return v, np.nan_to_num(np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]))


def _finish(fig, ax, path: str | Path, *, title: str, ylabel: str, xlabel: str | None = None) -> Path:
    """The common tail: y range [0, 1.05] (shares), labels, title, tight layout, PNG at 110 dpi, figure closed."""
    ax.set_ylim(0, 1.05)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_finding_bars(rows: Mapping[str, Mapping[str, Interval]], path: str | Path, *,
                      findings: Sequence[str] = TABLE_FINDINGS, title: str = "Presence accuracy per finding",
                      ylabel: str = "accuracy") -> Path:
    """Grouped bars: one group per finding (plus Avg), one bar per model, 95 % intervals as error bars."""
    cols = list(findings) + ["Avg"]
    names = list(rows)
    width = 0.8 / max(1, len(names))
    fig, ax = figure(figsize=(min(16.0, 3.0 + 1.5 * len(cols)), 4.8))
    x = np.arange(len(cols))
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors
    for k, name in enumerate(names):
        v, err = _err([rows[name][c] for c in cols])
        student = name.startswith("student")
        ax.bar(x + (k - (len(names) - 1) / 2) * width, v, width, yerr=err, capsize=1.5, label=name,
               color=colors[k % len(colors)], hatch="//" if student else None, edgecolor="black" if student else None,
               linewidth=0.4, error_kw={"elinewidth": 0.7})
    ax.set_xticks(x, cols, rotation=20, ha="right")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, ax, path, title=title, ylabel=ylabel)


def plot_model_bars(values: Mapping[str, Interval], path: str | Path, *, title: str, ylabel: str,
                    reference: float | None = None, reference_label: str | None = None) -> Path:
    """One bar per model with its interval; an optional horizontal reference line (e.g. best teacher)."""
    names = list(values)
    v, err = _err([values[n] for n in names])
    fig, ax = figure(figsize=(max(6, 0.9 * len(names) + 2), 4.2))
    ax.bar(np.arange(len(names)), v, yerr=err, capsize=3, color="tab:blue")
    if reference is not None:
        ax.axhline(reference, color="tab:red", ls="--", label=reference_label)
        ax.legend(fontsize=8)
    ax.set_xticks(np.arange(len(names)), names, rotation=25, ha="right", fontsize=8)
    return _finish(fig, ax, path, title=title, ylabel=ylabel)


def plot_curves(x: Sequence[float], series: Mapping[str, Sequence[Interval]], path: str | Path, *, title: str,
                xlabel: str, ylabel: str, xticklabels: Sequence[str] | None = None) -> Path:
    """Lines with interval bands: ``series[name][i]`` is the value at ``x[i]``."""
    fig, ax = figure(figsize=(6.5, 4.2))
    xs = np.asarray(x, dtype=float)
    for name, cs in series.items():
        v, err = _err(cs)
        ax.errorbar(xs, v, yerr=err, marker="o", capsize=3, label=name)
    if xticklabels is not None:
        ax.set_xticks(xs, xticklabels, fontsize=8)
    ax.legend(fontsize=8)
    return _finish(fig, ax, path, title=title, ylabel=ylabel, xlabel=xlabel)


def plot_paired_bars(left: Mapping[str, Interval], right: Mapping[str, Interval], path: str | Path, *, title: str,
                     labels: tuple[str, str], ylabel: str = "accuracy") -> Path:
    """Two bars per model (e.g. in-domain vs shifted test), with intervals."""
    names = [n for n in left if n in right]
    x = np.arange(len(names))
    fig, ax = figure(figsize=(max(6, 1.1 * len(names) + 2), 4.2))
    for k, (src, lab) in enumerate(((left, labels[0]), (right, labels[1]))):
        v, err = _err([src[n] for n in names])
        ax.bar(x + (k - 0.5) * 0.38, v, 0.38, yerr=err, capsize=3, label=lab)
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    return _finish(fig, ax, path, title=title, ylabel=ylabel)

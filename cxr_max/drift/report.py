"""The drift report: PNG plots, a JSON of every number, a short markdown summary and a rich table.

Files written to the report folder:

- ``report.json``: every number (teachers' reliability, windows, drift points, pairwise agreement,
  consensus summary, skip counts);
- ``summary.md``: a short human summary;
- ``agreement_matrix.png``: teacher x teacher agreement, one panel per finding;
- ``agreement_over_stream.png``: each teacher's agreement with the consensus per stream window, with
  its detected change points marked;
- ``refusal_verbosity.png``: refusal rate and verbosity per teacher.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cxr_max.labels import CHEXPERT_LABELS


def _plots(report: dict[str, Any], pairwise: np.ndarray, out: Path) -> list[str]:
    from cxr_max.evaluation.plots import figure

    teachers = list(report["teachers"])
    short = [t.replace("sim-", "") for t in teachers]
    n_t = len(teachers)
    written = []

    fig, axes = figure(3, 5, figsize=(20, 12.5))
    for k, ax in enumerate(axes.flat):
        if k >= len(CHEXPERT_LABELS):
            ax.axis("off")
            continue
        im = ax.imshow(pairwise[k], vmin=0.5, vmax=1.0, cmap="viridis")
        ax.set_title(CHEXPERT_LABELS[k], fontsize=10)
        ax.set_xticks(range(n_t), short, rotation=90, fontsize=7)
        ax.set_yticks(range(n_t), short, fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="share of images with the same call")
    fig.suptitle("Teacher x teacher agreement per finding")
    fig.savefig(out / "agreement_matrix.png", dpi=80)
    written.append("agreement_matrix.png")

    edges = np.asarray(report["window_edges"])
    mids = (edges[:-1] + edges[1:]) / 2
    cols = 2
    rows = math.ceil(n_t / cols)
    fig, axes = figure(rows, cols, figsize=(12, 2.6 * rows), squeeze=False, sharex=True)
    for ax, name in zip(axes.flat, teachers):
        info = report["teachers"][name]
        y = np.array([np.nan if v is None else v for v in info["window_agreement"]], dtype=float)
        ax.plot(mids, y, marker="o", label="overall agreement")
        for finding, fi in info["findings"].items():
            fy = np.array([np.nan if v is None else v for v in fi["window_agreement"]], dtype=float)
            if any(p["signal"] == finding for p in info["drift_points"]):
                ax.plot(mids, fy, marker=".", linestyle="--", label=f"{finding} (informative)")
        for p in info["drift_points"]:
            if p["signal"] in ("refusal",):
                continue
            ax.axvline(p["change_at"], color="red", alpha=0.6, linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=6, loc="lower left")
    for ax in list(axes.flat)[n_t:]:
        ax.axis("off")
    fig.supxlabel("stream position (study date order); red lines: detected change points")
    fig.supylabel("agreement with consensus")
    fig.tight_layout()
    fig.savefig(out / "agreement_over_stream.png", dpi=80)
    written.append("agreement_over_stream.png")

    fig, (a1, a2) = figure(1, 2, figsize=(12, 4))
    a1.bar(short, [report["teachers"][t]["refusal_rate"] or 0.0 for t in teachers], color="tab:red")
    a1.set_title("refusal rate")
    a2.bar(short, [report["teachers"][t]["verbosity_mean"] or 0.0 for t in teachers], color="tab:blue")
    a2.set_title("verbosity (mean completion tokens or words)")
    for ax in (a1, a2):
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "refusal_verbosity.png", dpi=80)
    written.append("refusal_verbosity.png")
    return written


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.0f}"


def summary_markdown(report: dict[str, Any]) -> str:
    """A short markdown summary of a drift report dict."""
    c = report["consensus"]
    lines = [
        "# Drift report",
        "",
        f"{c['n_images_total']} images, {len(report['teachers'])} teachers; consensus `{c['method']}` on "
        f"{c['n_images']} images ({c['n_low_confidence']} low-confidence, {c['n_skipped']} skipped); "
        f"stream order: {report['order']}; detector: {report['detector']}.",
        "",
        "| teacher | coverage | agreement | refusal | laterality swap | verbosity | largest drift points: signal@change (agreement before->after) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in report["teachers"].items():
        pts = ", ".join(_point_text(p) for p in _largest(t["drift_points"], 4))
        if len(t["drift_points"]) > 4:
            pts += f", +{len(t['drift_points']) - 4} more"
        lines.append(f"| {name} | {_fmt(t['coverage'])} | {_fmt(t['agreement'])} | {_fmt(t['refusal_rate'])} | "
                     f"{_fmt(t['laterality_swap_rate'])} | {_fmt(t['verbosity_mean'], pct=False)} | {pts or '-'} |")
    if report["skips"]:
        lines += ["", "Skipped images: " + "; ".join(f"{n} {r}" for r, n in report["skips"].items()) + "."]
    if report["flags"]:
        lines += ["", "Trajectory notes: " + "; ".join(f"{n} {r}" for r, n in report["flags"].items()) + "."]
    lines += ["", "Plots: agreement_matrix.png, agreement_over_stream.png, refusal_verbosity.png; numbers: report.json.", ""]
    return "\n".join(lines)


def _largest(points: list[dict], n: int) -> list[dict]:
    """The n drift points with the largest change in mean, in stream order."""
    big = sorted(points, key=lambda p: -abs((p["before"] or 0.0) - (p["after"] or 0.0)))[:n]
    return sorted(big, key=lambda p: p["change_at"])


def _point_text(p: dict) -> str:
    return f"{p['signal']}@{p['change_at']:.2f} ({p['before']:.2f}->{p['after']:.2f})"


def print_table(report: dict[str, Any], console=None) -> None:
    """Print the per-teacher summary as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"Teachers vs consensus ({report['consensus']['method']})")
    for col in ("teacher", "coverage", "agreement", "refusal", "lat. swap", "verbosity", "drift points"):
        table.add_column(col, justify="left" if col in ("teacher", "drift points") else "right",
                         no_wrap=col == "teacher")
    for name, t in report["teachers"].items():
        pts = ", ".join(_point_text(p) for p in _largest(t["drift_points"], 2))
        if len(t["drift_points"]) > 2:
            pts += f" (+{len(t['drift_points']) - 2})"
        table.add_row(name, _fmt(t["coverage"]), _fmt(t["agreement"]), _fmt(t["refusal_rate"]),
                      _fmt(t["laterality_swap_rate"]), _fmt(t["verbosity_mean"], pct=False), pts or "-")
    console.print(table)


def write_report(report: dict[str, Any], pairwise: np.ndarray, out_dir: str | Path, *, plots: bool = True) -> Path:
    """Write report.json, summary.md and (unless ``plots=False``) the PNG plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(report)
    report["pairwise_agreement"] = {
        finding: [[None if np.isnan(x) else float(x) for x in row] for row in pairwise[k]]
        for k, finding in enumerate(CHEXPERT_LABELS)
    }
    report["files"] = _plots(report, pairwise, out) if plots else []
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (out / "summary.md").write_text(summary_markdown(report))
    return out

"""``cxr-max drift-report``: how the teachers agree, refuse, talk and drift over the stream."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def drift_report(
    trajectories: Optional[Path] = typer.Option(None, help="Trajectory folder/file (default: the synthetic teachers')."),
    data_dir: Optional[Path] = typer.Option(None, help="MIMIC-CXR-JPG root with the metadata table (default: synthetic)."),
    out: Path = typer.Option(Path("drift_report"), help="Report folder (PNG plots, report.json, summary.md)."),
    consensus: str = typer.Option("vote", help="vote | dawid_skene | model"),
    model: Optional[Path] = typer.Option(None, help="Student model folder for --consensus model."),
    detector: str = typer.Option("adwin", help="adwin | kswin | page_hinkley (river)."),
    delta: Optional[float] = typer.Option(None, help="ADWIN delta / Page-Hinkley delta (detector default if unset)."),
    order: str = typer.Option("study", help="Stream order: study (StudyDate/StudyTime) | collected (collected_at)."),
    labels: str = typer.Option("auto", help="Findings: text (re-extract from raw) | stored (trust labels) | auto."),
    task: Optional[str] = typer.Option(None, help="Which task's trajectories (default: the only one present)."),
    windows: int = typer.Option(10, help="Stream windows for per-window reliability."),
    preferences: Optional[Path] = typer.Option(None, help="Also write the apo preference rows to this folder."),
    negative_weighting: str = typer.Option("uniform", help="uniform | reliability | drift (for --preferences)."),
    on_error: str = typer.Option("raise", help="raise | skip (bad records)."),
) -> None:
    """Write a drift report folder and print a per-teacher table."""
    from rich.console import Console

    from cxr_max.drift.compare import run_compare
    from cxr_max.drift.report import print_table

    console = Console()
    if trajectories is None or (data_dir is None and order == "study"):
        from cxr_max.synthetic import ensure_synthetic

        root = Path(ensure_synthetic())
        trajectories = trajectories or root / "trajectories"
        data_dir = data_dir or root / "mimic-cxr-jpg"
    params = {}
    if delta is not None:
        if detector not in ("adwin", "page_hinkley"):
            raise typer.BadParameter("--delta applies to adwin and page_hinkley")
        params["delta"] = delta
    mk = {}
    if consensus == "model":
        if model is None:
            raise typer.BadParameter("--consensus model needs --model (a student model folder)")
        mk["model"] = str(model)
    result = run_compare(
        trajectories, data_dir=data_dir, out=preferences, report_dir=out, order=order, source=labels, task=task,
        on_error=on_error, consensus=consensus, negative_weighting=negative_weighting, detector=detector,
        detector_params=params, n_windows=windows, model_consensus_kwargs=mk,
    )
    print_table(result.report, console)
    console.print(result.skips.summary())
    console.print(f"report: {result.report_dir}" + (f"; preferences: {result.preferences_path}" if preferences else ""))


def register(app: typer.Typer) -> None:
    """Add ``drift-report`` to the ``cxr-max`` app."""
    app.command("drift-report")(drift_report)

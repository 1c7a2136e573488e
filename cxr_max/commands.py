"""Foundation commands of ``cxr-max``: ``synth``, ``validate``, ``info``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def validate(
    data_dir: Optional[Path] = typer.Argument(None, help="MIMIC-CXR-JPG root (default: the embedded synthetic one)."),
    dicom_dir: Optional[Path] = typer.Option(None, help="MIMIC-CXR (DICOM/reports) root."),
    trajectories: Optional[Path] = typer.Option(None, help="Trajectory file or folder to check against the metadata."),
) -> None:
    """Check a MIMIC root and a trajectory folder; print what is missing, duplicated or malformed."""
    import pyarrow.compute as pc

    from cxr_max.errors import SkipLog
    from cxr_max.mimic import MimicRoot
    from cxr_max.trajectories.io import read_trajectories

    if data_dir is None:
        from cxr_max.synthetic import ensure_synthetic

        root = Path(ensure_synthetic())
        data_dir, dicom_dir = root / "mimic-cxr-jpg", dicom_dir or root / "mimic-cxr"
        trajectories = trajectories or root / "trajectories"
    mimic = MimicRoot(data_dir, dicom_dir)
    report = mimic.validate()
    console.print(report)
    problems = not getattr(report, "ok", True)
    if trajectories is not None:
        skips = SkipLog()
        with console.status("reading trajectories"):
            table = read_trajectories(trajectories, on_error="skip", skips=skips, include_failed=True)
            ids = mimic.images().column("dicom_id")
            unknown = pc.sum(pc.invert(pc.is_in(table.column("dicom_id"), ids))).as_py() or 0
        console.print(f"[bold]trajectories[/bold] {trajectories}: {table.num_rows} records kept")
        if unknown:
            console.print(f"  [red]{unknown} record(s) reference a dicom_id absent from the metadata[/red]")
        console.print("  " + skips.summary().replace("\n", "\n  "))
        bad = {k: v for k, v in skips.counts.items() if "superseded" not in k and "status=failed" not in k}
        problems = problems or bool(unknown) or bool(bad)
    raise typer.Exit(1 if problems else 0)


def info(
    config: list[str] = typer.Option(["mimic", "trajectories"], "--config", "-c", help="Configs to count."),
    data_dir: Optional[Path] = typer.Option(None, help="MIMIC-CXR-JPG root (default: synthetic)."),
    trajectories: Optional[Path] = typer.Option(None),
    preferences: Optional[Path] = typer.Option(None),
) -> None:
    """Counts per config, split and teacher."""
    import collections

    from cxr_max.builder import load_dataset

    kw = {"images": "path"}
    if trajectories:
        kw["trajectories"] = str(trajectories)
    if preferences:
        kw["preferences"] = str(preferences)
    for name in config:
        ds = load_dataset(name, data_dir=data_dir, **kw)
        table = Table(title=f"cxr_max / {name}")
        table.add_column("split")
        table.add_column("rows", justify="right")
        has_teacher = "teacher" in next(iter(ds.values())).column_names
        if has_teacher:
            table.add_column("per teacher")
        for split, d in ds.items():
            row = [split, str(d.num_rows)]
            if has_teacher:
                c = collections.Counter(d["teacher"])
                row.append(", ".join(f"{t}={n}" for t, n in sorted(c.items())))
            table.add_row(*row)
        console.print(table)


def register(app: typer.Typer) -> None:
    from cxr_max.commands_synth import synth

    app.command("synth")(synth)
    app.command("validate")(validate)
    app.command("info")(info)

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
    adapter: Optional[str] = typer.Option(None, help="Read the trajectories through an adapter (ms_swift, sharegpt, ...)."),
    verify_images: bool = typer.Option(False, "--verify-images", help="Check every JPG's end-of-image marker (slow)."),
) -> None:
    """Check a MIMIC root and a trajectory folder; each problem with a count and an example path.

    With --trajectories, images the trajectories need but the copy lacks are errors; other absent images
    are a partial copy (a note), since most users hold only the images they use.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from cxr_max.errors import SkipLog
    from cxr_max.mimic import MimicRoot
    from cxr_max.mimic.validate import ValidationReport
    from cxr_max.trajectories.io import list_trajectory_files, read_trajectories

    if data_dir is None:
        from cxr_max.synthetic import ensure_synthetic

        root = Path(ensure_synthetic())
        data_dir, dicom_dir = root / "mimic-cxr-jpg", dicom_dir or root / "mimic-cxr"
        trajectories = trajectories or root / "trajectories"
    mimic = MimicRoot(data_dir, dicom_dir)
    table = None
    skips = SkipLog(max_examples=3)
    if trajectories is not None:
        with console.status("reading trajectories"):
            table = read_trajectories(trajectories, adapter=adapter, on_error="skip", skips=skips, include_failed=True,
                                      keep_bookkeeping=True)
    needed = table.column("dicom_id").combine_chunks() if table is not None else None
    report = mimic.validate(verify_images=verify_images, needed=needed)
    if table is not None:
        _trajectory_issues(report, mimic, table, skips, Path(trajectories), bool(adapter), list_trajectory_files, pa, pc)
    console.print(report)
    raise typer.Exit(0 if report.ok else 1)


def _trajectory_issues(report, mimic, table, skips, source: Path, foreign: bool, list_files, pa, pc) -> None:
    """Add the trajectory folder's problems to ``report`` (counts, examples as file:row)."""
    report.counts["trajectory records"] = table.num_rows
    try:
        ids = mimic.images().column("dicom_id")
    except Exception:  # noqa: BLE001 - the metadata problem is already in the report
        ids = None
    if ids is not None:
        unknown = table.filter(pc.invert(pc.is_in(table.column("dicom_id"), ids)))
        if unknown.num_rows:
            where = [f"{f}:{r}" for f, r in zip(unknown.column("_file")[:5].to_pylist(), unknown.column("_row")[:5].to_pylist())]
            report.add("error", "trajectory-unknown-ids", "trajectory records whose dicom_id is not in the metadata",
                       unknown.num_rows, where)
    for reason, n in skips.counts.most_common():
        if "superseded" in reason or "status=failed" in reason:
            report.add("info", "trajectory-failed-requests", reason, n, skips.examples.get(reason, []))
        else:
            report.add("error", "trajectory-bad-records", reason, n, skips.examples.get(reason, []))
    if source.is_dir() and not foreign:
        json_files = [p for p in sorted(source.rglob("*.json")) if p.is_file()]
        if json_files:
            report.add("warning", "trajectory-json-not-read", "JSON files not read as trajectories (JSON-array files "
                       "like SPD.json need --adapter ms_swift)", len(json_files), [str(p) for p in json_files[:3]])


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

"""``cxr-max export`` and ``cxr-max push``: Hub artifacts from the command line.

Errors (bad folder, bad repo id, missing or expired token, refused sensitive push, failed commit)
print one clear line and exit with status 1, without a traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cxr_max.errors import DataError

err_console = Console(stderr=True)
console = Console()


def _clean_errors(fn):
    """Turn DataError / PushError into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cxr_max.hub.push import PushError

        try:
            return fn(*args, **kwargs)
        except (DataError, PushError) as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def run_export(
    configs: list[str],
    out: Path,
    *,
    data_dir: Optional[Path] = None,
    trajectories: Optional[str] = None,
    source: Optional[str] = None,
    include_pixels: bool = False,
    include_reports: bool = False,
    shard_rows: int = 20_000,
    overwrite: bool = False,
    on_error: str = "raise",
    dicom_dir: Optional[Path] = None,
):
    """Load each config with :func:`cxr_max.load_dataset` and export them to ``out``.

    Without ``data_dir`` the builder uses the embedded synthetic MIMIC-CXR and the export is
    ``source="synthetic"``; with a PhysioNet ``data_dir`` it is ``"mimic"`` (safe defaults).
    """
    import cxr_max
    from cxr_max.hub.export import export_dataset

    source = source or ("mimic" if data_dir else "synthetic")
    if source == "synthetic" and data_dir:
        raise DataError("a PhysioNet data_dir is MIMIC-CXR data; it cannot be exported as source='synthetic'",
                        path=data_dir)
    pixels = include_pixels or source == "synthetic"
    kwargs = {"images": "decode" if pixels else "path"}
    if data_dir:
        kwargs["data_dir"] = str(data_dir)
    if dicom_dir:
        kwargs["dicom_dir"] = str(dicom_dir)
    if data_dir and "mimic" in configs:
        from cxr_max.mimic.reports import find_report_source

        if find_report_source(dicom_dir, data_dir) is None:
            import logging

            logging.getLogger("cxr_max").warning(
                "export of 'mimic' from %s: no reports found%s; the report, findings and impression columns are null",
                data_dir, " in --dicom-dir" if dicom_dir else " (pass --dicom-dir <MIMIC-CXR root>, which holds them)")
    if trajectories:
        kwargs["trajectories"] = trajectories
    loaded = {name: cxr_max.load_dataset(name, **kwargs) for name in configs}
    return export_dataset(loaded, out, source=source, include_pixels=include_pixels if source == "mimic" else None,
                          include_reports=include_reports if source == "mimic" else None,
                          shard_rows=shard_rows, overwrite=overwrite, on_error=on_error)


def register(app: typer.Typer) -> None:
    """Add ``export`` and ``push`` to the ``cxr-max`` command."""

    @app.command("export")
    @_clean_errors
    def export_cmd(
        config: list[str] = typer.Option(..., "--config", "-c", help="Builder config(s) to export (repeatable)."),
        out: Path = typer.Option(..., "--out", "-o", help="Export folder to write."),
        data_dir: Optional[Path] = typer.Option(None, help="Local PhysioNet MIMIC-CXR(-JPG) root; omit for synthetic."),
        trajectories: Optional[str] = typer.Option(None, help="Trajectory files or folder for the builder."),
        source: Optional[str] = typer.Option(None, help="mimic | synthetic (default: mimic with --data-dir)."),
        include_pixels: bool = typer.Option(False, "--include-pixels", help="Keep image pixels (MIMIC: private/gated only)."),
        include_reports: bool = typer.Option(False, "--include-reports", help="Keep report text (MIMIC: private/gated only)."),
        shard_rows: int = typer.Option(20_000, help="Target rows per parquet shard."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in --out."),
        on_error: str = typer.Option("raise", help="raise | skip rows that fail the safety check."),
        dicom_dir: Optional[Path] = typer.Option(None, help="Local MIMIC-CXR (DICOM) root: reports and .dcm paths."),
    ) -> None:
        """Export builder configs to parquet shards + a dataset card, safe for credentialed data by default."""
        result = run_export(config, out, data_dir=data_dir, trajectories=trajectories, source=source,
                            include_pixels=include_pixels, include_reports=include_reports, shard_rows=shard_rows,
                            overwrite=overwrite, on_error=on_error, dicom_dir=dicom_dir)
        m = result.manifest
        console.print(f"exported {', '.join(m['configs'])} to {result.out_dir} "
                      f"(source={m['source']}, pixels={m['include_pixels']}, reports={m['include_reports']})")
        for name, cols in m["dropped_columns"].items():
            console.print(f"  dropped from {name}: {', '.join(cols)}")
        console.print(result.skips.summary())

    @app.command("push")
    @_clean_errors
    def push_cmd(
        folder: Path = typer.Argument(..., help="An export folder (cxr-max export) or a checkpoint folder."),
        repo_id: str = typer.Argument(..., help="Hub repo id, 'namespace/name' or 'name'."),
        public: bool = typer.Option(False, "--public", help="Make the repo public (default: private)."),
        gated: Optional[str] = typer.Option(None, help="Gate access: auto | manual."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List the files and the card; send nothing."),
        message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message."),
        base_model: Optional[str] = typer.Option(None, help="Checkpoint: base model Hub id (default: from its config)."),
        dataset: list[str] = typer.Option([], "--dataset", help="Checkpoint: training dataset Hub id(s)."),
        stages: Optional[Path] = typer.Option(None, help="Checkpoint: training stages JSON."),
        metrics: Optional[Path] = typer.Option(None, help="Checkpoint: metrics JSON for the evaluation table."),
        endpoint: Optional[str] = typer.Option(None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)."),
    ) -> None:
        """Push an export or a checkpoint in one commit: private by default; the token comes from HF_TOKEN / hf auth login."""
        from cxr_max.hub.export import MANIFEST
        from cxr_max.hub.push import push_checkpoint, push_dataset

        common = {"private": not public, "gated": gated, "dry_run": dry_run, "commit_message": message,
                  "endpoint": endpoint}
        if (folder / MANIFEST).is_file() or not ((folder / "config.json").is_file()
                                                 or (folder / "adapter_config.json").is_file()):
            plan = push_dataset(folder, repo_id, **common)
        else:
            plan = push_checkpoint(folder, repo_id, base_model=base_model, datasets=dataset or None, stages=stages,
                                   metrics=metrics, **common)
        if dry_run:
            plan.print(console)
            console.print("[bold]dry run:[/] nothing was sent")
        else:
            console.print(f"pushed {len(plan.files)} file(s) to {plan.repo_type} repo {plan.repo_id} in one commit: "
                          f"{plan.commit_url}")

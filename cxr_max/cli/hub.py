"""``cxr-max export`` and ``cxr-max push``: Hub artifacts from the command line.

A bad folder, a bad repo id, a missing or expired token, a refused sensitive push or a failed commit is one
line on stderr and exit status 1 (the handler of :mod:`cxr_max.cli.main`).
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cxr_max.cli.data import CONFIG_NAMES
from cxr_max.cli.options import many, opt, positional


def run_export(
    configs: list[str],
    out: Path,
    *,
    data_dir: Path | None = None,
    trajectories: str | None = None,
    source: str | None = None,
    include_pixels: bool = False,
    include_reports: bool = False,
    shard_rows: int = 20_000,
    overwrite: bool = False,
    on_error: str = "raise",
    dicom_dir: Path | None = None,
):
    """Load each config with :func:`cxr_max.load_dataset` and export them to ``out``.

    Without ``data_dir`` the builder uses the embedded synthetic MIMIC-CXR and the export is
    ``source="synthetic"``; with a PhysioNet ``data_dir`` it is ``"mimic"`` (safe defaults).
    """
    import cxr_max
    from cxr_max.errors import DataError
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


@dataclass
class ExportArguments:
    """Export builder configs to parquet shards + a dataset card, safe for credentialed data by default."""

    out: Path = opt(help="Export folder to write.", aliases=["-o"])
    dataset_config: list[str] = many(CONFIG_NAMES, "Builder config(s) to export (repeatable; default: all).",
                                     choices=CONFIG_NAMES, aliases=["-c"])
    data_dir: Path | None = opt(None, "Local PhysioNet MIMIC-CXR(-JPG) root; omit for synthetic.")
    trajectories: str | None = opt(None, "Trajectory files or folder for the builder.")
    source: Literal["mimic", "synthetic"] | None = opt(None, "Default: mimic with --data_dir, else synthetic.")
    include_pixels: bool = opt(False, "Keep image pixels (MIMIC: private/gated only).")
    include_reports: bool = opt(False, "Keep report text (MIMIC: private/gated only).")
    shard_rows: int = opt(20_000, "Target rows per parquet shard.")
    overwrite: bool = opt(False, "Replace an earlier export in --out.")
    on_error: Literal["raise", "skip"] = opt("raise", "raise, or skip rows that fail the safety check.")
    dicom_dir: Path | None = opt(None, "Local MIMIC-CXR (DICOM) root: reports and .dcm paths.")


def make_export_parser(subparsers):
    return subparsers.add_parser("export", help="Export builder configs to parquet shards + a dataset card.",
                                 description=ExportArguments.__doc__, dataclass_types=[ExportArguments])


def export(args: ExportArguments) -> int:
    from rich.console import Console

    console = Console()
    t0 = time.perf_counter()
    result = run_export(args.dataset_config, args.out, data_dir=args.data_dir, trajectories=args.trajectories,
                        source=args.source, include_pixels=args.include_pixels, include_reports=args.include_reports,
                        shard_rows=args.shard_rows, overwrite=args.overwrite, on_error=args.on_error,
                        dicom_dir=args.dicom_dir)
    m = result.manifest
    console.print(f"exported {', '.join(m['configs'])} to {result.out_dir} "
                  f"(source={m['source']}, pixels={m['include_pixels']}, reports={m['include_reports']}) "
                  f"in {time.perf_counter() - t0:.1f} s")
    for name, cols in m["dropped_columns"].items():
        console.print(f"  dropped from {name}: {', '.join(cols)}")
    console.print(result.skips.summary())
    return 0


@dataclass
class PushArguments:
    """Push an export or a checkpoint in one commit: private by default; the token comes from HF_TOKEN / hf auth login.

    FOLDER is a `cxr-max export` folder or a checkpoint folder; REPO_ID is 'namespace/name' or 'name'.
    """

    folder: Path | None = opt(None, "An export folder (cxr-max export) or a checkpoint folder; also positional.")
    repo_id: str | None = opt(None, "Hub repo id, 'namespace/name' or 'name'; also positional.")
    public: bool = opt(False, "Make the repo public (it is private otherwise).")
    gated: Literal["auto", "manual"] | None = opt(None, "Gate access.")
    dry_run: bool = opt(False, "List the files and the card; send nothing.")
    message: str | None = opt(None, "Commit message.", aliases=["-m"])
    base_model: str | None = opt(None, "Checkpoint: base model Hub id (default: from its config).")
    dataset: list[str] = many((), "Checkpoint: training dataset Hub id(s) (repeatable).")
    stages: Path | None = opt(None, "Checkpoint: training stages JSON.")
    metrics: Path | None = opt(None, "Checkpoint: metrics JSON for the evaluation table.")
    endpoint: str | None = opt(None, "Hub endpoint (default: HF_ENDPOINT or huggingface.co).")

    def __post_init__(self) -> None:
        if self.folder is None or self.repo_id is None:
            raise ValueError("push needs FOLDER and REPO_ID")


def make_push_parser(subparsers):
    parser = subparsers.add_parser("push", help="Push an export or a checkpoint to the Hub in one commit.",
                                   description=PushArguments.__doc__, dataclass_types=[PushArguments])
    positional(parser, ("folder", Path), ("repo_id", str))
    return parser


def push(args: PushArguments) -> int:
    from rich.console import Console

    from cxr_max.hub.export import MANIFEST
    from cxr_max.hub.push import push_checkpoint, push_dataset

    console = Console()
    folder = Path(args.folder)
    common = {"private": not args.public, "gated": args.gated, "dry_run": args.dry_run,
              "commit_message": args.message, "endpoint": args.endpoint}
    if (folder / MANIFEST).is_file() or not ((folder / "config.json").is_file()
                                             or (folder / "adapter_config.json").is_file()):
        plan = push_dataset(folder, args.repo_id, **common)
    else:
        plan = push_checkpoint(folder, args.repo_id, base_model=args.base_model, datasets=args.dataset or None,
                               stages=args.stages, metrics=args.metrics, **common)
    if args.dry_run:
        plan.print(console)
        console.print("[bold]dry run:[/] nothing was sent")
    else:
        console.print(f"pushed {len(plan.files)} file(s) to {plan.repo_type} repo {plan.repo_id} in one commit: "
                      f"{plan.commit_url}")
    return 0

"""``cxr-max drift-report``: how the teachers agree, refuse, talk and drift over the stream."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cxr_max.cli.options import opt


@dataclass
class DriftReportArguments:
    """Write a drift report folder and print a per-teacher table."""

    trajectories: Path | None = opt(None, "Trajectory folder/file (default: the synthetic teachers').")
    data_dir: Path | None = opt(None, "MIMIC-CXR-JPG root with the metadata table (default: synthetic).")
    out: Path = opt(Path("drift_report"), "Report folder (PNG plots, report.json, summary.md).")
    consensus: Literal["vote", "dawid_skene", "model"] = opt("vote", "How the consensus positive is formed.")
    model: Path | None = opt(None, "Student model folder for --consensus model.")
    detector: Literal["adwin", "kswin", "page_hinkley"] = opt("adwin", "Drift detector (river).")
    delta: float | None = opt(None, "ADWIN delta / Page-Hinkley delta (detector default if unset).")
    order: Literal["study", "collected"] = opt("study", "Stream order: study (StudyDate/StudyTime) or collected "
                                                        "(collected_at).")
    labels: Literal["text", "stored", "auto"] = opt("auto", "Findings: text (re-extract from raw), stored (trust "
                                                            "labels) or auto.")
    task: Literal["diagnose", "explain", "report"] | None = opt(None, "Which task's trajectories (default: the "
                                                                      "only one present).")
    windows: int = opt(10, "Stream windows for per-window reliability.")
    preferences: Path | None = opt(None, "Also write the apo preference rows to this folder.")
    negative_weighting: Literal["uniform", "reliability", "drift"] = opt("uniform", "Negative weights (for "
                                                                                    "--preferences).")
    on_error: Literal["raise", "skip"] = opt("raise", "raise on a bad record, or skip and count it.")

    def __post_init__(self) -> None:
        if self.delta is not None and self.detector not in ("adwin", "page_hinkley"):
            raise ValueError("--delta applies to adwin and page_hinkley")
        if self.consensus == "model" and self.model is None:
            raise ValueError("--consensus model needs --model (a student model folder)")


def make_drift_report_parser(subparsers):
    return subparsers.add_parser("drift-report", help="Write a drift report folder and a per-teacher table.",
                                 description=DriftReportArguments.__doc__, dataclass_types=[DriftReportArguments])


def drift_report(args: DriftReportArguments) -> int:
    from rich.console import Console

    from cxr_max.drift.compare import run_compare
    from cxr_max.drift.report import print_table

    console = Console()
    from cxr_max.sources import resolve_source

    src = resolve_source(args.data_dir, args.trajectories, stage="drift-report",
                         needs=("trajectories", "images") if args.order == "study" else ("trajectories",))
    trajectories, data_dir = src.trajectories, src.data_dir
    params = {"delta": args.delta} if args.delta is not None else {}
    model_kwargs = {"model": str(args.model)} if args.consensus == "model" else {}
    result = run_compare(
        trajectories, data_dir=data_dir, out=args.preferences, report_dir=args.out, order=args.order,
        source=args.labels, task=args.task, on_error=args.on_error, consensus=args.consensus,
        negative_weighting=args.negative_weighting, detector=args.detector, detector_params=params,
        n_windows=args.windows, model_consensus_kwargs=model_kwargs,
    )
    print_table(result.report, console)
    console.print(result.skips.summary())
    console.print(f"report: {result.report_dir}"
                  + (f"; preferences: {result.preferences_path}" if args.preferences else ""))
    return 0

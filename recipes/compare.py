"""Compare stage: N teachers' trajectories -> one consensus positive + N weighted negatives per image.

    python recipes/compare.py --consensus vote --negative-weighting drift \
        --trajectories <folder> --data_dir <mimic-cxr-jpg root> --out <folder>

With no --trajectories/--data_dir it runs on the embedded synthetic world. Writes
``<out>/preferences.jsonl`` (the builder's ``apo`` config reads it) and ``<out>/drift_report/``.
``main(...)`` is callable in-process (recipes/apo.py does).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def main(
    trajectories: str | Path | None = None,
    data_dir: str | Path | None = None,
    out: str | Path = "outputs/compare",
    consensus: str = "vote",
    negative_weighting: str = "uniform",
    labels: str = "auto",
    order: str = "study",
    detector: str = "adwin",
    drop_refusals: bool = False,
    drop_agreeing: bool = False,
    model: str | Path | None = None,
    report: bool = True,
    fmt: str = "jsonl",
    **model_kwargs: Any,
) -> Path:
    """Run the compare stage; return the preferences file path."""
    from cxr_max.drift.compare import run_compare
    from cxr_max.drift.report import print_table

    if trajectories is None or (data_dir is None and order == "study"):
        from cxr_max.synthetic import ensure_synthetic

        root = Path(ensure_synthetic())
        trajectories = trajectories or root / "trajectories"
        data_dir = data_dir or root / "mimic-cxr-jpg"
    out = Path(out)
    mk = dict(model_kwargs)
    if consensus == "model":
        if model is None:
            raise SystemExit("--consensus model needs --model (the learn-stage student folder)")
        mk["model"] = str(model)
    result = run_compare(
        trajectories, data_dir=data_dir, out=out, report_dir=out / "drift_report" if report else None, order=order,
        source=labels, fmt=fmt, consensus=consensus, negative_weighting=negative_weighting, detector=detector,
        drop_refusals=drop_refusals, drop_agreeing=drop_agreeing, model_consensus_kwargs=mk,
    )
    print_table(result.report)
    print(result.skips.summary())
    print(f"wrote {len(result.rows)} preference rows to {result.preferences_path}")
    return result.preferences_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", default=None, help="trajectory folder or file (default: synthetic)")
    p.add_argument("--data_dir", "--data-dir", default=None, help="MIMIC-CXR-JPG root with the metadata table")
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--consensus", choices=("vote", "dawid_skene", "model"), default="vote")
    p.add_argument("--negative-weighting", "--negative_weighting", dest="negative_weighting",
                   choices=("uniform", "reliability", "drift"), default="uniform")
    p.add_argument("--labels", choices=("auto", "text", "stored"), default="auto",
                   help="re-extract findings from the text, or trust the stored labels")
    p.add_argument("--order", choices=("study", "collected"), default="study")
    p.add_argument("--detector", choices=("adwin", "kswin", "page_hinkley"), default="adwin")
    p.add_argument("--drop-refusals", "--drop_refusals", dest="drop_refusals", action="store_true")
    p.add_argument("--drop-agreeing", "--drop_agreeing", dest="drop_agreeing", action="store_true")
    p.add_argument("--model", default=None, help="student model folder for --consensus model")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None)
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=None)
    p.add_argument("--no-report", dest="report", action="store_false")
    p.add_argument("--format", dest="fmt", choices=("jsonl", "parquet"), default="jsonl")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = vars(parse_args())
    extra = {k: args.pop(k) for k in ("batch_size", "max_new_tokens") if args[k] is not None}
    for k in ("batch_size", "max_new_tokens"):
        args.pop(k, None)
    main(**args, **extra)

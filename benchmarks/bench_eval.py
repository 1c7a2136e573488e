"""Speed of report_metrics and label_report over 10,000 report pairs (target: under 30 s together).

Report pairs are built from real IU-Xray report text when the torchxrayvision wheel is in
~/.cache/cxr_max/wheels (see bench_labeler.py: predictions are other reports, shuffled with a seeded
RNG), else from the synthetic world's reports. METEOR (Java) is not part of the timed figure; it is
timed separately on 1,000 pairs when Java is present. Also measured: agreement of the pure-Python
tokeniser with the Java PTB tokeniser on the reference texts (when Java is present).
Writes benchmarks/results/eval.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from rich.console import Console

from cxr_max.evaluation import label_reports
from cxr_max.evaluation.nlg_metrics import report_metrics
from cxr_max.evaluation.tokenize import java_available, ptb_tokenize, simple_tokenize

sys.path.insert(0, str(Path(__file__).parent))
console = Console()
RESULTS = Path(__file__).parent / "results" / "eval.json"


def _texts() -> tuple[list[str], str]:
    from bench_labeler import WHEEL, read_iu_xray

    wheel_dir = Path.home() / ".cache" / "cxr_max" / "wheels"
    if (wheel_dir / WHEEL).exists():
        return [r["text"] for r in read_iu_xray(wheel_dir) if r["text"].strip()], "iu_xray"
    from cxr_max.synthetic import ensure_synthetic

    root = ensure_synthetic(n_patients=200, pixels="none", teachers=False)
    return [p.read_text() for p in sorted((root / "mimic-cxr" / "files").rglob("*.txt"))], "synthetic"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    texts, source = _texts()
    rng = random.Random(args.seed)
    refs = [rng.choice(texts) for _ in range(args.n)]
    preds = [rng.choice(texts) for _ in range(args.n)]
    n_tokens = sum(len(simple_tokenize(t)) for t in refs) / args.n

    t0 = time.perf_counter()
    metrics = report_metrics(preds, refs, meteor=False)
    t_metrics = time.perf_counter() - t0
    t0 = time.perf_counter()
    label_reports(preds + refs, progress=True)
    t_labels = time.perf_counter() - t0
    total = t_metrics + t_labels
    out = {
        "source": source, "pairs": args.n, "mean_reference_tokens": n_tokens,
        "report_metrics_seconds": t_metrics, "label_report_seconds_for_2n_texts": t_labels,
        "total_seconds": total, "target_seconds": 30.0, "met_target": total < 30.0,
        "metrics": {k: v for k, v in metrics.items() if k != "per_pair"},
    }
    if java_available():
        sample = refs[:1000]
        ptb = ptb_tokenize(sample)
        out["tokenizer_agreement_with_java_ptb"] = sum(simple_tokenize(t) == p for t, p in zip(sample, ptb)) / len(sample)
        t0 = time.perf_counter()
        m = report_metrics(preds[:1000], refs[:1000], meteor=True)
        out["meteor_1000_pairs"] = {"meteor": m["meteor"], "seconds_including_java_start": time.perf_counter() - t0}
    else:
        out["meteor_1000_pairs"] = {"skipped": "java not found"}
    console.print(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    console.print(f"report_metrics {t_metrics:.1f}s + label_report {t_labels:.1f}s = {total:.1f}s "
                  f"(target < 30 s: {'met' if total < 30 else 'MISSED'}); wrote {args.out}")


if __name__ == "__main__":
    main()

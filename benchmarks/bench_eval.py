"""Speed of report_metrics and label_report over 10,000 report pairs (target: under 30 s together).

Report pairs are built from real IU-Xray report text when the torchxrayvision wheel is in
~/.cache/cxr_max/wheels (see bench_labeler.py: predictions are other reports, shuffled with a seeded
RNG), else from the synthetic world's reports. METEOR (Java) is not part of the timed figure; it is
timed separately on 1,000 pairs when Java is present. Also measured: agreement of the pure-Python
tokeniser with the Java PTB tokeniser on the reference texts (when Java is present).

Before/after, side by side in one run: the implementation of git commit ``--baseline`` (default
191c67c, before the speed-up) is loaded from git and timed on the same inputs, and its outputs are
checked to be identical (``"before_after"`` in the JSON; skipped when git or the commit is missing,
or with ``--no-baseline``). Also timed there: the labeler per distinct text (cold clause cache and
warm) on the distinct IU-Xray reports and on simulated teacher completions.
Writes benchmarks/results/eval.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
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


REPO = Path(__file__).resolve().parent.parent


def _baseline_module(commit: str, relpath: str, name: str):
    """Import ``relpath`` as it was at git ``commit`` (None when git or the commit is unavailable)."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:{relpath}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="cxr_max_baseline_")) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def _teacher_texts() -> list[str]:
    from cxr_max.synthetic import ensure_synthetic

    root = ensure_synthetic(n_patients=100, pixels="none", teachers=True)
    return [json.loads(line).get("raw") or "" for f in sorted((root / "trajectories").rglob("*.jsonl"))
            for line in f.open()]


def _per_text_ms(fn, texts: list[str]) -> float:
    t0 = time.perf_counter()
    for t in texts:
        fn(t)
    return (time.perf_counter() - t0) / len(texts) * 1e3


def _before_after(commit: str, preds: list[str], refs: list[str], texts: list[str],
                  new_metrics: dict, new_labels: list, t_metrics: float, t_labels: float) -> dict:
    """Time the baseline commit's report_metrics and label_reports on the same inputs; check equality."""
    old_nlg = _baseline_module(commit, "cxr_max/evaluation/nlg_metrics.py", "_baseline_nlg_metrics")
    old_lab = _baseline_module(commit, "cxr_max/evaluation/labeler.py", "_baseline_labeler")
    if old_nlg is None or old_lab is None:
        return {"skipped": f"git or commit {commit} not available"}
    from cxr_max.evaluation import labeler as new_lab

    t0 = time.perf_counter()
    old_metrics = old_nlg.report_metrics(preds, refs, meteor=False)
    t_old_metrics = time.perf_counter() - t0
    t0 = time.perf_counter()
    old_labels = old_lab.label_reports(preds + refs, progress=True)
    t_old_labels = time.perf_counter() - t0
    out = {
        "baseline_commit": commit,
        "report_metrics_seconds": {"before": t_old_metrics, "after": t_metrics, "speedup": t_old_metrics / t_metrics},
        "label_reports_seconds_for_2n_texts": {"before": t_old_labels, "after": t_labels,
                                               "speedup": t_old_labels / t_labels},
        "total_seconds": {"before": t_old_metrics + t_old_labels, "after": t_metrics + t_labels},
        "report_metrics_identical": old_metrics == new_metrics,
        "labels_identical": old_labels == new_labels,
    }
    # Per distinct text (no batch de-duplication): cold = empty clause cache, warm = second pass.
    per_text = {}
    for name, sample in (("iu_xray_or_synthetic_reports", list(dict.fromkeys(texts))),
                         ("teacher_completions", list(dict.fromkeys(_teacher_texts())))):
        new_lab.clear_clause_cache()
        before = _per_text_ms(old_lab.label_report_full, sample)
        cold = _per_text_ms(new_lab.label_report_full, sample)
        warm = _per_text_ms(new_lab.label_report_full, sample)
        same = all(
            (a.labels, a.laterality, a.laterality_conflict, a.refusal)
            == (b.labels, b.laterality, b.laterality_conflict, b.refusal)
            for a, b in ((old_lab.label_report_full(t), new_lab.label_report_full(t)) for t in sample)
        )
        per_text[name] = {"distinct_texts": len(sample), "ms_per_text_before": before,
                          "ms_per_text_after_cold_cache": cold, "ms_per_text_after_warm_cache": warm,
                          "identical": same}
    out["label_report_full_per_distinct_text"] = per_text
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--baseline", default="191c67c", help="git commit of the implementation to compare with")
    ap.add_argument("--no-baseline", action="store_true", help="skip the before/after comparison")
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
    labels = label_reports(preds + refs, progress=True)
    t_labels = time.perf_counter() - t0
    total = t_metrics + t_labels
    out = {
        "source": source, "pairs": args.n, "mean_reference_tokens": n_tokens,
        "report_metrics_seconds": t_metrics, "label_report_seconds_for_2n_texts": t_labels,
        "total_seconds": total, "target_seconds": 30.0, "met_target": total < 30.0,
        "metrics": {k: v for k, v in metrics.items() if k != "per_pair"},
    }
    if not args.no_baseline:
        out["before_after"] = _before_after(args.baseline, preds, refs, texts, metrics, labels, t_metrics, t_labels)
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

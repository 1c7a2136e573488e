"""How good are the simulated teachers, and their consensus? Balanced accuracy per finding against the truth.

Runs :func:`cxr_max.drift.teacher_accuracy.teacher_accuracy_table` (the teachers' ``claims()`` on the
``diagnose`` task vs the report's truth; hedged truth left out; refusals predict absent) on the train split
of the default world (seed 0, 160 patients) and of a larger one (seed 0, ``--large`` patients), and prints
and writes, per finding: every teacher's balanced accuracy, the vote and Dawid-Skene consensus, and the best
teacher. No pixels are rendered; ~1 minute on one core.

    python benchmarks/teacher_accuracy.py      # writes benchmarks/results/teacher_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cxr_max.synthetic.build import DEFAULT_N_PATIENTS, FORMAT_VERSION, generate_world
from cxr_max.drift.teacher_accuracy import format_accuracy_table, teacher_accuracy_table
from cxr_max.synthetic.world import image_truths

RESULTS = Path(__file__).parent / "results" / "teacher_accuracy.json"


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--large", type=int, default=3000, help="patients in the larger world")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    out = {"format_version": FORMAT_VERSION, "split": args.split, "worlds": {}}
    for label, n in (("default", DEFAULT_N_PATIENTS), ("large", args.large)):
        t0 = time.perf_counter()
        truths = image_truths(generate_world(seed=args.seed, n_patients=n))
        table = teacher_accuracy_table(truths, split=args.split)
        table["seconds"] = time.perf_counter() - t0
        table["n_patients"] = n
        out["worlds"][label] = _rounded(table)
        print(f"\n{label} world: seed {args.seed}, {n} patients, {table['n_images']} {args.split} images "
              f"({table['seconds']:.0f} s)")
        print(format_accuracy_table(table))
        print("consensus minus best teacher: " + "; ".join(
            f"{m}: " + ", ".join(f"{f} {v:+.3f}" for f, v in d.items()) for m, d in table["margin"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")
    return out


if __name__ == "__main__":
    main()

"""Export builder configs to a Hub-ready folder (parquet shards + card), optionally push it; report timings.

    python builders/export_hub.py                                  # embedded synthetic data, all configs
    python builders/export_hub.py --data-dir /physionet/mimic-cxr-jpg/2.1.0 --trajectories traj/ \\
        --out outputs/hub/cxr_max_mimic --push me/cxr-max-mimic     # MIMIC: ids + trajectories only, private

Measures, side by side in one run: building the configs, the safety scan + parquet write of the
export, and plain ``datasets.load_dataset`` of the result (no cxr_max), and prints them as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets

from cxr_max.hub.export import export_dataset
from cxr_max.hub.push import push_dataset

ALL = ("mimic", "trajectories", "studies", "sft", "apo", "ms_cxr_t")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", choices=ALL, help="config(s) to export (default: all)")
    ap.add_argument("--out", type=Path, default=Path("outputs/hub/cxr_max_export"))
    ap.add_argument("--data-dir", type=Path, default=None, help="PhysioNet MIMIC-CXR(-JPG) root; omit for synthetic")
    ap.add_argument("--trajectories", default=None)
    ap.add_argument("--shard-rows", type=int, default=20_000)
    ap.add_argument("--push", metavar="REPO_ID", default=None, help="push the export (private) after writing it")
    ap.add_argument("--dry-run", action="store_true", help="with --push: list what would be uploaded")
    args = ap.parse_args()

    import cxr_max

    configs = args.config or list(ALL)
    source = "mimic" if args.data_dir else "synthetic"
    kwargs = {"images": "decode" if source == "synthetic" else "path"}
    if args.data_dir:
        kwargs["data_dir"] = str(args.data_dir)
    if args.trajectories:
        kwargs["trajectories"] = args.trajectories

    t0 = time.perf_counter()
    loaded = {name: cxr_max.load_dataset(name, **kwargs) for name in configs}
    t1 = time.perf_counter()
    result = export_dataset(loaded, args.out, source=source, shard_rows=args.shard_rows, overwrite=True)
    t2 = time.perf_counter()
    reloaded = {name: datasets.load_dataset(str(args.out), name) for name in configs}
    t3 = time.perf_counter()
    rows = {name: {s: len(d) for s, d in dd.items()} for name, dd in reloaded.items()}
    size = sum(p.stat().st_size for p in args.out.rglob("*.parquet"))
    print(json.dumps({
        "source": source, "rows": rows, "parquet_bytes": size,
        "dropped_columns": result.manifest["dropped_columns"], "skipped_rows": result.skips.total,
        "seconds": {"build_configs": round(t1 - t0, 2), "export": round(t2 - t1, 2),
                    "plain_load_dataset": round(t3 - t2, 2)},
        "export_rows_per_s": round(sum(sum(r.values()) for r in rows.values()) / max(t2 - t1, 1e-9), 1),
    }, indent=2))
    if args.push:
        plan = push_dataset(args.out, args.push, dry_run=args.dry_run)
        if args.dry_run:
            plan.print()
        else:
            print(f"pushed to {plan.repo_id}: {plan.commit_url}")


if __name__ == "__main__":
    main()

"""Collect CXR-MAX-style reasoning trajectories from several teachers (resumable, sharded).

    # the embedded default: simulated teachers served in-process, synthetic MIMIC-CXR-JPG
    python builders/distill_teachers.py --out outputs/trajectories

    # your own teachers (one vLLM server each, see cxr_max/teachers/registries/vllm.yaml)
    python builders/distill_teachers.py --registry vllm --images /data/mimic-cxr-jpg --out runs/cxr-max \
        --task explain --shard 0/4

Rerunning the same command resumes: what is on disk is skipped, failures are asked again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from cxr_max.teachers import collect, run_sim_server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--registry", default="sim", help='YAML path or "sim"/"vllm" (default sim)')
    p.add_argument("--images", type=Path, help="MIMIC-CXR-JPG root (default: the synthetic one)")
    p.add_argument("--sim-root", type=Path, help="synthetic root for the in-process sim server (default: embedded)")
    p.add_argument("--base-url", help="point every teacher here (with --registry sim: skip the in-process server)")
    p.add_argument("--task", action="append", choices=["diagnose", "explain", "report"])
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--shard", default="0/1")
    p.add_argument("--teacher", action="append")
    p.add_argument("--allow-host", action="append", default=[])
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--no-retry-failed", action="store_true")
    p.add_argument("--frontal-only", action="store_true")
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary-json", type=Path)
    a = p.parse_args(argv)
    i, n = (int(x) for x in a.shard.split("/"))
    console = Console(stderr=True)
    sim_root = a.sim_root
    if a.images is None or (a.registry == "sim" and a.base_url is None and sim_root is None):
        from cxr_max.synthetic import ensure_synthetic

        sim_root = sim_root or Path(ensure_synthetic(seed=a.seed))
    images = a.images or sim_root / "mimic-cxr-jpg"
    kwargs = dict(tasks=tuple(a.task or ["diagnose"]), samples=a.samples, shard=(i, n), teachers=a.teacher,
                  allowed_hosts=a.allow_host, allow_remote=a.allow_remote, retry_failed=not a.no_retry_failed,
                  frontal_only=a.frontal_only, limit=a.limit, progress=not a.no_progress, console=console)
    if a.registry == "sim" and a.base_url is None:
        with run_sim_server(root=sim_root, seed=a.seed) as server:
            summary = collect("sim", images, a.out, base_url=server.base_url, **kwargs)
    else:
        summary = collect(a.registry, images, a.out, base_url=a.base_url, **kwargs)
    summary.render(console)
    if a.summary_json:
        a.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

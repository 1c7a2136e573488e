"""Collector throughput and resume-scan speed (issue 2 targets).

- Throughput: the collector against the local simulated-teacher server (run in its own process, a
  no-delay echo teacher, real HTTP on loopback) at concurrency 1, 8 and 64: records/s, wall time per
  record, and the collector's own CPU time per request (its overhead; the rest is the server).
  Target: >= 200 records/s at concurrency 64.
- Resume: scanning 170,982 existing records (7 teachers x 24,426 images, CXR-MAX's size, ~1.3 kB
  each) for their keys. Target: < 5 s.

    .venv/bin/python benchmarks/bench_collector.py [--quick]

Writes benchmarks/results/collector.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from cxr_max.teachers import collect, make_tiny_world, parse_registry, scan_keys  # noqa: E402
from cxr_max.teachers.store import ShardWriter  # noqa: E402
from cxr_max.trajectories.schema import EXAMPLE_RECORD, normalize_record  # noqa: E402


def serve_subprocess(root: Path, n_images: int) -> None:
    """(in the child) rebuild the same tiny world and serve it until killed."""
    from cxr_max.teachers import serve

    _, world = make_tiny_world(root, n_images=n_images, teachers=["echo-0"])
    serve(world, port=0, port_file=root / "port", echo=lambda s: None)


def throughput(root: Path, jroot: Path, url: str, concurrency: int, n_records: int) -> dict:
    reg = parse_registry({"teachers": [{"name": "echo-0", "model": "echo-0", "base_url": url, "version": "bench",
                                        "max_concurrency": concurrency, "timeout_s": 30}]})
    out = Path(tempfile.mkdtemp(dir=root))
    samples = 1
    images = n_records
    cpu0, t0 = time.process_time(), time.perf_counter()
    s = collect(reg, jroot, out, samples=samples, limit=images, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = s.ok + s.failed
    return {"concurrency": concurrency, "records": n, "failed": s.failed, "wall_s": round(wall, 3),
            "records_per_s": round(n / wall, 1), "wall_ms_per_record": round(1000 * wall / n, 3),
            "collector_cpu_ms_per_request": round(1000 * cpu / n, 3)}


def resume_scan(root: Path, n_images: int = 24_426, teachers: int = 7) -> dict:
    out = root / "resume"
    base = normalize_record({**EXAMPLE_RECORD, "raw": EXAMPLE_RECORD["raw"] * 6, "reasoning": EXAMPLE_RECORD["reasoning"] * 6})
    t0 = time.perf_counter()
    for t in range(teachers):
        w = ShardWriter(out, f"teacher-{t}", (0, 1))
        for i in range(n_images):
            w.add({**base, "teacher": f"teacher-{t}", "dicom_id": f"{i:08x}-0000000{t}-00000000-00000000-00000000"})
        w.close()
    write_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*.jsonl"))
    t0 = time.perf_counter()
    state = scan_keys(out)
    scan_s = time.perf_counter() - t0
    assert len(state.ok) == n_images * teachers
    return {"records": state.rows, "bytes": size, "write_s": round(write_s, 2), "scan_s": round(scan_s, 3),
            "target_s": 5.0, "met": scan_s < 5.0}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer records (a smoke run)")
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve_subprocess(Path(a.serve[0]), int(a.serve[1]))
        return 0
    sizes = {1: 100, 8: 600, 64: 1500} if not a.quick else {1: 30, 8: 100, 64: 200}
    n_images = max(sizes.values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jroot, _ = make_tiny_world(root, n_images=n_images, teachers=["echo-0"], image_size=256)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(n_images)],
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.time() + 120
            while not (root / "port").exists() and time.time() < deadline:
                time.sleep(0.1)
            url = f"http://127.0.0.1:{(root / 'port').read_text().strip()}/v1"
            throughput(root, jroot, url, 8, 50)  # warm-up (imports, connections)
            runs = [throughput(root, jroot, url, c, n) for c, n in sizes.items()]
        finally:
            server.terminate()
            server.wait()
        scan = resume_scan(root)
    at64 = next(r for r in runs if r["concurrency"] == 64)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "note": "server in a separate process on the same machine; cores shared with other jobs"},
        "image_bytes": "256x256 grayscale JPG",
        "throughput": runs,
        "target_records_per_s_at_64": 200, "met_throughput": at64["records_per_s"] >= 200,
        "resume_scan": scan,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "collector.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

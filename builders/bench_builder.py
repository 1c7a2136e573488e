"""Benchmark: the ``trajectories`` config at CXR-MAX scale against the plain-pyarrow floor.

Builds a synthetic MIMIC-CXR with 24,426 images and seven simulated teachers (170,982 trajectories,
no pixels: image paths only), then, each in its own subprocess so peak memory is measured cleanly:

* **floor**: read the same files with pyarrow (metadata, split and CheXpert CSVs, trajectory
  JSONL), join vectorised, write one parquet file per split;
* **builder**: ``cxr_max.load_dataset("trajectories", images="path", check_images="none")`` into
  a fresh cache;
* **builder at 1/4 scale**: the same on a quarter of the trajectory files, to show whether peak
  memory grows with the number of rows.

Runs are alternated and repeated; medians are reported. Usage::

    python builders/bench_builder.py [--repeats 3] [--out benchmarks/results/builder.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_IMAGES = 24_426


def run_floor(jpg_root: str, traj_dir: str, out_dir: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from cxr_max.trajectories.schema import ARROW_SCHEMA

    ids = {c: pa.string() for c in ("subject_id", "study_id", "dicom_id")}
    opts = pacsv.ConvertOptions(column_types=ids)
    meta = pacsv.read_csv(Path(jpg_root) / "mimic-cxr-2.0.0-metadata.csv.gz", convert_options=opts)
    split = pacsv.read_csv(Path(jpg_root) / "mimic-cxr-2.0.0-split.csv.gz", convert_options=opts)
    from cxr_max.labels import CHEXPERT_LABELS

    label_opts = pacsv.ConvertOptions(column_types={**ids, **{c: pa.float32() for c in CHEXPERT_LABELS}})
    labels = pacsv.read_csv(Path(jpg_root) / "mimic-cxr-2.0.0-chexpert.csv.gz", convert_options=label_opts)
    images = meta.join(split.select(["dicom_id", "split"]), "dicom_id").join(labels, ["subject_id", "study_id"])
    path = pc.binary_join_element_wise(
        jpg_root + "/files/p", pc.utf8_slice_codeunits(images.column("subject_id"), 0, 2), "/p",
        images.column("subject_id"), "/s", images.column("study_id"), "/", images.column("dicom_id"), ".jpg", "")
    images = images.append_column("image_path", path)
    parse = pj.ParseOptions(explicit_schema=ARROW_SCHEMA)
    tables = [pj.read_json(f, parse_options=parse) for f in sorted(Path(traj_dir).rglob("*.jsonl"))]
    traj = pa.concat_tables(tables)
    idx = pc.index_in(traj.column("dicom_id"), images.column("dicom_id"))  # vectorised join (labels struct on the left)
    joined = traj
    for name in images.column_names:
        if name not in traj.column_names:
            joined = joined.append_column(name, images.column(name).take(idx))
    for s in ("train", "validate", "test"):
        pq.write_table(joined.filter(pc.equal(joined.column("split"), s)), Path(out_dir) / f"{s}.parquet")


def run_builder(jpg_root: str, traj: str, cache: str) -> int:
    import cxr_max

    ds = cxr_max.load_dataset("trajectories", data_dir=jpg_root, trajectories=traj, images="path",
                              check_images="none", cache_dir=cache)
    return sum(d.num_rows for d in ds.values())


def _child(kind: str, args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; returns wall seconds and peak RSS (MB)."""
    code = (
        "import sys, time, json, resource; sys.path.insert(0, %r); import bench_builder as b; "
        "t=time.perf_counter(); r=getattr(b, %r)(*%r); dt=time.perf_counter()-t; "
        "print(json.dumps({'seconds': dt, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 'rows': r}))"
    ) % (str(Path(__file__).parent), f"run_{kind}", args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-images", type=int, default=N_IMAGES)
    ap.add_argument("--out", default="benchmarks/results/builder.json")
    args = ap.parse_args()

    from cxr_max.synthetic import ensure_synthetic

    t0 = time.perf_counter()
    root = Path(ensure_synthetic(n_images=args.n_images, pixels="none"))
    gen_s = time.perf_counter() - t0
    jpg_root, traj_dir = str(root / "mimic-cxr-jpg"), str(root / "trajectories")
    files = sorted(str(p) for p in Path(traj_dir).rglob("*.jsonl"))
    quarter = tempfile.mkdtemp(prefix="cxr_bench_quarter_")
    for f in files[: max(1, len(files) // 4)]:
        dst = Path(quarter) / Path(f).relative_to(traj_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    n_traj = sum(1 for f in files for _ in open(f, "rb"))
    print(f"synthetic root {root} ({n_traj} trajectories, {gen_s:.1f} s to make or find)")

    runs: dict[str, list[dict]] = {"floor": [], "builder": [], "builder_quarter": []}
    for r in range(args.repeats):
        for kind in ("floor", "builder", "builder_quarter"):
            tmp = tempfile.mkdtemp(prefix="cxr_bench_")
            try:
                if kind == "floor":
                    res = _child("floor", [jpg_root, traj_dir, tmp])
                else:
                    res = _child("builder", [jpg_root, traj_dir if kind == "builder" else quarter, tmp])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            runs[kind].append(res)
            print(f"  repeat {r + 1} {kind:16s} {res['seconds']:7.2f} s  peak {res['peak_mb']:7.0f} MB  rows {res.get('rows')}")
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    peak = {k: max(x["peak_mb"] for x in v) for k, v in runs.items()}
    result = {
        "trajectories": n_traj,
        "images": args.n_images,
        "floor_seconds": med["floor"],
        "builder_seconds": med["builder"],
        "ratio": med["builder"] / med["floor"],
        "target_ratio": 1.5,
        "floor_peak_mb": peak["floor"],
        "builder_peak_mb": peak["builder"],
        "builder_quarter_rows_peak_mb": peak["builder_quarter"],
        "target_peak_mb": 2048,
        "runs": runs,
        "cpu_count": os.cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"\nfloor {med['floor']:.2f} s | builder {med['builder']:.2f} s | ratio {result['ratio']:.2f}x (target <= 1.5x)\n"
        f"peak memory: builder {peak['builder']:.0f} MB (1/4 of the rows: {peak['builder_quarter']:.0f} MB), "
        f"floor {peak['floor']:.0f} MB (target < 2048 MB)\nwritten {args.out}"
    )
    shutil.rmtree(quarter, ignore_errors=True)


if __name__ == "__main__":
    main()

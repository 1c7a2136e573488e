"""Benchmark: the ``trajectories`` config at CXR-MAX scale against the plain-pyarrow floor.

Builds a synthetic MIMIC-CXR with 24,426 images and seven simulated teachers (170,982 trajectories,
no pixels: image paths only), then, each in its own subprocess so peak memory is measured cleanly:

* **floor**: read the same files with pyarrow (metadata, split and CheXpert CSVs, trajectory
  JSONL), join vectorised, write one parquet file per split;
* **builder**: ``cxr_max.load_dataset("trajectories", images="path", check_images="none")`` into
  a fresh cache;
* **builder at 1/4 scale**: the same on a quarter of the trajectory files, to show whether peak
  memory grows with the number of rows.

Runs are alternated and repeated; medians are reported.

``--full-scale`` adds the measurement at full MIMIC-CXR-JPG scale, paths only: a synthetic metadata of
377,110 images (228k studies with reports in a zip) of which a partial copy of 24,426 JPGs is on disk
(placeholder files), with the seven teachers' trajectories for those 24,426 images. ``mimic``
(``on_error="skip"``: the 352,684 absent images are counted), ``trajectories`` and ``sft`` (default
policy: the copy holds exactly the images the rows need) are built in one process and with
``num_proc=2``; wall time and peak RSS of the whole process tree (sampled) are reported side by side.
Usage::

    python builders/bench_builder.py [--repeats 3] [--full-scale] [--out benchmarks/results/builder.json]
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
FULL_IMAGES = 377_110


def _placeholder_jpg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="JPEG")
    return buf.getvalue()


def full_scale_copy(root: Path, n_on_disk: int = N_IMAGES, seed: int = 0) -> tuple[str, str, str, int]:
    """The full-scale world's JPG root, DICOM root, and a trajectory folder for ``n_on_disk`` images
    (drawn at random, as a user's subset is), whose JPGs are written as placeholders."""
    import numpy as np

    from cxr_max.synthetic import load_truth, simulate_trajectories
    from cxr_max.synthetic.build import study_dir

    traj = root / f"trajectories-{n_on_disk}"
    done = traj / ".complete"
    if not done.exists():
        truth = load_truth(root)
        ids = sorted(truth)
        pick = np.random.default_rng(seed).choice(len(ids), size=n_on_disk, replace=False)
        subset = {ids[i]: truth[ids[i]] for i in sorted(pick)}
        data = _placeholder_jpg()
        for t in subset.values():
            p = root / "mimic-cxr-jpg" / study_dir(t.subject_id, t.study_id) / f"{t.dicom_id}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        simulate_trajectories(root, out_dir=traj, truth=subset, seed=seed)
        done.write_text("ok")
    n_traj = sum(1 for f in traj.rglob("*.jsonl") for _ in open(f, "rb"))
    return str(root / "mimic-cxr-jpg"), str(root / "mimic-cxr"), str(traj), n_traj


def run_config(config: str, jpg_root: str, dicom_root: str, traj: str, cache: str, num_proc: str) -> int:
    import cxr_max

    kw = {"data_dir": jpg_root, "images": "path", "cache_dir": cache, "num_proc": int(num_proc) or None}
    if config == "mimic":
        kw.update(dicom_dir=dicom_root, on_error="skip")  # a partial copy: the absent images are counted, not fatal
    else:
        kw.update(trajectories=traj)
    ds = cxr_max.load_dataset(config, **kw)
    return sum(d.num_rows for d in ds.values())


def _tree_child(kind: str, args: list[str]) -> dict:
    """Like :func:`_child`, but peak memory is sampled over the whole process tree (workers included):
    ``peak_mb`` sums PSS (shared pages split between the processes sharing them: forked workers and
    memory-mapped Arrow files are not counted twice), ``peak_rss_sum_mb`` sums RSS (counts them twice)."""
    import psutil

    code = (
        "import sys, time, json; sys.path.insert(0, %r); import bench_builder as b; "
        "t=time.perf_counter(); r=getattr(b, %r)(*%r); dt=time.perf_counter()-t; "
        "print(json.dumps({'seconds': dt, 'rows': r}))"
    ) % (str(Path(__file__).parent), f"run_{kind}", args)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = peak_rss = 0
    while proc.poll() is None:
        pss = rss = 0
        for p in [ps, *_children(ps)]:
            try:
                full = p.memory_full_info()
                pss, rss = pss + full.pss, rss + full.rss
            except psutil.Error:
                pass
        peak, peak_rss = max(peak, pss), max(peak_rss, rss)
        time.sleep(0.3)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{kind} {args} failed:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_mb"], res["peak_rss_sum_mb"] = peak / 2**20, peak_rss / 2**20
    return res


def _children(ps) -> list:
    import psutil

    try:
        return ps.children(recursive=True)
    except psutil.Error:
        return []


def full_scale(out: dict, root: str | None = None) -> None:
    from cxr_max.synthetic import ensure_synthetic

    t0 = time.perf_counter()
    # --full-root: an existing full-scale world (its pixel-free tables, reports and trajectories do not depend
    # on the renderer, so a world of an earlier format version measures the builder the same way)
    root = Path(root) if root else Path(ensure_synthetic(n_images=FULL_IMAGES, pixels="none", teachers=False))
    jpg_root, dicom_root, traj, n_traj = full_scale_copy(root)
    print(f"full-scale root {root}: {FULL_IMAGES} images in the metadata, {N_IMAGES} on disk, {n_traj} trajectories "
          f"({time.perf_counter() - t0:.0f} s to make or find)")
    runs = {}
    for config in ("mimic", "trajectories", "sft"):
        for num_proc in ("0", "2"):
            tmp = tempfile.mkdtemp(prefix="cxr_bench_full_")
            try:
                res = _tree_child("config", [config, jpg_root, dicom_root, traj, tmp, num_proc])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            name = f"{config}/{'num_proc=2' if num_proc == '2' else 'single'}"
            runs[name] = res
            print(f"  {name:24s} {res['seconds']:7.1f} s  peak {res['peak_mb']:7.0f} MB PSS "
                  f"({res['peak_rss_sum_mb']:.0f} MB RSS summed)  rows {res['rows']}  load {os.getloadavg()[0]:.1f}")
    out["full_scale"] = {
        "images_in_metadata": FULL_IMAGES, "images_on_disk": N_IMAGES, "trajectories": n_traj,
        "runs": runs,
        "num_proc2_over_single": {c: runs[f"{c}/num_proc=2"]["seconds"] / runs[f"{c}/single"]["seconds"]
                                  for c in ("mimic", "trajectories", "sft")},
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "world": root.name,
    }


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
    ap.add_argument("--full-scale", action="store_true", help="also measure at full MIMIC-CXR-JPG scale (see above)")
    ap.add_argument("--only-full-scale", action="store_true", help="only the full-scale measurement")
    ap.add_argument("--full-root", default=None, help="an existing full-scale synthetic world to measure on")
    args = ap.parse_args()
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if args.only_full_scale:
        full_scale(previous, args.full_root)
        Path(args.out).write_text(json.dumps(previous, indent=2))
        print(f"written {args.out}")
        return

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
    if args.full_scale:
        full_scale(result, args.full_root)
    elif "full_scale" in previous:  # kept from the last --full-scale run (it has its own measured_at)
        result["full_scale"] = previous["full_scale"]
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

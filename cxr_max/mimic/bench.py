"""Benchmark: MimicRoot.images() / studies() at full MIMIC-CXR-JPG scale, against a per-row Python join.

Writes synthetic tables with the real sizes (377,110 images, 227,827 studies, 65,379 patients; the
same CSV layout, gzip) to a temporary folder, then times, side by side in one run:

* ``pyarrow``: :class:`~cxr_max.mimic.root.MimicRoot` reading the three tables and joining them
  (``images()``), then ``studies()``;
* ``per-row``: the same tables read by the same readers, joined by a Python loop over rows with dict
  lookups (what a straightforward implementation does), producing the same image rows as dicts.

Run: ``python -m cxr_max.mimic.bench [--images N] [--repeat R]``. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from cxr_max.labels import CHEXPERT_LABELS

FULL_IMAGES, FULL_STUDIES, FULL_SUBJECTS = 377_110, 227_827, 65_379


def _write_gz(path: Path, table: pa.Table) -> None:
    with pa.CompressedOutputStream(str(path), "gzip") as out:
        pacsv.write_csv(table, out)


def write_tables(root: Path, n_images: int, seed: int = 0) -> None:
    """Synthetic metadata / split / chexpert tables with MIMIC's proportions, ids in PhysioNet format."""
    rng = np.random.default_rng(seed)
    n_studies = max(1, round(n_images * FULL_STUDIES / FULL_IMAGES))
    n_subjects = max(1, round(n_images * FULL_SUBJECTS / FULL_IMAGES))
    subject_ids = np.array([f"1{i:07d}" for i in rng.choice(9_999_999, n_subjects, replace=False)])
    study_ids = np.array([f"5{i:07d}" for i in rng.choice(9_999_999, n_studies, replace=False)])
    study_subject = subject_ids[rng.integers(0, n_subjects, n_studies)]
    image_study = np.concatenate([np.arange(n_studies), rng.integers(0, n_studies, n_images - n_studies)])
    hexes = rng.integers(0, 2**32, size=(n_images, 5), dtype=np.uint64)
    dicom_ids = ["-".join(f"{v:08x}" for v in row) for row in hexes]
    dates = [f"21{d:02d}0{m}1{day}" for d, m, day in zip(rng.integers(10, 99, n_studies), rng.integers(1, 9, n_studies), rng.integers(0, 9, n_studies))]
    hms = rng.integers(0, 24, n_studies) * 10000 + rng.integers(0, 60, n_studies) * 100 + rng.integers(0, 60, n_studies)
    times = [f"{t}.{ms:03d}" for t, ms in zip(hms, rng.integers(0, 1000, n_studies))]  # printed without leading zeros, as MIMIC does
    views = np.array(["PA", "AP", "LATERAL", "LL", ""])[rng.integers(0, 5, n_images)]
    meta = pa.table(
        {
            "dicom_id": dicom_ids,
            "subject_id": study_subject[image_study],
            "study_id": study_ids[image_study],
            "PerformedProcedureStepDescription": ["CHEST (PA AND LAT)"] * n_images,
            "ViewPosition": views,
            "Rows": rng.integers(2000, 3056, n_images).astype(str),
            "Columns": rng.integers(2000, 3056, n_images).astype(str),
            "StudyDate": np.array(dates)[image_study],
            "StudyTime": np.array(times)[image_study],
            "ProcedureCodeSequence_CodeMeaning": ["CHEST (PA AND LAT)"] * n_images,
            "ViewCodeSequence_CodeMeaning": ["postero-anterior"] * n_images,
            "PatientOrientationCodeSequence_CodeMeaning": ["Erect"] * n_images,
        }
    )
    _write_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta)
    splits = np.array(["train", "validate", "test"])[rng.choice(3, n_images, p=[0.98, 0.01, 0.01])]
    _write_gz(root / "mimic-cxr-2.0.0-split.csv.gz", pa.table({"dicom_id": dicom_ids, "study_id": meta["study_id"], "subject_id": meta["subject_id"], "split": splits}))
    labelled = rng.random(n_studies) < 0.99
    values = np.array(["1.0", "0.0", "-1.0", "", "", "", ""])
    labels = {"subject_id": study_subject[labelled], "study_id": study_ids[labelled]}
    for name in CHEXPERT_LABELS:
        labels[name] = values[rng.integers(0, len(values), int(labelled.sum()))]
    _write_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", pa.table(labels))


def per_row_images(root) -> list[dict]:
    """The baseline: the same join as MimicRoot.images() as a Python loop with dict lookups."""
    meta, split, labels = root.metadata.to_pylist(), root.split.to_pylist(), root.label_table.to_pylist()
    split_of = {r["dicom_id"]: r["split"] for r in split}
    labels_of = {(r["subject_id"], r["study_id"]): {n: r[n] for n in CHEXPERT_LABELS} for r in labels}
    out = []
    for r in meta:
        s, t, d = r["subject_id"], r["study_id"], r["dicom_id"]
        out.append(
            {
                "subject_id": s, "study_id": t, "dicom_id": d, "split": split_of.get(d),
                "view_position": r["ViewPosition"], "study_date": r["StudyDate"], "study_time": r["StudyTime"],
                "study_datetime": r["study_datetime"], "rows": r["Rows"], "columns": r["Columns"],
                "image_path": f"{root.jpg_root}/files/p{s[:2]}/p{s}/s{t}/{d}.jpg", "dicom_path": None,
                "report_path": None, "labels": labels_of.get((s, t)),
            }
        )
    return out


def run(n_images: int = FULL_IMAGES, repeat: int = 1) -> dict:
    """Time both paths on ``n_images`` synthetic rows; returns the figures (seconds, best of ``repeat``)."""
    from rich.console import Console
    from rich.table import Table

    from cxr_max.mimic.root import MimicRoot

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        root_dir = Path(tmp)
        with console.status(f"writing {n_images:,} synthetic metadata rows"):
            write_tables(root_dir, n_images)
        figures: dict[str, float] = {}

        def best(label: str, fn) -> object:
            times, result = [], None
            for _ in range(repeat):
                t0 = time.perf_counter()
                result = fn()
                times.append(time.perf_counter() - t0)
            figures[label] = min(times)
            return result

        with console.status("timing"):
            def tables_only():
                r = MimicRoot(root_dir)
                r.metadata, r.split, r.label_table
                return r

            root = best("read 3 tables", tables_only)
            images = best("join: pyarrow images()", root.images)
            best("join: pyarrow studies()", root.studies)
            rows = best("join: per-row Python", lambda: per_row_images(root))
            best("total: MimicRoot(...).images()", lambda: MimicRoot(root_dir).images())
        checked = min(n_images, 20_000)
        same = len(rows) == images.num_rows and images.slice(0, checked).to_pylist() == rows[:checked]
    figures = {k: round(v, 3) for k, v in figures.items()}
    ratio = figures["join: per-row Python"] / max(figures["join: pyarrow images()"], 1e-9)
    table = Table(title=f"MimicRoot at {n_images:,} images (best of {repeat})")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for k, v in figures.items():
        table.add_row(k, f"{v:.3f}")
    console.print(table)
    console.print(f"per-row / pyarrow join time: {ratio:.1f}x; first {checked:,} rows identical: {same}")
    return {"n_images": n_images, "repeat": repeat, "seconds": figures, "join_speedup": round(ratio, 1), "rows_identical": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=FULL_IMAGES)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.images, args.repeat)))


if __name__ == "__main__":
    main()

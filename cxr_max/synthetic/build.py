"""Build the embedded synthetic MIMIC-CXR on disk, in PhysioNet's layout, once (cached).

``ensure_synthetic()`` returns a root folder holding::

    mimic-cxr-jpg/  files/p1x/p1xxxxxxx/s5xxxxxxx/<dicom_id>.jpg and mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz,
                    mimic-cxr-2.1.0-test-set-labeled.csv (radiologists' labels of the test studies)
    mimic-cxr/      files/.../<dicom_id>.dcm, files/p1x/p1xxxxxxx/s5xxxxxxx.txt, mimic-cxr-reports.zip,
                    cxr-record-list.csv.gz, cxr-study-list.csv.gz
    ms-cxr-t/       MS_CXR_T_temporal_image_classification_v1.0.0.csv
    trajectories/   {teacher}/part-00000.jsonl ... (canonical trajectory records)
    truth.jsonl     one ImageTruth per image (not part of real MIMIC)

The build is guarded by a lock file (parallel test workers wait for each other), writes every file
atomically, resumes after an interruption (images already written are kept), and finishes by writing
``.complete`` (and ``trajectories/.complete``); a finished root is returned immediately.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import gzip
import io
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_max.labels import CHEXPERT_LABELS, MS_CXR_T_FINDINGS, label_key
from cxr_max.synthetic import reports
from cxr_max.synthetic.dicom import write_dicom
from cxr_max.synthetic.render import render
from cxr_max.synthetic.simulate import progress_bar, simulate_trajectories
from cxr_max.synthetic.teachers import teachers_fingerprint
from cxr_max.synthetic.world import (
    ImageTruth,
    Patient,
    assign_stream_positions,
    image_truths,
    make_patient,
)

DEFAULT_N_PATIENTS = 160  # about 380 frontal / 490 images; builds in ~10-20 s on 2 cores
DEFAULT_IMAGE_SIZE = 256
TINY_IMAGE_SIZE = 32
PIXELS = ("full", "tiny", "none")
FORMAT_VERSION = "v6"  # v2: the quirks of real copies (views, reports, label rows, StudyTime, MS-CXR-T ids); v3: renderer (larger findings); v4: teachers recalibrated (fewer misses, more over-calls); v5: teachers at MLLM level per finding (more teacher-specific misses and over-calls); v6: teachers recalibrated so the vote beats the best teacher per finding (misses -.08 but cardiomegaly -.02 and edema -.04, consolidation misses -.13 and over-calls +.10, edema over-calls +.05 but sim-sonnet-4, sim-gpt-5-nano over-calls -.05, shared error B rate 1.0)

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id") + CHEXPERT_LABELS
TEST_SET_LABELS_FILE = "mimic-cxr-2.1.0-test-set-labeled.csv"
RADIOLOGIST_COLUMNS = ("study_id",) + tuple("Airspace Opacity" if n == "Lung Opacity" else n for n in CHEXPERT_LABELS)
MS_CXR_T_FILE = "MS_CXR_T_temporal_image_classification_v1.0.0.csv"
MS_CXR_T_COLUMNS = (
    ("dicom_id", "previous_dicom_id", "subject_id", "study_id", "previous_study_id")
    + tuple(f"{label_key(f)}_progression" for f in MS_CXR_T_FINDINGS)
    + tuple(f"{label_key(f)}_label_quality" for f in MS_CXR_T_FINDINGS)
)
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
                 "AP AXIAL": "antero-posterior", "PA LLD": "postero-anterior", "AP RLD": "antero-posterior",
                 "LAO": "left anterior oblique", "SWIMMERS": "lateral", "XTABLE LATERAL": "lateral"}
JPG_STYLES = ("plain", "physionet")
BROKEN_FILES_NAME = "broken_files.json"


def cache_dir() -> Path:
    """``$CXR_MAX_CACHE`` or ``~/.cache/cxr_max``."""
    return Path(os.environ.get("CXR_MAX_CACHE") or Path.home() / ".cache" / "cxr_max")


def synthetic_name(seed: int = 0, n_patients: int = DEFAULT_N_PATIENTS, pixels: str = "full", *,
                   n_images: int | None = None, image_size: int | None = None, shifted_test: bool = False,
                   shift_rate: float = 0.15, image_shape: tuple[int, int] | None = None, jpg_style: str = "plain",
                   broken: dict[str, int] | None = None, test_patients: int = 0) -> str:
    """The cache folder name, e.g. ``synthetic-v3-seed0-n160-full`` (extra options add suffixes)."""
    size = f"i{n_images}" if n_images is not None else f"n{n_patients}"
    if test_patients:
        size += f"+t{test_patients}"
    name = f"synthetic-{FORMAT_VERSION}-seed{seed}-{size}-{pixels}"
    if image_size is not None and pixels != "none" and image_size != _default_size(pixels):
        name += f"-px{image_size}"
    if shifted_test:
        name += "-shiftedtest"
    if shift_rate != 0.15:
        name += f"-shift{shift_rate:g}"
    if image_shape is not None and pixels != "none":
        name += f"-{image_shape[0]}x{image_shape[1]}"
    if jpg_style != "plain" and pixels != "none":
        name += f"-{jpg_style}"
    if broken:
        name += "-broken" + "".join(f"-{k}{v}" for k, v in sorted(broken.items()) if v)
    return name


def _default_size(pixels: str) -> int:
    return TINY_IMAGE_SIZE if pixels == "tiny" else DEFAULT_IMAGE_SIZE


# -- world ------------------------------------------------------------------------------------------------

def generate_world(*, seed: int = 0, n_patients: int = DEFAULT_N_PATIENTS, n_images: int | None = None,
                   shifted_test: bool = False, shift_rate: float = 0.15, test_patients: int = 0) -> list[Patient]:
    """Generate the patients (with studies, severities, labels and reports). Pure; writes nothing.

    With ``n_images`` patients are generated until exactly that many images exist (the last patient's
    last images are trimmed); ``n_patients`` is then ignored. ``test_patients`` more patients follow, all in
    the test split (a larger test set for a benchmark; the first ``n_patients`` keep their own splits).
    """
    if n_images is None and n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if test_patients < 0:
        raise ValueError(f"test_patients must be >= 0, got {test_patients}")
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    patients: list[Patient] = []
    if n_images is None:
        patients = [make_patient(i, seed, shift_rate=shift_rate, shifted_test=shifted_test) for i in range(n_patients)]
    else:
        count = 0
        while count < n_images:
            p = make_patient(len(patients), seed, shift_rate=shift_rate, shifted_test=shifted_test)
            patients.append(p)
            count += sum(len(s.dicom_ids) for s in p.studies)
        last = patients[-1]
        while count > n_images:
            s = last.studies[-1]
            if len(s.dicom_ids) > 1:
                s.dicom_ids.pop()
                s.views.pop()
                s.has_lateral = False
            else:
                last.studies.pop()
            count -= 1
    first = len(patients)
    patients += [make_patient(first + j, seed, shift_rate=shift_rate, shifted_test=shifted_test, split="test")
                 for j in range(test_patients)]
    assign_stream_positions(patients)
    for p in patients:
        prior = None
        for s in p.studies:
            if s.extra:  # an added lateral-only study: the same findings and report as the study it was taken with
                continue
            reports.plan_study(s, p, prior, np.random.default_rng([seed, 104729, p.index, s.index]))
            prior = s
        for s in p.studies:
            if s.extra:
                base = next((b for b in p.studies if not b.extra and b.date == s.date), p.studies[0])
                s.labels, s.laterality, s.report, s.negbio_blank = dict(base.labels), dict(base.laterality), base.report, base.negbio_blank
    reports.apply_record_quirks(patients, seed)
    return patients


# -- writers ----------------------------------------------------------------------------------------------

def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv_bytes(columns: Sequence[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return buf.getvalue().encode("utf-8")


def _gzip_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    """Write a gzip CSV with a fixed header time, so the bytes depend only on the content."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(_csv_bytes(columns, rows))
    _atomic_write(path, buf.getvalue())


def _fmt_label(v: float | None) -> str | None:
    return None if v is None else f"{v:.1f}"


def study_dir(subject_id: str, study_id: str) -> str:
    """``files/p10/p10000032/s50414267`` (PhysioNet's rule, relative to a dataset root)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


def _physionet_time(hhmmss: str) -> str:
    """``084725.234`` -> ``84725.234``: StudyTime as MIMIC-CXR's metadata prints it (leading zeros dropped)."""
    t = hhmmss.lstrip("0")
    return "0" + t if not t or t.startswith(".") else t


def _write_tables(root: Path, patients: list[Patient], shape: tuple[int, int]) -> None:
    rows, cols = shape
    jpg_root, dcm_root = root / "mimic-cxr-jpg", root / "mimic-cxr"
    meta, split, chexpert, negbio, records, study_rows = [], [], [], [], [], []
    for p in patients:
        for s in p.studies:
            sdir = study_dir(p.subject_id, s.study_id)
            exam = ("CHEST (PORTABLE AP)" if s.view == "AP" else
                    "CHEST (PA AND LAT)" if s.has_lateral else "CHEST (PA)")
            for dicom_id, kind, view in zip(s.dicom_ids, s.views, s.meta_views):
                meta.append({
                    "dicom_id": dicom_id, "subject_id": p.subject_id, "study_id": s.study_id,
                    "PerformedProcedureStepDescription": exam, "ViewPosition": view or None, "Rows": rows, "Columns": cols,
                    # real metadata drops StudyTime's leading zeros (84725.234 is 08:47:25.234)
                    "StudyDate": s.study_date, "StudyTime": _physionet_time(s.study_time),
                    "ProcedureCodeSequence_CodeMeaning": exam,
                    "ViewCodeSequence_CodeMeaning": _VIEW_MEANING.get(view) or _VIEW_MEANING[kind],
                    "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if kind == "AP" else "Erect",
                })
                split.append({"dicom_id": dicom_id, "study_id": s.study_id, "subject_id": p.subject_id, "split": p.split})
                records.append({"subject_id": p.subject_id, "study_id": s.study_id, "dicom_id": dicom_id,
                                "path": f"{sdir}/{dicom_id}.dcm"})
            row = {"subject_id": p.subject_id, "study_id": s.study_id}
            if s.label_row == "normal":
                chexpert.append(row | {n: _fmt_label(s.labels[n]) for n in CHEXPERT_LABELS})
                negbio.append(row | {n: None if n in s.negbio_blank else _fmt_label(s.labels[n]) for n in CHEXPERT_LABELS})
            elif s.label_row == "blank":  # the labeler found nothing to say: every cell empty
                chexpert.append(dict(row))
                negbio.append(dict(row))
            study_rows.append({"subject_id": p.subject_id, "study_id": s.study_id, "path": f"{sdir}.txt"})
    _gzip_csv(jpg_root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, meta)
    _gzip_csv(jpg_root / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_COLUMNS, split)
    _gzip_csv(jpg_root / "mimic-cxr-2.0.0-chexpert.csv.gz", LABEL_COLUMNS, chexpert)
    _gzip_csv(jpg_root / "mimic-cxr-2.0.0-negbio.csv.gz", LABEL_COLUMNS, negbio)
    # The radiologists' test-set labels (MIMIC-CXR-JPG 2.1.0): study_id only, "Airspace Opacity", plain CSV.
    radiologist = [{"study_id": s.study_id, **{RADIOLOGIST_COLUMNS[i + 1]: _fmt_label(s.labels[n])
                                              for i, n in enumerate(CHEXPERT_LABELS)}}
                   for p in patients if p.split == "test" for s in p.studies]
    _atomic_write(jpg_root / TEST_SET_LABELS_FILE, _csv_bytes(RADIOLOGIST_COLUMNS, radiologist))
    _gzip_csv(dcm_root / "cxr-record-list.csv.gz", ("subject_id", "study_id", "dicom_id", "path"), records)
    _gzip_csv(dcm_root / "cxr-study-list.csv.gz", ("subject_id", "study_id", "path"), study_rows)


def _write_reports(root: Path, patients: list[Patient]) -> None:
    dcm_root = root / "mimic-cxr"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in patients:
            for s in p.studies:
                if s.no_report:
                    continue
                rel = f"{study_dir(p.subject_id, s.study_id)}.txt"
                data = s.report.encode("utf-8")
                _atomic_write(dcm_root / rel, data)
                info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    _atomic_write(dcm_root / "mimic-cxr-reports.zip", buf.getvalue())


def _finding_severity(sev: dict[str, float], finding: str, patient: Patient) -> float | None:
    if finding == "Consolidation":
        return max(sev["consolidation_left"], sev["consolidation_right"])
    if finding == "Pneumonia":
        return max(sev["consolidation_left"], sev["consolidation_right"]) if patient.infectious else None
    if finding == "Pleural Effusion":
        return max(sev["effusion_left"], sev["effusion_right"])
    if finding == "Pneumothorax":
        return max(sev["pneumothorax_left"], sev["pneumothorax_right"])
    return sev["edema"]


def ms_cxr_t_rows(patients: list[Patient]) -> list[dict]:
    """One row per consecutive pair of a patient's frontal images with at least one progression label.

    As in the real CSV, the image ids are path-like (``p10/p10002428/s55758034/<dicom_id>``) and
    ``{finding}_label_quality`` is ``multiple_experts`` / ``one_expert`` (empty where there is no label).
    """
    rows = []
    for p in patients:
        studies = [s for s in p.studies if not s.extra]
        for prev, cur in zip(studies, studies[1:]):
            row = {"dicom_id": f"{study_dir(p.subject_id, cur.study_id)[6:]}/{cur.dicom_ids[0]}",
                   "previous_dicom_id": f"{study_dir(p.subject_id, prev.study_id)[6:]}/{prev.dicom_ids[0]}",
                   "subject_id": p.subject_id, "study_id": cur.study_id, "previous_study_id": prev.study_id}
            any_label = False
            for f in MS_CXR_T_FINDINGS:
                c, q = _finding_severity(cur.severity, f, p), _finding_severity(prev.severity, f, p)
                label = ""
                if c is not None and q is not None:
                    label = reports.progression(c, q, cur.labels.get(f) in (1.0, -1.0), prev.labels.get(f) in (1.0, -1.0))
                key = label_key(f)
                row[f"{key}_progression"] = label or None
                row[f"{key}_label_quality"] = (("multiple_experts" if abs(c - q) > 0.2 or abs(c - q) < 0.03
                                                else "one_expert") if label else None)
                any_label |= bool(label)
            if any_label:
                rows.append(row)
    return rows


def _physionet_jpg(dcm_path: Path) -> Image.Image:
    """A JPG the way PhysioNet made MIMIC-CXR-JPG: the DICOM's stored values min-max scaled to 8 bits,
    MONOCHROME1 inverted, then histogram-equalised (written at quality 95 by the caller)."""
    import pydicom
    from PIL import ImageOps

    ds = pydicom.dcmread(dcm_path)
    a = ds.pixel_array.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    u8 = np.zeros(a.shape, np.uint8) if hi <= lo else np.rint((a - lo) / (hi - lo) * 255).astype(np.uint8)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        u8 = 255 - u8
    return ImageOps.equalize(Image.fromarray(u8, mode="L"))


def _write_images(root: Path, patients: list[Patient], truths: dict[str, ImageTruth], size: int, seed: int,
                  shape: tuple[int, int] | None = None, jpg_style: str = "plain") -> None:
    jpg_root, dcm_root = root / "mimic-cxr-jpg", root / "mimic-cxr"
    total = sum(len(s.dicom_ids) for p in patients for s in p.studies)
    with progress_bar() as bar:
        job = bar.add_task("rendering images", total=total)
        for p in patients:
            for s in p.studies:
                sdir = study_dir(p.subject_id, s.study_id)
                for j, (dicom_id, view) in enumerate(zip(s.dicom_ids, s.views)):
                    jpg, dcm = jpg_root / sdir / f"{dicom_id}.jpg", dcm_root / sdir / f"{dicom_id}.dcm"
                    if jpg.exists() and dcm.exists():  # resumed build
                        bar.advance(job)
                        continue
                    rng = np.random.default_rng([seed, 31337, p.index, s.index, j])
                    img = render(s.severity, p.anatomy, view, s.domain, size, rng)
                    if shape is not None and shape != (size, size):  # non-square (rows, columns), like real films
                        img = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(
                            (shape[1], shape[0]), Image.BILINEAR), dtype=np.float32).clip(0, 1)
                    out = io.BytesIO()
                    tmp = dcm.with_name(dcm.name + ".tmp")
                    write_dicom(tmp, img, truths[dicom_id])
                    if jpg_style == "physionet":
                        _physionet_jpg(tmp).save(out, format="JPEG", quality=95)
                    else:
                        Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L").save(out, format="JPEG", quality=92)
                    os.replace(tmp, dcm)
                    _atomic_write(jpg, out.getvalue())
                    bar.advance(job)


def _break_files(root: Path, truths: list[ImageTruth], broken: dict[str, int], seed: int) -> None:
    """Delete, truncate or empty some JPGs (deterministic per seed) and list them in ``broken_files.json``."""
    rng = np.random.default_rng([seed, 4242])
    order = [truths[i] for i in rng.permutation(len(truths))]
    done: dict[str, list[str]] = {}
    at = 0
    for kind in ("missing", "truncated", "empty"):
        for t in order[at: at + int(broken.get(kind, 0))]:
            path = root / "mimic-cxr-jpg" / study_dir(t.subject_id, t.study_id) / f"{t.dicom_id}.jpg"
            if kind == "missing":
                path.unlink()
            elif kind == "truncated":
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
            else:
                path.write_bytes(b"")
            done.setdefault(kind, []).append(t.dicom_id)
        at += int(broken.get(kind, 0))
    _atomic_write(root / BROKEN_FILES_NAME, json.dumps(done, indent=1).encode())


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic(root: str | Path | None = None, *, seed: int = 0, n_patients: int = DEFAULT_N_PATIENTS,
                     pixels: str = "full", teachers: bool = True, n_images: int | None = None,
                     image_size: int | None = None, shifted_test: bool = False, shift_rate: float = 0.15,
                     tasks: Sequence[str] = ("diagnose",), samples: int = 1,
                     image_shape: tuple[int, int] | None = None, jpg_style: str = "plain",
                     broken: dict[str, int] | None = None, test_patients: int = 0) -> Path:
    """Build the synthetic MIMIC-CXR once and return its root (see the module docstring for the layout).

    root: folder to build in; default ``$CXR_MAX_CACHE/synthetic-v3-seed{seed}-n{n_patients}-{pixels}``.
    pixels: "full" (``image_size`` default 256), "tiny" (default 32) or "none" (tables, reports, truth and
        trajectories only; for CXR-MAX-scale benchmarks).
    teachers: also write the seven simulated teachers' trajectories (``tasks`` x ``samples`` per image).
    n_images: build exactly this many images (e.g. 24426, CXR-MAX's count) instead of ``n_patients`` patients.
    shifted_test: render every test-split image in the "shifted" (other hospital) domain;
    shift_rate: the share of other studies rendered shifted.
    image_shape: (rows, columns) of every image, e.g. ``(320, 256)``: non-square and larger than the
        default, as real films are (the metadata's Rows/Columns follow).
    jpg_style: "plain" (the rendered image, quality 92) or "physionet" (from the 12-bit DICOM: min-max,
        MONOCHROME1 inverted, histogram equalisation, quality 95, as PhysioNet made MIMIC-CXR-JPG).
    broken: damage files on purpose, as real downloads are: ``{"missing": n, "truncated": n, "empty": n}``
        JPGs (chosen deterministically); what was damaged is listed in ``broken_files.json``.
    test_patients: that many more patients, all in the test split (the first ``n_patients`` are the world
        they would be without them, splits included): a larger test set at the same training size.

    The default world carries the quirks of real copies that do not touch its frontal images (see
    :mod:`cxr_max.synthetic.world` and :func:`cxr_max.synthetic.reports.apply_record_quirks`).
    """
    if pixels not in PIXELS:
        raise ValueError(f"pixels must be one of {PIXELS}, got {pixels!r}")
    size = image_size or _default_size(pixels)
    if size < 8:
        raise ValueError(f"image_size must be >= 8, got {size}")
    if jpg_style not in JPG_STYLES:
        raise ValueError(f"jpg_style must be one of {JPG_STYLES}, got {jpg_style!r}")
    bad = set(broken or {}) - {"missing", "truncated", "empty"}
    if bad:
        raise ValueError(f"unknown broken-file kind(s) {sorted(bad)}; known: missing, truncated, empty")
    if broken and pixels == "none":
        raise ValueError("broken= damages image files; it needs pixels='full' or 'tiny'")
    shape = tuple(image_shape) if image_shape is not None else (size, size)
    params = {"format": FORMAT_VERSION, "seed": seed, "n_patients": None if n_images else n_patients,
              "n_images": n_images, "pixels": pixels, "image_size": size, "shifted_test": shifted_test,
              "shift_rate": shift_rate, "image_shape": list(shape), "jpg_style": jpg_style,
              "broken": dict(sorted((broken or {}).items()))}
    if test_patients:
        params["test_patients"] = test_patients
    if root is None:
        root = cache_dir() / synthetic_name(seed, n_patients, pixels, n_images=n_images, image_size=image_size,
                                            shifted_test=shifted_test, shift_rate=shift_rate, image_shape=image_shape,
                                            jpg_style=jpg_style, broken=broken, test_patients=test_patients)
    root = Path(root)
    # the teachers are part of what the trajectories are: a changed teacher writes them again
    traj_params = {"seed": seed, "tasks": list(tasks), "samples": samples, "teachers": teachers_fingerprint()}
    with _lock(root.parent / f".{root.name}.lock"):
        done = root / ".complete"
        if done.exists() and json.loads(done.read_text()) != params:
            raise ValueError(f"{root} holds a synthetic world built with other options "
                             f"({done.read_text().strip()}); pass another root")
        patients = None
        if not done.exists():
            building = root / ".building"
            if root.exists() and any(root.iterdir()) and not building.exists():
                raise ValueError(f"{root} exists and is not a synthetic world under construction; "
                                 "refusing to write into it (pass an empty or new folder)")
            root.mkdir(parents=True, exist_ok=True)
            if building.exists() and json.loads(building.read_text() or "{}") != params:
                shutil.rmtree(root)  # an interrupted build with other options: start over
                root.mkdir(parents=True)
            building.write_text(json.dumps(params))
            patients = generate_world(seed=seed, n_patients=n_patients, n_images=n_images,
                                      shifted_test=shifted_test, shift_rate=shift_rate, test_patients=test_patients)
            truths = image_truths(patients)
            _write_tables(root, patients, shape)
            _write_reports(root, patients)
            rows = ms_cxr_t_rows(patients)
            _atomic_write(root / "ms-cxr-t" / MS_CXR_T_FILE, _csv_bytes(MS_CXR_T_COLUMNS, rows))
            if pixels != "none":
                _write_images(root, patients, {t.dicom_id: t for t in truths}, size, seed,
                              shape=shape if image_shape is not None else None, jpg_style=jpg_style)
                if broken:
                    _break_files(root, truths, broken, seed)
            _atomic_write(root / "truth.jsonl", "".join(t.to_json() + "\n" for t in truths).encode("utf-8"))
            done.write_text(json.dumps(params))
            building.unlink()
        tdone = root / "trajectories" / ".complete"
        if teachers and (not tdone.exists() or json.loads(tdone.read_text()) != traj_params):
            if tdone.exists():
                tdone.unlink()
            truth = {t.dicom_id: t for t in image_truths(patients)} if patients is not None else None
            simulate_trajectories(root, tasks=tasks, samples=samples, seed=seed, truth=truth)
            tdone.write_text(json.dumps(traj_params))
    return root

"""Tiny MIMIC-CXR trees for the tests of cxr_max.mimic, written from scratch in a tmp folder.

The layout follows docs/data.md ("MIMIC-CXR on disk"): a JPG root with ``files/p??/p<subject>/s<study>/<dicom>.jpg``
and the four ``mimic-cxr-2.0.0-*.csv.gz`` tables; a DICOM root with the same tree in ``.dcm``, the
per-study ``s<study>.txt`` reports (or ``mimic-cxr-reports.zip``) and the record lists.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr_max.labels import CHEXPERT_LABELS

META_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]


def dicom_id(name: str) -> str:
    """A deterministic dicom_id in the PhysioNet format (5 groups of 8 hex characters)."""
    h = hashlib.sha256(name.encode()).hexdigest()
    return "-".join(h[i * 8:(i + 1) * 8] for i in range(5))


# (subject, study, view, StudyDate, StudyTime, split); one entry per image
IMAGES = [
    ("10000032", "53189527", "AP", "21800626", "165500.312", "train"),
    ("10000032", "50414267", "PA", "21800506", "213014.531", "train"),
    ("10000032", "50414267", "LATERAL", "21800506", "213014.531", "train"),
    ("10000032", "56699142", "", "21800506", "84725.234", "train"),  # same day, earlier: ordered first
    ("10000764", "57375967", "AP", "21321014", "204502", "validate"),
    ("10000764", "57375967", "LL", "21321014", "204502", "validate"),
    ("11000001", "59999999", "PA", "21500101", "", "test"),  # no label row; no StudyTime
]
IMAGE_IDS = [dicom_id(f"img{i}") for i in range(len(IMAGES))]

# study -> label values as written in the CSV ("" = not mentioned)
CHEXPERT = {
    "50414267": {"Atelectasis": "1.0", "Cardiomegaly": "-1.0", "No Finding": "", "Pleural Effusion": "0.0"},
    "53189527": {"No Finding": "1.0"},
    "56699142": {"Edema": "1.0", "Pneumothorax": "0.0"},
    "57375967": {"Support Devices": "1.0", "Lung Opacity": "-1.0"},
}
NEGBIO = {
    "50414267": {"Atelectasis": "0.0"},
    "53189527": {"No Finding": "1.0"},
    "56699142": {"Edema": "-1.0"},
    "57375967": {"Support Devices": "1.0"},
}
SUBJECT_OF = {s: subj for subj, s, *_ in IMAGES}

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset of shortness of breath.  Evaluate for
 pneumonia.

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 There is a small left pleural effusion.  The cardiac silhouette is top normal.
 No pneumothorax.

 IMPRESSION:

 Small left pleural effusion.
"""


def write_csv(path: Path, header: list[str], rows: list[list[str]], *, gz: bool = True) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode()
    if gz:
        path = path.with_name(path.name + ".gz") if not path.name.endswith(".gz") else path
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def label_rows(values: dict[str, dict[str, str]]) -> list[list[str]]:
    return [[SUBJECT_OF[study], study, *(v.get(name, "") for name in CHEXPERT_LABELS)] for study, v in values.items()]


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: list[int] | None = None,
    voi_lut_bits: int = 16,
) -> Path:
    """Write a single-frame grayscale DICOM (CR) with 16-bit allocated, ``bits_stored`` used."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID = "10000032"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut), 0, voi_lut_bits])  # LUT Descriptor
        item.add_new(0x00283006, "US", voi_lut)  # LUT Data, as US (its VR is ambiguous: US or OW)
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rgb_dicom(path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 4, 4, 3, 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((4, 4, 3), np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(rows: int = 8, cols: int = 8, top: int = 4095) -> np.ndarray:
    """A deterministic 12-bit ramp from 0 to ``top``."""
    return np.linspace(0, top, rows * cols).round().astype(np.uint16).reshape(rows, cols)


@dataclasses.dataclass
class MimicTree:
    jpg_root: Path
    dicom_root: Path | None
    image_ids: list[str]


# Radiologists' labels of the test study, as mimic-cxr-2.1.0-test-set-labeled.csv prints them: study_id only,
# "Airspace Opacity" for CheXpert's "Lung Opacity".
TEST_SET_LABELS = {"59999999": {"Airspace Opacity": "1.0", "Pleural Effusion": "0.0", "No Finding": ""}}


def radiologist_header() -> list[str]:
    return ["study_id", *("Airspace Opacity" if n == "Lung Opacity" else n for n in CHEXPERT_LABELS)]


def make_mimic_tree(
    tmp: Path, *, dicom: bool = True, reports: str | None = "tree", gz: bool = True, test_labels: bool = False
) -> MimicTree:
    """Write a complete tiny MIMIC-CXR-JPG (+ DICOM) copy under ``tmp``.

    ``reports``: "tree" (per-study .txt in the DICOM root), "zip" (``mimic-cxr-reports.zip`` with
    inner paths ``files/...``), "zip-prefixed" (inner paths under a top folder), "tar.gz"
    (``mimic-cxr-reports.tar.gz`` with a top folder, as PhysioNet also offers it), or None.
    ``test_labels`` adds ``mimic-cxr-2.1.0-test-set-labeled.csv`` (:data:`TEST_SET_LABELS`).
    """
    jpg_root = tmp / "mimic-cxr-jpg"
    dicom_root = tmp / "mimic-cxr" if dicom else None
    rng = np.random.default_rng(0)
    meta_rows, split_rows, record_rows = [], [], []
    for (subject, study, view, date, time, split), did in zip(IMAGES, IMAGE_IDS):
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{did}"
        img = (rng.random((24, 20)) * 255).astype(np.uint8)
        (jpg_root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(jpg_root / f"{rel}.jpg", quality=90)
        meta_rows.append([did, subject, study, "CHEST (PA AND LAT)", view, "24", "20", date, time, "Chest", "postero-anterior", "Erect"])
        split_rows.append([did, study, subject, split])
        record_rows.append([subject, study, did, f"{rel}.dcm"])
        if dicom_root is not None:
            write_dicom(dicom_root / f"{rel}.dcm", gradient(24, 20), window=(2048, 4096))
    write_csv(jpg_root / "mimic-cxr-2.0.0-metadata.csv", META_COLUMNS, meta_rows, gz=gz)
    write_csv(jpg_root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz=gz)
    header = ["subject_id", "study_id", *CHEXPERT_LABELS]
    write_csv(jpg_root / "mimic-cxr-2.0.0-chexpert.csv", header, label_rows(CHEXPERT), gz=gz)
    write_csv(jpg_root / "mimic-cxr-2.0.0-negbio.csv", header, label_rows(NEGBIO), gz=gz)

    if dicom_root is not None:
        studies = sorted({(s, t) for s, t, *_ in IMAGES})
        write_csv(dicom_root / "cxr-record-list.csv", ["subject_id", "study_id", "dicom_id", "path"], record_rows)
        write_csv(
            dicom_root / "cxr-study-list.csv",
            ["subject_id", "study_id", "path"],
            [[s, t, f"files/p{s[:2]}/p{s}/s{t}.txt"] for s, t in studies],
        )
        texts = {f"files/p{s[:2]}/p{s}/s{t}.txt": REPORT.replace("left", "right") if t == "57375967" else REPORT for s, t in studies}
        if reports == "tree":
            for rel, text in texts.items():
                (dicom_root / rel).write_text(text)
        elif reports in ("zip", "zip-prefixed"):
            prefix = "mimic-cxr-reports/" if reports == "zip-prefixed" else ""
            with zipfile.ZipFile(dicom_root / "mimic-cxr-reports.zip", "w") as zf:
                for rel, text in texts.items():
                    zf.writestr(prefix + rel, text)
        elif reports == "tar.gz":
            with tarfile.open(dicom_root / "mimic-cxr-reports.tar.gz", "w:gz") as tf:
                for rel, text in texts.items():
                    data = text.encode()
                    info = tarfile.TarInfo("mimic-cxr-reports/" + rel)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    if test_labels:
        header = radiologist_header()
        write_csv(jpg_root / "mimic-cxr-2.1.0-test-set-labeled.csv", header,
                  [[study, *(v.get(c, "") for c in header[1:])] for study, v in TEST_SET_LABELS.items()], gz=False)
    return MimicTree(jpg_root, dicom_root, list(IMAGE_IDS))

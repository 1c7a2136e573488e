"""DICOM copies of the synthetic images: 12-bit CR/DX with both photometric interpretations.

Variety, chosen per image from its dicom_id (so deterministic): about 40 % MONOCHROME1 (stored values
inverted: high = dark), about 20 % stored at half scale with RescaleSlope 2 (the modality LUT restores the
12-bit range), about half carry WindowCenter/WindowWidth. Decoding (modality LUT, then window, then invert
MONOCHROME1) gives back the JPG's image up to rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from cxr_max.synthetic.world import ImageTruth

_DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def _uid(hex_text: str) -> str:
    """A deterministic '2.25.<int>' UID from 32 hex characters."""
    return "2.25." + str(int(hex_text[:32], 16))


def dicom_variant(dicom_id: str) -> dict[str, object]:
    """The photometric/rescale/window choices for an image (from its id, deterministic)."""
    h = int(dicom_id.replace("-", "")[-8:], 16)
    return {
        "photometric": "MONOCHROME1" if h % 5 < 2 else "MONOCHROME2",
        "slope": 2.0 if (h >> 4) % 5 == 0 else 1.0,
        "window": (h >> 8) % 2 == 0,
    }


def write_dicom(path: Path, img: np.ndarray, truth: ImageTruth) -> None:
    """Write ``img`` (float [0, 1]) as a 12-bit DICOM file for ``truth``'s image."""
    v = dicom_variant(truth.dicom_id)
    value = np.round(np.clip(img, 0, 1) * 4095).astype(np.uint16)  # modality values 0..4095
    if v["photometric"] == "MONOCHROME1":
        value = (4095 - value).astype(np.uint16)
    stored = (value // 2).astype(np.uint16) if v["slope"] == 2.0 else value

    sop_uid = _uid(truth.dicom_id.replace("-", ""))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "2.25.1234567890123456789"
    meta.ImplementationVersionName = "CXR_MAX_SYNTH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(f"{int(truth.study_id):032x}")
    ds.SeriesInstanceUID = _uid(f"{int(truth.study_id) * 10 + 1:032x}")
    ds.PatientID = truth.subject_id
    ds.PatientName = "___"
    ds.StudyDate = truth.study_date
    ds.StudyTime = truth.study_time
    ds.Modality = "DX" if truth.view == "AP" else "CR"
    ds.ViewPosition = truth.view
    ds.BodyPartExamined = "CHEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = v["photometric"]
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = v["slope"]
    ds.RescaleIntercept = 0
    ds.RescaleType = "US"
    if v["window"]:
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)

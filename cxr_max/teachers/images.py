"""The images to ask teachers about, read from a MIMIC-CXR-JPG root.

A small local reader of ``mimic-cxr-2.0.0-metadata.csv.gz`` (and the CheXpert table, for the known
diagnoses of the ``explain`` task). It is a stand-in until :mod:`cxr_max.mimic` offers the same
listing; the path rule is PhysioNet's: ``files/p{sid[:2]}/p{sid}/s{study}/{dicom}.jpg``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from cxr_max.errors import DataError
from cxr_max.labels import CHEXPERT_LABELS

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv.gz"
FRONTAL_VIEWS = ("PA", "AP")


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """One image to send: identifiers, file, view, and the report's positive findings (for ``explain``)."""

    subject_id: str
    study_id: str
    dicom_id: str
    path: Path
    view: str = ""
    diagnoses: tuple[str, ...] = ()


def jpg_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """PhysioNet's path rule for a MIMIC-CXR-JPG image."""
    return Path(root) / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def shard_of(dicom_id: str, n: int) -> int:
    """The shard (0..n-1) an image belongs to: a stable hash of its dicom_id, the same in every process."""
    return int.from_bytes(hashlib.blake2b(dicom_id.encode(), digest_size=8).digest(), "big") % n


def _read_csv(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in ("dicom_id", "subject_id", "study_id")}
            ),
        )
    except (pa.ArrowInvalid, KeyError) as e:
        raise DataError(f"cannot read the table (expected columns {columns}): {e}", path=path) from None


def list_images(
    jpg_root: str | Path, *, frontal_only: bool = False, limit: int | None = None, with_diagnoses: bool = True
) -> list[ImageItem]:
    """The images of a MIMIC-CXR-JPG root in metadata order (optionally frontal only, the first ``limit``).

    ``diagnoses`` holds the study's CheXpert labels that are 1.0 (from the CheXpert table when present).
    """
    root = Path(jpg_root)
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise DataError(f"no {METADATA} here; is this a MIMIC-CXR-JPG root?", path=root)
    meta = _read_csv(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"]).to_pylist()
    positives: dict[str, tuple[str, ...]] = {}
    chex_path = root / CHEXPERT
    if with_diagnoses and chex_path.is_file():
        table = _read_csv(chex_path, ["study_id", *CHEXPERT_LABELS])
        cols = {name: table.column(name).to_pylist() for name in CHEXPERT_LABELS}
        for i, study in enumerate(table.column("study_id").to_pylist()):
            positives[study] = tuple(n for n in CHEXPERT_LABELS if n != "No Finding" and cols[n][i] == 1.0)
    items: list[ImageItem] = []
    for row_no, row in enumerate(meta, start=2):  # row 1 is the header
        if not row["dicom_id"] or not row["subject_id"] or not row["study_id"]:
            raise DataError("empty dicom_id/subject_id/study_id", path=meta_path, row=row_no)
        view = row["ViewPosition"] or ""
        if frontal_only and view not in FRONTAL_VIEWS:
            continue
        items.append(
            ImageItem(
                subject_id=row["subject_id"],
                study_id=row["study_id"],
                dicom_id=row["dicom_id"],
                path=jpg_path(root, row["subject_id"], row["study_id"], row["dicom_id"]),
                view=view,
                diagnoses=positives.get(row["study_id"], ()),
            )
        )
        if limit is not None and len(items) >= limit:
            break
    return items


def image_data_url(path: Path) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URL; raises DataError (naming the file) if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image: {e.strerror or e}", path=path) from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()  # header and structure check, no full decode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"not a readable image: {e}", path=path) from None
    mime = {"JPEG": "image/jpeg", "PNG": "image/png"}.get(fmt or "", "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")

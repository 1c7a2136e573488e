"""The images to ask teachers about, listed from a MIMIC-CXR-JPG root through :class:`cxr_max.mimic.MimicRoot`."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
from pathlib import Path

import pyarrow.compute as pc

from cxr_max.errors import DataError
from cxr_max.labels import CHEXPERT_LABELS

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


def shard_of(dicom_id: str, n: int) -> int:
    """The shard (0..n-1) an image belongs to: a stable hash of its dicom_id, the same in every process."""
    return int.from_bytes(hashlib.blake2b(dicom_id.encode(), digest_size=8).digest(), "big") % n


def list_images(
    jpg_root: str | Path, *, frontal_only: bool = False, limit: int | None = None, with_diagnoses: bool = True
) -> list[ImageItem]:
    """The images of a MIMIC-CXR-JPG root in metadata order (optionally frontal only, the first ``limit``).

    ``diagnoses`` holds the study's CheXpert labels that are 1.0 (when the root has a CheXpert table).
    """
    from cxr_max.mimic import MimicRoot, find_table

    root = Path(jpg_root)
    if find_table(root, "metadata", required=False) is None:
        raise DataError("no mimic-cxr-2.0.0-metadata.csv(.gz) here; is this a MIMIC-CXR-JPG root?", path=root)
    images = MimicRoot(root).images()
    if frontal_only:
        images = images.filter(pc.is_in(images.column("view_position"), value_set=pc.cast(list(FRONTAL_VIEWS), "string")))
    if limit is not None:
        images = images.slice(0, limit)
    labels = images.column("labels").to_pylist() if with_diagnoses else [None] * images.num_rows
    return [
        ImageItem(
            subject_id=r["subject_id"], study_id=r["study_id"], dicom_id=r["dicom_id"], path=Path(r["image_path"]),
            view=r["view_position"] or "",
            diagnoses=tuple(n for n in CHEXPERT_LABELS if n != "No Finding" and (lab or {}).get(n) == 1.0),
        )
        for r, lab in zip(images.select(["subject_id", "study_id", "dicom_id", "image_path", "view_position"]).to_pylist(), labels)
    ]


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

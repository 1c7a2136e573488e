"""The ``datasets`` feature pieces the configs' features are made of (each config assembles its own in
:mod:`cxr_max.builder.specs`)."""

from __future__ import annotations

import datasets
import pyarrow as pa

from cxr_max.labels import CHEXPERT_LABELS
from cxr_max.trajectories.schema import ARROW_SCHEMA, LATERALITY_TYPE

MESSAGE = {"role": datasets.Value("string"),
           "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
IDS = {"subject_id": datasets.Value("string"), "study_id": datasets.Value("string"), "dicom_id": datasets.Value("string")}
IMAGE_META = {
    "split": datasets.Value("string"),
    "view_position": datasets.Value("string"),
    "study_datetime": datasets.Value("timestamp[us]"),
}
_ARROW_TO_VALUE = {pa.string(): "string", pa.int32(): "int32", pa.bool_(): "bool"}


def image_feature(images: str, mode: str | None = None) -> datasets.Image | datasets.Value:
    """A decoded image (``images="decode"``; ``mode`` converts on decoding, e.g. "RGB") or its path."""
    return datasets.Image(mode=mode) if images == "decode" else datasets.Value("string")


def labels_feature() -> dict[str, datasets.Value]:
    """The 14 CheXpert labels as float32 (1, 0, -1 uncertain, null not mentioned)."""
    return {name: datasets.Value("float32") for name in CHEXPERT_LABELS}


def laterality_feature() -> dict[str, datasets.Value]:
    return {name: datasets.Value("string") for name in LATERALITY_TYPE.names}


def trajectory_fields() -> dict[str, object]:
    """The canonical trajectory fields (``cxr_max/trajectories/schema.py``) other than the ids."""
    out: dict[str, object] = {}
    for field in ARROW_SCHEMA:
        if field.name in IDS:
            continue
        if field.name == "labels":
            out["labels"] = labels_feature()
        elif field.name == "laterality":
            out["laterality"] = laterality_feature()
        else:
            out[field.name] = datasets.Value(_ARROW_TO_VALUE[field.type])
    return out

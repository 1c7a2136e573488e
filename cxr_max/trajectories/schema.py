"""The canonical trajectory schema: one record per (image, teacher, task, sample).

A record is a plain dict with exactly the fields of :data:`ARROW_SCHEMA`. JSONL files hold one
record per line; parquet files hold the same columns. ``labels`` is a struct of the 14 CheXpert
labels (1.0 positive, 0.0 negative, -1.0 uncertain, null not mentioned) and is null as a whole when
no labels were extracted. Identifiers are strings, as PhysioNet prints them (``"10000032"``).
``status`` is ``"ok"`` for a completion and ``"failed"`` for a request that finally failed: failure
rows keep the key so a resumed collection knows the work was tried, and readers drop them only
under an explicit policy (see :mod:`cxr_max.trajectories.io`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pyarrow as pa

from cxr_max.labels import CHEXPERT_LABELS, LABELS_TYPE, LATERAL_FINDINGS

TASKS = ("explain", "report", "diagnose")
STATUSES = ("ok", "failed")

LATERALITY_TYPE = pa.struct([pa.field(name, pa.string()) for name in LATERAL_FINDINGS])

ARROW_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("study_id", pa.string(), nullable=False),
        pa.field("dicom_id", pa.string(), nullable=False),
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("teacher_version", pa.string()),
        pa.field("collected_at", pa.string()),  # ISO 8601, UTC
        pa.field("task", pa.string(), nullable=False),
        pa.field("sample", pa.int32(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("reasoning", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("refusal", pa.bool_()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("labels", LABELS_TYPE),
        pa.field("laterality", LATERALITY_TYPE),
        pa.field("system", pa.string()),  # the system turn of the conversation, when there was one
    ]
)
FIELDS: tuple[str, ...] = tuple(ARROW_SCHEMA.names)
REQUIRED: tuple[str, ...] = ("subject_id", "study_id", "dicom_id", "teacher", "task", "sample")
KEY_FIELDS: tuple[str, ...] = ("dicom_id", "teacher", "task", "sample")

EXAMPLE_RECORD: dict[str, Any] = {
    "subject_id": "10000032",
    "study_id": "50414267",
    "dicom_id": "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
    "teacher": "qwen-vl-max",
    "teacher_version": "2025-08-13",
    "collected_at": "2026-11-29T02:31:00+00:00",
    "task": "diagnose",
    "sample": 0,
    "prompt": "This is a patient's chest DR image <image>. Please help me determine the patient's disease.",
    "reasoning": "The cardiac silhouette is enlarged. Blunting of the left costophrenic angle ...",
    "answer": "The disease of this patient is cardiomegaly and pleural effusion.",
    "raw": "<think>The cardiac silhouette is enlarged. ...</think>The disease of this patient is ...",
    "refusal": False,
    "status": "ok",
    "error": None,
    "prompt_tokens": 812,
    "completion_tokens": 164,
    "labels": {name: None for name in CHEXPERT_LABELS} | {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0},
    "laterality": {"Pleural Effusion": "left", "Pneumothorax": None, "Consolidation": None, "Atelectasis": None},
    "system": None,
}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def record_key(rec: dict[str, Any]) -> tuple[str, str, str, int]:
    """The identity of a record: (dicom_id, teacher, task, sample). Duplicates of a key are errors."""
    return (rec["dicom_id"], rec["teacher"], rec["task"], int(rec["sample"]))


def normalize_record(rec: dict[str, Any], *, ids_from_metadata: bool = False) -> dict[str, Any]:
    """Fill the optional fields with their defaults and coerce identifier types.

    Raises ``ValueError`` (without a location; readers add the file and row) when a required field
    is missing or a value has the wrong type. Unknown fields are an error too, so that a misspelt
    column is never silently ignored. ``ids_from_metadata`` lets ``subject_id``/``study_id`` be
    missing (left as "", to be filled from the image metadata by dicom_id).
    """
    unknown = set(rec) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; the canonical fields are {list(FIELDS)}")
    optional_ids = ("subject_id", "study_id") if ids_from_metadata else ()
    missing = [f for f in REQUIRED if rec.get(f) in (None, "") and f not in optional_ids]
    if missing:
        raise ValueError(f"missing required field(s) {missing}")
    out = {name: rec.get(name) for name in FIELDS}
    for f in optional_ids:
        if out[f] is None:
            out[f] = ""
    for f in ("subject_id", "study_id"):
        v = out[f]
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError(f"{f} must be a string or integer, got {v!r}")
        out[f] = str(v)
    for f in ("dicom_id", "teacher", "task"):
        if not isinstance(out[f], str):
            raise ValueError(f"{f} must be a string, got {out[f]!r}")
    s = out["sample"]
    if isinstance(s, bool) or not isinstance(s, int) and not (isinstance(s, float) and s.is_integer()):
        raise ValueError(f"sample must be an integer, got {s!r}")
    out["sample"] = int(s)
    out["status"] = out["status"] or "ok"
    if out["status"] not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {out['status']!r}")
    if out["refusal"] is None:
        out["refusal"] = False
    if not isinstance(out["refusal"], bool):
        raise ValueError(f"refusal must be true/false, got {out['refusal']!r}")
    labels = out["labels"]
    if labels is not None:
        if not isinstance(labels, dict):
            raise ValueError(f"labels must be an object of CheXpert label -> value, got {type(labels).__name__}")
        bad = set(labels) - set(CHEXPERT_LABELS)
        if bad:
            raise ValueError(f"unknown label name(s) {sorted(bad)}")
        clean = {}
        for name in CHEXPERT_LABELS:
            v = labels.get(name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) not in (1.0, 0.0, -1.0):
                    raise ValueError(f"label {name!r} must be 1, 0, -1 or null, got {v!r}")
                v = float(v)
            clean[name] = v
        out["labels"] = clean
    lat = out["laterality"]
    if lat is not None:
        if not isinstance(lat, dict) or set(lat) - set(LATERAL_FINDINGS):
            raise ValueError(f"laterality must map {list(LATERAL_FINDINGS)} to left/right/bilateral/null")
        out["laterality"] = {name: lat.get(name) for name in LATERAL_FINDINGS}
    return out

"""The 14 CheXpert labels, spelled exactly as in the MIMIC-CXR CSV header, and their value codes."""

from __future__ import annotations

import pyarrow as pa

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

# The five findings of MS-CXR-T (temporal progression) and of most report-generation papers' "5 findings".
MS_CXR_T_FINDINGS: tuple[str, ...] = ("Consolidation", "Edema", "Pleural Effusion", "Pneumonia", "Pneumothorax")
FIVE_FINDINGS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# The paper's six headline findings, in the order of its tables: every results table of the project (teachers,
# consensus, students) reports these.
TABLE_FINDINGS: tuple[str, ...] = ("Consolidation", "Pleural Effusion", "Pneumothorax", "Edema", "Cardiomegaly",
                                   "Atelectasis")

# Findings that have a side.
LATERAL_FINDINGS: tuple[str, ...] = ("Pleural Effusion", "Pneumothorax", "Consolidation", "Atelectasis")
LATERALITIES: tuple[str, ...] = ("left", "right", "bilateral")

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
# None means "not mentioned"; it is kept distinct from NEGATIVE everywhere.

PROGRESSION_CLASSES: tuple[str, ...] = ("improving", "stable", "worsening")


def label_key(name: str) -> str:
    """'Pleural Effusion' -> 'pleural_effusion' (column-safe form used by MS-CXR-T and parquet exports)."""
    return name.lower().replace(" ", "_")

# The 14 labels as one Arrow struct (float32 each: 1.0 / 0.0 / -1.0 / null), shared by the MIMIC tables,
# the trajectory schema and the labeler's output.
LABELS_TYPE = pa.struct([pa.field(name, pa.float32()) for name in CHEXPERT_LABELS])

"""Evaluation: report-generation metrics, CheXpert-style label extraction, clinical metrics with CIs."""

from cxr_max.evaluation.labeler import (
    LabelResult,
    label_report,
    label_report_full,
    label_reports,
    label_reports_full,
    labels_to_arrow,
    laterality_to_arrow,
    report_body,
)

__all__ = [
    "LabelResult",
    "label_report",
    "label_report_full",
    "label_reports",
    "label_reports_full",
    "labels_to_arrow",
    "laterality_to_arrow",
    "report_body",
]

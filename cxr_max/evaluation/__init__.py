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
from cxr_max.evaluation.clinical import (
    bootstrap_resample_weights,
    clinical_metrics,
    label_f1,
    ms_cxr_t_metrics,
    parse_progression,
    read_progression,
    temporal_accuracy,
)
from cxr_max.evaluation.model_metrics import chexbert_f1, radgraph_f1
from cxr_max.evaluation.nlg_metrics import report_metrics
from cxr_max.evaluation.tokenize import java_available, simple_tokenize

__all__ = [
    "bootstrap_resample_weights",
    "chexbert_f1",
    "radgraph_f1",
    "clinical_metrics",
    "java_available",
    "label_f1",
    "ms_cxr_t_metrics",
    "parse_progression",
    "read_progression",
    "report_metrics",
    "simple_tokenize",
    "temporal_accuracy",
    "LabelResult",
    "label_report",
    "label_report_full",
    "label_reports",
    "label_reports_full",
    "labels_to_arrow",
    "laterality_to_arrow",
    "report_body",
]

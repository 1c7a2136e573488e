"""Hub artifacts: export configs to parquet + card, render cards, push with credentialed-data-safe defaults.

See :mod:`cxr_max.hub.safety` for what may leave the machine, :mod:`cxr_max.hub.export` for the export
layout, :mod:`cxr_max.hub.cards` for the card templates and :mod:`cxr_max.hub.push` for pushes.
"""

from cxr_max.hub.cards import check_template_fields, render_dataset_card, render_model_card, teacher_table
from cxr_max.hub.export import ExportResult, export_dataset, num_shards, read_manifest
from cxr_max.hub.push import PushError, PushPlan, push_checkpoint, push_dataset, push_folder
from cxr_max.hub.safety import PIXEL_COLUMNS, REPORT_COLUMNS, TRAJECTORY_COLUMNS

__all__ = [
    "PIXEL_COLUMNS", "REPORT_COLUMNS", "TRAJECTORY_COLUMNS", "ExportResult", "PushError", "PushPlan",
    "check_template_fields", "export_dataset", "num_shards", "push_checkpoint", "push_dataset", "push_folder",
    "read_manifest", "render_dataset_card", "render_model_card", "teacher_table",
]

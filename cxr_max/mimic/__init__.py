"""Reading local PhysioNet MIMIC-CXR copies: paths, tables, reports, images, and :class:`MimicRoot`.

>>> from cxr_max.mimic import MimicRoot
>>> root = MimicRoot("/data/mimic-cxr-jpg/2.1.0", "/data/mimic-cxr/2.1.0")   # doctest: +SKIP
>>> images = root.images()          # pyarrow Table, one row per image    # doctest: +SKIP
>>> print(root.validate().summary())                                       # doctest: +SKIP
"""

from cxr_max.mimic.images import dicom_to_uint8, read_dicom, read_dicom_header, read_jpg
from cxr_max.mimic.paths import dcm_relpath, jpg_relpath, report_relpath, safe_join, study_relpath, validate_ids
from cxr_max.mimic.reports import ReportStore, parse_report, read_report
from cxr_max.mimic.root import IMAGES_SCHEMA, STUDIES_SCHEMA, MimicRoot
from cxr_max.mimic.tables import (
    TABLES,
    find_table,
    order_studies,
    read_labels,
    read_metadata,
    read_record_list,
    read_split,
    read_study_list,
    read_table,
)
from cxr_max.mimic.validate import Issue, ValidationReport

__all__ = [
    "MimicRoot", "IMAGES_SCHEMA", "STUDIES_SCHEMA", "ValidationReport", "Issue",
    "read_jpg", "read_dicom", "read_dicom_header", "dicom_to_uint8",
    "parse_report", "read_report", "ReportStore",
    "TABLES", "find_table", "read_table", "read_metadata", "read_split", "read_labels",
    "read_record_list", "read_study_list", "order_studies",
    "jpg_relpath", "dcm_relpath", "report_relpath", "study_relpath", "safe_join", "validate_ids",
]

"""The compare stage: consensus positives, teacher reliability, drift detection, drift-aware negatives.

Pipeline (see :mod:`cxr_max.drift.compare`): trajectories -> :class:`~cxr_max.drift.findings.Panel`
(an ``[images x teachers x 14]`` claim tensor) -> consensus (``vote``, ``dawid_skene`` or ``model``)
-> reliability and drift points (river detectors) -> ``apo`` preference rows and a drift report.
"""

from cxr_max.drift.compare import CompareResult, compare, run_compare
from cxr_max.drift.consensus import Consensus, dawid_skene_consensus, usable_images, vote_consensus
from cxr_max.drift.findings import Panel, build_panel
from cxr_max.drift.io import read_trajectories, stream_positions
from cxr_max.drift.preferences import (
    EXTRA_FIELDS, PREFERENCE_FIELDS, build_preferences, render_trajectory, write_preferences,
)
from cxr_max.drift.reliability import DriftPoint, detect_drift, pairwise_agreement, teacher_reliability
from cxr_max.drift.report import print_table, write_report

__all__ = [
    "CompareResult", "Consensus", "DriftPoint", "EXTRA_FIELDS", "PREFERENCE_FIELDS", "Panel", "build_panel",
    "build_preferences", "compare", "dawid_skene_consensus", "detect_drift", "pairwise_agreement", "print_table",
    "read_trajectories", "render_trajectory", "run_compare", "stream_positions", "teacher_reliability",
    "usable_images", "vote_consensus", "write_preferences", "write_report",
]

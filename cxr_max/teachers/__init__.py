"""Teacher distillation: registry, OpenAI-compatible client, resumable collector, local sim server.

Quick start (the embedded default)::

    from cxr_max.teachers import collect, run_sim_server
    with run_sim_server() as server:                    # simulated teachers on a free loopback port
        summary = collect("sim", jpg_root, "out/", base_url=server.base_url, tasks=("diagnose",))
"""

from cxr_max.teachers.client import RequestFailed, RetryBudget, TeacherClient
from cxr_max.teachers.collector import Summary, TeacherSummary, acollect, collect
from cxr_max.teachers.guard import ComplianceError, check_endpoint
from cxr_max.teachers.images import ImageItem, list_images, shard_of
from cxr_max.teachers.registry import Registry, TeacherSpec, load_registry, parse_registry
from cxr_max.teachers.server import EchoTeacher, FaultPlan, SimWorld, make_tiny_world, run_sim_server, serve
from cxr_max.teachers.store import read_records, scan_keys

__all__ = [
    "ComplianceError", "EchoTeacher", "FaultPlan", "make_tiny_world", "ImageItem", "Registry", "RequestFailed", "RetryBudget", "SimWorld", "Summary",
    "TeacherClient", "TeacherSpec", "TeacherSummary", "acollect", "check_endpoint", "collect", "list_images",
    "load_registry", "parse_registry", "read_records", "run_sim_server", "scan_keys", "serve", "shard_of",
]

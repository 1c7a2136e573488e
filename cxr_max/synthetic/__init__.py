"""The embedded synthetic MIMIC-CXR and the simulated drifting teachers.

>>> from cxr_max.synthetic import ensure_synthetic, load_truth, SIM_TEACHERS, simulate_trajectories
>>> root = ensure_synthetic()                 # builds once under $CXR_MAX_CACHE (~/.cache/cxr_max)
>>> truth = load_truth(root)                  # dicom_id -> ImageTruth

Modules: :mod:`.world` (patients, ids, dates, severities, ImageTruth), :mod:`.reports` (report text and the
CheXpert labels it states), :mod:`.render` (images with visible findings), :mod:`.dicom` (12-bit DICOM
copies), :mod:`.teachers` (the seven simulated teachers; their profile table is in its docstring),
:mod:`.simulate` (trajectory shards), :mod:`.build` (the on-disk layout and cache).
"""

from cxr_max.synthetic.build import DEFAULT_N_PATIENTS, cache_dir, ensure_synthetic, generate_world, synthetic_name
from cxr_max.synthetic.simulate import simulate_trajectories
from cxr_max.synthetic.teachers import SHARED_ERRORS, SIM_TEACHERS, SimulatedTeacher
from cxr_max.synthetic.world import FINDING_KEYS, ImageTruth, load_truth

__all__ = [
    "DEFAULT_N_PATIENTS",
    "FINDING_KEYS",
    "ImageTruth",
    "SHARED_ERRORS",
    "SIM_TEACHERS",
    "SimulatedTeacher",
    "cache_dir",
    "ensure_synthetic",
    "generate_world",
    "load_truth",
    "simulate_trajectories",
    "synthetic_name",
]

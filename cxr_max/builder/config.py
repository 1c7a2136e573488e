"""The options every ``cxr_max`` config takes (:class:`CxrMaxConfig`) and the cache key's input part.

The option list is also in the README ("Builder configs", "Options"); the data layouts they point at are in
``docs/data.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from cxr_max.trajectories.io import list_trajectory_files

OFFICIAL_SPLITS = {"train": "train", "validate": "validation", "test": "test"}  # MIMIC's name -> datasets' name
FRONTAL_VIEWS = ("PA", "AP")
# views="frontal": every frontal projection MIMIC-CXR's ViewPosition uses (AP AXIAL, decubitus PA/AP views),
# and, where ViewPosition is empty, the images whose ViewCodeSequence_CodeMeaning names a frontal view.
FRONTAL_VARIANTS = ("PA", "AP", "AP AXIAL", "PA LLD", "PA RLD", "AP LLD", "AP RLD")
FRONTAL_MEANINGS = ("postero-anterior", "antero-posterior")
TEST_LABEL_SOURCES = ("radiologist",)
IMAGE_MODES = ("decode", "path")
ON_ERROR = ("raise", "skip")
CHECK_IMAGES = ("verify", "decode", "exists", "none")
# The options naming files or folders: their sizes and mtimes are part of the cache key.
INPUT_OPTIONS = ("data_dir", "dicom_dir", "trajectories", "preferences", "ms_cxr_t")


@dataclasses.dataclass
class CxrMaxConfig(datasets.BuilderConfig):
    """Options of every config (a config ignores the ones it has no use for).

    Args:
        data_dir: MIMIC-CXR-JPG root (the folder with ``files/`` and the ``mimic-cxr-2.0.0-*.csv.gz``
            tables). None: the embedded synthetic MIMIC-CXR (see :mod:`cxr_max.sources`).
        dicom_dir: MIMIC-CXR (DICOM) root, for per-study report ``.txt`` files, ``mimic-cxr-reports.zip`` /
            ``.tar.gz`` and ``.dcm`` paths. Optional.
        trajectories: file or folder of teacher trajectories (JSONL / parquet, canonical schema).
        preferences: file or folder of compare-stage preference rows (``apo`` config).
        ms_cxr_t: MS-CXR-T CSV file or the folder holding it (``ms_cxr_t`` config).
        images: "decode" (a ``datasets.Image`` feature, decoded lazily on access) or "path" (strings).
        views: keep only these ViewPosition values. "frontal" means PA, AP and their variants
            (:data:`FRONTAL_VARIANTS`) and, where ViewPosition is empty, images whose
            ViewCodeSequence_CodeMeaning names a frontal view. None keeps all.
        splits: official splits to build (MIMIC names: train, validate, test).
        teachers / tasks: keep only these teachers / tasks. None keeps all.
        include_refusals: keep refusals. Default: True, except the ``sft`` config (False).
        labels: "chexpert" or "negbio" label table.
        on_error: "raise" (first bad input raises, naming file and row) or "skip" (counted, summarised).
        mapping: {their_field: canonical_field} for trajectory files in another layout.
        adapter: "ms_swift" for the authors' ms-swift rows (also ShareGPT, alpaca, query/response rows;
            "sharegpt" / "alpaca" / "query_response" force a layout); see :mod:`cxr_max.trajectories.io`.
        check_images: which images the rows being built join to are checked, by the worker writing
            them (an image no row needs is never looked at, so a partial copy builds): "verify" (not
            empty, a JPEG/PNG signature, the JPEG end-of-image marker, a readable header; catches
            truncated downloads), "decode" (decode every pixel; slow), "exists" or "none".
            Default: "verify" when images are decoded, "exists" for paths.
        test_labels: "radiologist" gives the test split the radiologists' labels of
            ``mimic-cxr-2.1.0-test-set-labeled.csv`` (MIMIC-CXR-JPG 2.1.0) instead of the labeler's.
        shards: number of image-range shards per split for the trajectory configs (default: one
            per 25,000 images, at least ``num_proc``); more shards let more DataLoader workers stream.
        views_from_meaning: set by ``views="frontal"`` (the ViewCodeSequence meanings that count when
            ViewPosition is empty); not an option to pass.
        seed / synthetic_patients: the synthetic data's seed and size when ``data_dir`` is None.
    """

    dicom_dir: str | None = None
    trajectories: str | None = None
    preferences: str | None = None
    ms_cxr_t: str | None = None
    images: str = "decode"
    views: Any = None
    splits: Sequence[str] = ("train", "validate", "test")
    teachers: Sequence[str] | None = None
    tasks: Sequence[str] | None = None
    include_refusals: bool | None = None
    labels: str = "chexpert"
    on_error: str = "raise"
    mapping: dict | None = None
    adapter: str | None = None
    check_images: str | None = None
    test_labels: str | None = None
    shards: int | None = None
    views_from_meaning: Any = None
    seed: int = 0
    synthetic_patients: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check()

    def check(self) -> None:
        """Validate and normalise the options (``datasets`` sets user options after __post_init__)."""
        if self.images not in IMAGE_MODES:
            raise ValueError(f"images must be 'decode' or 'path', not {self.images!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'skip', not {self.on_error!r}")
        bad = set(self.splits) - set(OFFICIAL_SPLITS)
        if bad:
            raise ValueError(f"unknown split(s) {sorted(bad)}; MIMIC-CXR's are {list(OFFICIAL_SPLITS)}")
        if self.check_images is None:
            self.check_images = "verify" if self.images == "decode" else "exists"
        if self.check_images not in CHECK_IMAGES:
            raise ValueError(f"check_images must be 'verify', 'decode', 'exists' or 'none', not {self.check_images!r}")
        if self.test_labels is not None and self.test_labels not in TEST_LABEL_SOURCES:
            raise ValueError(f"test_labels must be one of {TEST_LABEL_SOURCES} or None, not {self.test_labels!r}")
        if self.shards is not None and self.shards < 1:
            raise ValueError(f"shards must be >= 1, not {self.shards}")
        if isinstance(self.views, str):
            if self.views.lower() == "frontal":
                self.views, self.views_from_meaning = FRONTAL_VARIANTS, FRONTAL_MEANINGS
            else:
                self.views = (self.views,)

    def create_config_id(self, config_kwargs: dict, custom_features: datasets.Features | None = None) -> str:
        # The cache key must change when the input files change, not only when the options do. The builder
        # reads no data files: the empty data_files datasets.load_dataset passes is dropped, so both entry
        # points (cxr_max.load_dataset, datasets.load_dataset("cxr_max")) name the same cache folder.
        config_kwargs = {k: v for k, v in config_kwargs.items() if not (k == "data_files" and not v)}
        base = super().create_config_id(config_kwargs, custom_features)
        return base + "-" + inputs_fingerprint(config_kwargs)


def inputs_fingerprint(kwargs: Mapping[str, Any]) -> str:
    """A short hash of the sizes and mtimes of the files the input options name (not their contents)."""
    h = hashlib.sha256()
    for key in INPUT_OPTIONS:
        src = kwargs.get(key)
        if not src:
            continue
        p = Path(src).expanduser()
        files = [p] if p.is_file() else sorted(x for x in p.glob("*") if x.is_file()) if p.is_dir() else []
        if key in ("trajectories", "preferences") and p.is_dir():
            foreign = key == "trajectories" and bool(kwargs.get("adapter") or kwargs.get("mapping"))
            files = list_trajectory_files(p, foreign=foreign)
        for f in files:
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:10]

"""The ``cxr_max`` datasets builder: MIMIC-CXR(-JPG) joined with teacher trajectories.

Configs (one ``datasets`` config each):

=============== ======================================================================================
``mimic``        one row per image: ids, split, view, image, report sections, the 14 CheXpert labels
``trajectories`` one row per (image, teacher, task, sample): the canonical trajectory + image and split
``studies``      one row per image with every teacher's trajectory as a list
``sft``          TRL conversational vision-language rows (``images`` + ``messages``), refusals excluded
``apo``          preference rows: prompt, chosen (consensus), list of rejected (teachers), weights
``ms_cxr_t``     MS-CXR-T temporal pairs: previous and current image, progression per finding
=============== ======================================================================================

Splits follow MIMIC-CXR's official split file, named the ``datasets`` way: ``train``,
``validation`` (MIMIC's ``validate``) and ``test``; ``ms_cxr_t`` has a single ``test`` split.
With no ``data_dir`` the embedded synthetic MIMIC-CXR (:mod:`cxr_max.synthetic`) is built once and
used. Parsing lives in :mod:`cxr_max.mimic` and :mod:`cxr_max.trajectories`; this module only joins.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.builder import Key

from cxr_max.errors import DataError, SkipLog, handle, logger
from cxr_max.labels import CHEXPERT_LABELS, MS_CXR_T_FINDINGS, label_key
from cxr_max.mimic.images import image_problem
from cxr_max.trajectories.io import FULL_SCHEMA, iter_trajectory_batches, list_trajectory_files, resolve_duplicates
from cxr_max.trajectories.prompts import IMAGE_TOKEN, chat_content
from cxr_max.trajectories.schema import ARROW_SCHEMA, LATERALITY_TYPE

CONFIG_NAMES = ("mimic", "trajectories", "studies", "sft", "apo", "ms_cxr_t")
OFFICIAL_SPLITS = {"train": "train", "validate": "validation", "test": "test"}
FRONTAL_VIEWS = ("PA", "AP")
# views="frontal": every frontal projection MIMIC-CXR's ViewPosition uses (AP AXIAL, decubitus PA/AP views),
# and, where ViewPosition is empty, the images whose ViewCodeSequence_CodeMeaning names a frontal view.
FRONTAL_VARIANTS = ("PA", "AP", "AP AXIAL", "PA LLD", "PA RLD", "AP LLD", "AP RLD")
FRONTAL_MEANINGS = ("postero-anterior", "antero-posterior")
TRAJECTORY_SHARD_ROWS = 20_000  # rows per yielded table when a file is large
MIMIC_SHARD_ROWS = 2_000  # images per mimic-config shard (a range of the index, not a table slice)
IMAGES_PER_SHARD = 25_000  # images per trajectory-config shard (at least num_proc shards)
SPILL_WAIT_SECONDS = 3600.0  # how long a worker waits for another to parse a trajectory file
TEST_LABEL_SOURCES = ("radiologist",)
MS_CXR_T_FILE = "MS_CXR_T_temporal_image_classification_v1.0.0.csv"

_DESCRIPTIONS = {
    "mimic": "One row per MIMIC-CXR image: identifiers, official split, view, image, report sections, CheXpert labels.",
    "trajectories": "One row per (image, teacher, task, sample): the teacher's reasoning trajectory joined with the image.",
    "studies": "One row per image with all teachers' trajectories as a list.",
    "sft": "TRL SFTTrainer rows for vision-language models: images + conversational messages (refusals excluded).",
    "apo": "Preference rows from the compare stage: consensus chosen, every teacher's trajectory rejected, weights.",
    "ms_cxr_t": "MS-CXR-T style temporal pairs: previous and current image with progression labels per finding.",
}


@dataclasses.dataclass
class CxrMaxConfig(datasets.BuilderConfig):
    """Options of every config (unused ones are ignored by a config that has no use for them).

    Args:
        data_dir: MIMIC-CXR-JPG root (the folder with ``files/`` and the ``mimic-cxr-2.0.0-*.csv.gz``
            tables). None: the embedded synthetic MIMIC-CXR.
        dicom_dir: MIMIC-CXR (DICOM) root, for per-study report ``.txt`` files, ``mimic-cxr-reports.zip`` / ``.tar.gz``
            and ``.dcm`` paths. Optional.
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

    def __post_init__(self):
        super().__post_init__()
        self.check()

    def check(self) -> None:
        """Validate and normalise the options (``datasets`` sets user options after __post_init__)."""
        if self.images not in ("decode", "path"):
            raise ValueError(f"images must be 'decode' or 'path', not {self.images!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {self.on_error!r}")
        bad = set(self.splits) - set(OFFICIAL_SPLITS)
        if bad:
            raise ValueError(f"unknown split(s) {sorted(bad)}; MIMIC-CXR's are {list(OFFICIAL_SPLITS)}")
        if self.check_images is None:
            self.check_images = "verify" if self.images == "decode" else "exists"
        if self.check_images not in ("verify", "decode", "exists", "none"):
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

    def create_config_id(self, config_kwargs: dict, custom_features=None) -> str:
        # The cache key must change when the input files change, not only when the options do. The builder
        # reads no data files: the empty data_files datasets.load_dataset passes is dropped, so both entry
        # points (cxr_max.load_dataset, datasets.load_dataset("cxr_max")) name the same cache folder.
        config_kwargs = {k: v for k, v in config_kwargs.items() if not (k == "data_files" and not v)}
        base = super().create_config_id(config_kwargs, custom_features)
        return base + "-" + _inputs_fingerprint(config_kwargs)


def _inputs_fingerprint(kwargs: dict) -> str:
    h = hashlib.sha256()
    for key in ("data_dir", "dicom_dir", "trajectories", "preferences", "ms_cxr_t"):
        src = kwargs.get(key)
        if not src:
            continue
        p = Path(src).expanduser()
        files = [p] if p.is_file() else sorted(x for x in p.glob("*") if x.is_file()) if p.is_dir() else []
        if key in ("trajectories", "preferences") and p.is_dir():
            files = list_trajectory_files(p, foreign=key == "trajectories" and bool(kwargs.get("adapter") or kwargs.get("mapping")))
        for f in files:
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:10]


# ---------------------------------------------------------------------------------------------
# Features


def _image_feature(cfg: CxrMaxConfig, mode: str | None = None):
    return datasets.Image(mode=mode) if cfg.images == "decode" else datasets.Value("string")


def _labels_feature() -> dict:
    return {name: datasets.Value("float32") for name in CHEXPERT_LABELS}


def _laterality_feature() -> dict:
    return {name: datasets.Value("string") for name in LATERALITY_TYPE.names}


_MESSAGE = {"role": datasets.Value("string"), "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
_IDS = {"subject_id": datasets.Value("string"), "study_id": datasets.Value("string"), "dicom_id": datasets.Value("string")}
_IMAGE_META = {
    "split": datasets.Value("string"),
    "view_position": datasets.Value("string"),
    "study_datetime": datasets.Value("timestamp[us]"),
}


def _trajectory_fields() -> dict:
    out = {}
    for field in ARROW_SCHEMA:
        if field.name in _IDS:
            continue
        if field.name == "labels":
            out["labels"] = _labels_feature()
        elif field.name == "laterality":
            out["laterality"] = _laterality_feature()
        else:
            out[field.name] = datasets.Value(
                {pa.string(): "string", pa.int32(): "int32", pa.bool_(): "bool"}[field.type]
            )
    return out


def features_for(name: str, cfg: CxrMaxConfig) -> datasets.Features:
    img = _image_feature(cfg)
    if name == "mimic":
        return datasets.Features(
            {**_IDS, **_IMAGE_META, "image": img, "report": datasets.Value("string"), "findings": datasets.Value("string"),
             "impression": datasets.Value("string"), "labels": _labels_feature()}
        )
    if name == "trajectories":
        return datasets.Features({**_IDS, **_IMAGE_META, "image": img, **_trajectory_fields()})
    if name == "studies":
        inner = {k: v for k, v in _trajectory_fields().items() if k not in ("prompt",)}
        return datasets.Features(
            {**_IDS, **_IMAGE_META, "image": img, "labels": _labels_feature(), "trajectories": datasets.List(inner)}
        )
    rgb = _image_feature(cfg, "RGB")
    if name == "sft":
        return datasets.Features(
            {"images": datasets.List(rgb), "messages": datasets.List(_MESSAGE), **_IDS, "teacher": datasets.Value("string"),
             "split": datasets.Value("string")}
        )
    if name == "apo":
        return datasets.Features(
            {
                "images": datasets.List(rgb),
                "prompt": datasets.List(_MESSAGE),
                "chosen": datasets.List(_MESSAGE),
                "rejected": datasets.List(datasets.List(_MESSAGE)),
                "rejected_teachers": datasets.List(datasets.Value("string")),
                "rejected_weights": datasets.List(datasets.Value("float32")),
                "rejected_agreement": datasets.List(datasets.Value("float32")),
                **_IDS,
                "consensus_method": datasets.Value("string"),
                "consensus_confidence": datasets.Value("float32"),
            }
        )
    if name == "ms_cxr_t":
        prog = {f"{label_key(f)}_progression": datasets.Value("string") for f in MS_CXR_T_FINDINGS}
        return datasets.Features(
            {**_IDS, "previous_study_id": datasets.Value("string"), "previous_dicom_id": datasets.Value("string"),
             "image": img, "previous_image": img, **prog}
        )
    raise ValueError(f"unknown config {name!r}; configs: {CONFIG_NAMES}")


# ---------------------------------------------------------------------------------------------
# Arrow helpers


def _image_column(paths: pa.Array, cfg: CxrMaxConfig) -> pa.Array:
    """Image paths -> the storage of the image feature (struct<bytes, path> or plain strings)."""
    if isinstance(paths, pa.ChunkedArray):
        paths = paths.combine_chunks()
    if cfg.images == "path":
        return paths
    return pa.StructArray.from_arrays([pa.nulls(len(paths), pa.binary()), paths], names=["bytes", "path"])


def _message_array(role: str, texts: pa.Array, with_image: bool) -> pa.Array:
    """A list-of-messages column from a text column: ``[{"role", "content": [image?, text]}]``.

    In a user prompt the image part goes where ``<image>`` was
    (:func:`~cxr_max.trajectories.prompts.chat_content`: at the start when absent).
    """
    rows = []
    for t in texts.to_pylist():
        if with_image:
            content = chat_content(t, {"type": "image", "text": None})
        else:
            content = [{"type": "text", "text": t or ""}]
        rows.append([{"role": role, "content": content}])
    return pa.array(rows)


def _datetimes(images: pa.Table) -> pa.Array:
    if "study_datetime" in images.column_names:
        return pc.cast(images.column("study_datetime"), pa.timestamp("us"))
    return pa.nulls(images.num_rows, pa.timestamp("us"))


def _write_ipc(path: Path, table: pa.Table) -> None:
    """Write an Arrow IPC file atomically (workers of other processes may be reading the folder)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def _read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


def _with_test_labels(images: pa.Table, root, source: str) -> pa.Table:
    """Replace the labels of the test-split images by the radiologists' (null where a study has none)."""
    from cxr_max.mimic.tables import radiologist_label_struct

    table = root.radiologist_labels()
    test = pc.fill_null(pc.equal(images.column("split"), "test"), False)
    theirs = radiologist_label_struct(table, images.column("study_id"))
    labels = pc.if_else(test, theirs, images.column("labels").combine_chunks())
    return images.set_column(images.schema.get_field_index("labels"), "labels", labels)


_CODE_PACKAGES = ("mimic", "trajectories", "synthetic")
_CODE_FILES = ("builder.py", "labels.py", "errors.py")


def code_digest() -> str:
    """A fingerprint of every module a build reads (the builder, cxr_max.mimic, cxr_max.trajectories,
    cxr_max.synthetic, labels, errors): part of the cache key, so a fix in any of them rebuilds."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    files = [here / f for f in _CODE_FILES] + sorted(p for pkg in _CODE_PACKAGES for p in (here / pkg).glob("*.py"))
    for f in files:
        h.update(f.relative_to(here).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


_LOADED_DIGEST: str | None = None


def loaded_code_digest() -> str:
    """:func:`code_digest` of the code this process imported (computed once): both entry points use it,
    so an edit made after import cannot give them two different cache folders."""
    global _LOADED_DIGEST
    if _LOADED_DIGEST is None:
        _LOADED_DIGEST = code_digest()
    return _LOADED_DIGEST


# ---------------------------------------------------------------------------------------------
# Image checks (run in the workers, on the images the rows being written join to):
# :func:`cxr_max.mimic.images.image_problem`



class _BadInput(datasets.exceptions.DatasetGenerationError):
    """A DataError raised in a worker, carried (picklable) to the process that called download_and_prepare."""

    def __init__(self, err: DataError | None = None, *, message: str = "", path=None, row=None, reason=None):
        if err is not None:
            message, path, row, reason = err.args[0] if err.args else str(err), err.path, err.row, err.reason
        super().__init__(message)
        self.message, self.path, self.row, self.reason = message, path, row, reason

    def __reduce__(self):
        return (_rebuild_bad_input, (self.message, self.path, self.row, self.reason))

    def data_error(self) -> DataError:
        err = DataError("", path=None)
        err.args, err.path, err.row, err.reason = (self.message,), self.path, self.row, self.reason
        return err


def _rebuild_bad_input(message, path, row, reason) -> _BadInput:
    return _BadInput(message=message, path=path, row=row, reason=reason)


# ---------------------------------------------------------------------------------------------
# The builder


class CxrMax(datasets.ArrowBasedBuilder):
    """MIMIC-CXR + multi-teacher trajectories. See the module docstring for the configs."""

    BUILDER_CONFIG_CLASS = CxrMaxConfig
    BUILDER_CONFIGS = [CxrMaxConfig(name=n, description=_DESCRIPTIONS[n]) for n in CONFIG_NAMES]
    DEFAULT_CONFIG_NAME = "mimic"

    def __init__(self, *args, **kwargs):
        # One code fingerprint for every entry point: cxr_max.load_dataset and datasets.load_dataset("cxr_max")
        # then share one cache folder, and a change in any module the build reads invalidates it.
        if kwargs.get("hash") is None:
            kwargs["hash"] = loaded_code_digest()
        kwargs.setdefault("dataset_name", BUILDER_NAME)
        super().__init__(*args, **kwargs)
        self.config.check()

    # Worker processes get a pickled builder: per-process caches (tables, open zips) stay behind.
    _PROCESS_LOCAL = ("_index", "_all_ids", "_mimic_root", "_image_checked")

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in self._PROCESS_LOCAL:
            state.pop(k, None)
        return state

    # -- datasets API --------------------------------------------------------------------------

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTIONS.get(self.config.name, ""),
            features=features_for(self.config.name, self.config),
            homepage="https://physionet.org/content/mimic-cxr-jpg/",
            license="PhysioNet Credentialed Health Data License 1.5.0 (MIMIC-CXR); cc-by-nc-sa-4.0 (trajectories)",
            citation="arXiv:2510.04142; Johnson et al., MIMIC-CXR-JPG (2019)",
        )

    def _split_generators(self, dl_manager):
        cfg = self.config
        if cfg.name not in CONFIG_NAMES:
            raise ValueError(f"unknown config {cfg.name!r}; configs: {CONFIG_NAMES}")
        self._resolve_sources()
        self._skips = SkipLog()
        spill = self._spill_file("", "").parent  # the shared scratch folder, created here so workers share it
        if cfg.name == "ms_cxr_t":
            return [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"chunks": [self._ms_cxr_t_table()]})]
        index = self._image_index()
        # Workers memory-map the index instead of receiving it pickled (a pyarrow slice pickles the whole table).
        _write_ipc(spill / "index.arrow", index)
        _write_ipc(spill / "all_ids.arrow", pa.table({"dicom_id": self._all_dicom_ids()}))
        root = self._root()
        for table in ("metadata", "split", "label_table", "_subject_of"):  # the index holds what is needed
            root.__dict__.pop(table, None)
        self._index = _read_ipc(spill / "index.arrow")  # memory-mapped: shared with forked workers, not copied
        if cfg.name == "mimic":
            self._say_if_no_reports()
        splits = index.column("split").to_numpy(zero_copy_only=False)
        gens = []
        if cfg.name in ("trajectories", "sft", "studies"):
            files = [str(f) for f in self._trajectory_files()]
            plan = {s: self._shard_bounds(index, splits, s) for s in cfg.splits}
            for mimic_split in cfg.splits:
                chunks = [{"split": mimic_split, "shard": k, "files": files, "plan": plan}
                          for k in range(len(plan[mimic_split]) + 1)]
                gens.append(datasets.SplitGenerator(name=OFFICIAL_SPLITS[mimic_split], gen_kwargs={"chunks": chunks}))
            return gens
        for mimic_split in cfg.splits:
            rows = np.flatnonzero(splits == mimic_split)
            if cfg.name == "mimic":
                lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
                chunks = [{"start": s, "stop": min(s + MIMIC_SHARD_ROWS, hi)} for s in range(lo, hi, MIMIC_SHARD_ROWS)]
                chunks = chunks or [{"start": 0, "stop": 0}]
            else:  # apo
                chunks = [{"file": str(f), "split": mimic_split} for f in self._preference_files()]
            gens.append(datasets.SplitGenerator(name=OFFICIAL_SPLITS[mimic_split], gen_kwargs={"chunks": chunks}))
        return gens

    def _shard_bounds(self, index: pa.Table, splits: np.ndarray, split: str) -> list[str]:
        """dicom_id boundaries cutting one split's images into shards: every record of an image lands in
        one shard, so grouping (``studies``) and duplicate checks are complete within a worker."""
        ids = np.sort(index.column("dicom_id").to_numpy(zero_copy_only=False)[splits == split].astype(str))
        n = self.config.shards or max(1, -(-len(ids) // IMAGES_PER_SHARD), getattr(self, "_num_proc", None) or 1)
        n = max(1, min(n, len(ids)))
        return [str(ids[k * len(ids) // n]) for k in range(1, n)]

    def _generate_tables(self, chunks) -> Iterator[tuple[Any, pa.Table]]:
        outer, local = getattr(self, "_skips", None), SkipLog()
        self._skips = local  # this shard's skips; they reach the end-of-build summary through a file
        try:
            for i, chunk in enumerate(chunks):
                for j, table in enumerate(self._chunk_tables(chunk)):
                    if table.num_rows:
                        yield Key(i, j), table
        except DataError as e:  # through datasets' worker pool intact (it re-raises its own error type as is)
            raise _BadInput(e) from e
        finally:
            self._skips = outer if outer is not None else local
            self._report_worker_skips(local)

    def _report_worker_skips(self, local: SkipLog) -> None:
        if not local.total:
            return
        if getattr(self, "_preparing", False):
            import uuid

            path = self._spill_file("", "").parent / f"skips-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"counts": dict(local.counts), "examples": local.examples}))
            os.replace(tmp, path)
        else:  # streaming: no end of build; each shard says what it skipped when it is exhausted
            logger.warning("cxr_max/%s shard: %s", self.config.name, local.summary())

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self._num_proc = prepare_split_kwargs.get("num_proc")
        self._preparing = True
        try:
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        except _BadInput as e:
            raise e.data_error() from None
        except datasets.exceptions.DatasetGenerationError as e:
            cause = e.__cause__
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__
            if cause is not None:  # bad input: raise the error that names the file and row, not datasets' wrapper
                raise cause from None
            raise
        finally:
            self._preparing = False
            skips = getattr(self, "_skips", None)
            folder = getattr(self, "_spill_dir", None)
            if skips is not None and folder is not None:
                for f in sorted(folder.glob("skips-*.json")):
                    data = json.loads(f.read_text())
                    skips.merge(SkipLog(counts=collections.Counter(data["counts"]), examples=data["examples"]))
                    f.unlink()
        if skips is not None and skips.total:  # the explicit end-of-build summary of everything skipped
            logger.warning("cxr_max/%s build: %s", self.config.name, skips.summary())

    @property
    def skips(self) -> SkipLog:
        """What the last build skipped, by reason, from every worker (empty unless something was skipped)."""
        return getattr(self, "_skips", SkipLog())

    # -- sources -------------------------------------------------------------------------------

    def _resolve_sources(self) -> None:
        cfg = self.config
        if cfg.data_dir is None:
            from cxr_max.synthetic import ensure_synthetic

            kw = {"seed": cfg.seed}
            if cfg.synthetic_patients:
                kw["n_patients"] = cfg.synthetic_patients
            root = Path(ensure_synthetic(**kw))
            self._jpg_root = root / "mimic-cxr-jpg"
            self._dicom_root = Path(cfg.dicom_dir) if cfg.dicom_dir else root / "mimic-cxr"
            self._trajectories = cfg.trajectories or str(root / "trajectories")
            self._ms_cxr_t = cfg.ms_cxr_t or str(root / "ms-cxr-t")
            self._preferences = cfg.preferences or (str(root / "preferences") if (root / "preferences").exists() else None)
        else:
            self._jpg_root = Path(cfg.data_dir).expanduser()
            self._dicom_root = Path(cfg.dicom_dir).expanduser() if cfg.dicom_dir else None
            self._trajectories, self._ms_cxr_t, self._preferences = cfg.trajectories, cfg.ms_cxr_t, cfg.preferences

    def _root(self):
        """This process's MimicRoot (tables are read once per process; the reports zip opened once)."""
        root = getattr(self, "_mimic_root", None)
        if root is None:
            from cxr_max.mimic import MimicRoot

            root = self._mimic_root = MimicRoot(self._jpg_root, self._dicom_root, labels=self.config.labels,
                                                on_error=self.config.on_error, skips=self._skips)
        root.skips = self._skips
        if root._store is not None:
            root._store.skips = self._skips
        return root

    def _say_if_no_reports(self) -> None:
        """The ``mimic`` config has report columns: say so when this copy has no reports to fill them."""
        source = self._root().report_source
        if source is None:
            where = " or ".join(str(r) for r in (self._dicom_root, self._jpg_root) if r is not None)
            logger.warning(
                "cxr_max/mimic: no reports found (looked for mimic-cxr-reports.zip, mimic-cxr-reports.tar.gz and "
                "files/p??/p*/s*.txt in %s); the report, findings and impression columns will be null%s",
                where, "" if self._dicom_root else ". Pass dicom_dir=<MIMIC-CXR root> (it holds the reports)",
            )

    def _trajectory_files(self) -> list[Path]:
        if not self._trajectories:
            raise ValueError(
                f"config {self.config.name!r} needs teacher trajectories: pass trajectories=<file or folder> "
                "(canonical JSONL/parquet; see the README's 'Trajectory schema')"
            )
        cfg = self.config
        return list_trajectory_files(self._trajectories, foreign=bool(cfg.adapter or cfg.mapping), warn_json=True)

    def _preference_files(self) -> list[Path]:
        if not self._preferences or not Path(self._preferences).exists():
            raise ValueError(
                "config 'apo' needs preference rows from the compare stage: run `python recipes/compare.py` "
                "(or `cxr_max.drift.write_preferences`) and pass preferences=<its output folder>"
                + (f"; {self._preferences} does not exist" if self._preferences else "")
            )
        return list_trajectory_files(self._preferences)

    # -- images --------------------------------------------------------------------------------

    def _image_index(self) -> pa.Table:
        """Per-image table (ids, split, view, datetime, image path, labels), filtered by the options,
        grouped by split (metadata order within a split). Nothing is checked on disk here."""
        cached = getattr(self, "_index", None)
        if cached is not None:
            return cached
        spilled = getattr(self, "_spill_dir", None)
        if spilled is not None and (spilled / "index.arrow").exists():  # a worker: the main process wrote it
            self._index = _read_ipc(spilled / "index.arrow")
            return self._index
        cfg = self.config
        root = self._root()
        images = root.images()
        if cfg.test_labels:
            images = _with_test_labels(images, root, cfg.test_labels)
        if cfg.views:
            view = images.column("view_position")
            keep = pc.is_in(view, pa.array(list(cfg.views)))
            if cfg.views_from_meaning:
                meaning = root.metadata.column("ViewCodeSequence_CodeMeaning") if (
                    "ViewCodeSequence_CodeMeaning" in root.metadata.column_names) else pa.nulls(images.num_rows, pa.string())
                from_meaning = pc.is_in(pc.utf8_lower(meaning), pa.array(list(cfg.views_from_meaning)))
                keep = pc.or_(pc.fill_null(keep, False), pc.and_(pc.is_null(view), pc.fill_null(from_meaning, False)))
            images = images.filter(pc.fill_null(keep, False))
        images = images.filter(pc.fill_null(pc.is_in(images.column("split"), pa.array(list(cfg.splits))), False))
        order = {s: i for i, s in enumerate(OFFICIAL_SPLITS)}
        rank = pc.index_in(images.column("split"), pa.array(list(order)))
        images = images.take(pa.array(np.argsort(rank.to_numpy(zero_copy_only=False), kind="stable")))
        self._index = images
        return images

    def _all_dicom_ids(self) -> pa.Array:
        ids = getattr(self, "_all_ids", None)
        if ids is None:
            spilled = getattr(self, "_spill_dir", None)
            if spilled is not None and (spilled / "all_ids.arrow").exists():
                ids = _read_ipc(spilled / "all_ids.arrow").column("dicom_id").combine_chunks()
            else:
                ids = self._root().metadata.column("dicom_id").combine_chunks()
            self._all_ids = ids
        return ids

    def _check_images(self, img: pa.Table, where: list[tuple[str, Any]] | None = None) -> np.ndarray:
        """Check the images of ``img`` (once per image and process); a mask of the rows to keep.

        A bad image raises under ``on_error="raise"`` (naming the file) or is counted once under "skip".
        """
        level = self.config.check_images
        if level == "none" or not img.num_rows:
            return np.ones(img.num_rows, dtype=bool)
        checked: dict = self.__dict__.setdefault("_image_checked", {})
        paths = img.column("image_path").to_pylist()
        keep = np.ones(len(paths), dtype=bool)
        for i, p in enumerate(paths):
            if p in checked:
                keep[i] = checked[p]
                continue
            problem = image_problem(p, level)
            checked[p] = problem is None
            if problem:
                keep[i] = False
                hint = ("; pass on_error='skip' to build the rows whose images are present, "
                        "or check_images='none' to defer the check to decoding") if self.config.on_error == "raise" else ""
                handle(DataError(problem + hint, path=p, kind=problem.split(" (")[0]), self.config.on_error, self._skips)
        return keep

    def _join_images(self, table: pa.Table, split: str | None, *, what: str) -> tuple[pa.Table, pa.Table]:
        """Attach image metadata to rows with a ``dicom_id``; rows whose image is unknown are bad input."""
        table, pos = self._image_positions(table, what=what)
        img = self._image_index().take(pos)
        if split is None:
            return table, img
        in_split = pc.equal(img.column("split"), split)
        return table.filter(in_split), img.filter(in_split)

    def _image_positions(self, table: pa.Table, *, what: str) -> tuple[pa.Table, pa.Array]:
        """The rows whose dicom_id is in the (filtered) index, and their positions in it."""
        index = self._image_index()
        pos = pc.index_in(table.column("dicom_id"), index.column("dicom_id"))
        known = pc.is_valid(pos)
        if not pc.all(known).as_py():
            # An id absent from the (filtered) metadata: unknown to MIMIC at all is an error; filtered out is not.
            unknown = pc.invert(pc.is_in(table.column("dicom_id"), self._all_dicom_ids()))
            for i in np.flatnonzero(unknown.to_numpy(zero_copy_only=False)):
                where_file = table.column("_file")[i].as_py() if "_file" in table.column_names else what
                where_row = table.column("_row")[i].as_py() if "_row" in table.column_names else i + 1
                err = DataError(
                    f"dicom_id {table.column('dicom_id')[i].as_py()!r} is not in the MIMIC-CXR metadata of {self._jpg_root}",
                    path=where_file, row=where_row, kind="trajectory references an image absent from the metadata",
                )
                handle(err, self.config.on_error, self._skips)
            table, pos = table.filter(known), pos.filter(known)
        return table, pos

    # -- trajectories: image-range shards ----------------------------------------------------------

    def _shard_rows(self, chunk: dict) -> tuple[pa.Table, pa.Table]:
        """Every trajectory record of one shard's images (all files), deduplicated, filtered, with image rows.

        Each file is parsed once per build: a worker that parses it spills the rows of the other shards
        (and splits) to Arrow IPC files, which their shard memory-maps instead of parsing the file again.
        """
        split, shard, plan = chunk["split"], chunk["shard"], chunk["plan"]
        parts = [self._file_part(path, split, shard, plan) for path in chunk["files"]]
        parts = [p for p in parts if p is not None and p.num_rows]
        if not parts:
            return FULL_SCHEMA.empty_table(), self._image_index().schema.empty_table()
        table = pa.concat_tables(parts)
        img = self._image_index().take(table.column("__pos"))
        table = table.drop_columns(["__pos"])
        table, img = self._select_records(table, img)
        keep = self._check_images(img)
        if not keep.all():
            mask = pa.array(keep)
            table, img = table.filter(mask), img.filter(mask)
        return table, img

    def _file_part(self, path: str, split: str, shard: int, plan: dict[str, list[str]]) -> pa.Table | None:
        """The rows of one file that belong to one shard. The first worker to claim the file parses it and
        spills every shard's part (so a file is parsed, and its bad rows counted, once); the others wait for
        its ``done`` marker and memory-map their part."""
        folder = self._spill_file("", "").parent
        tag = hashlib.sha1(path.encode()).hexdigest()[:16]
        done, target = folder / f"done-{tag}", self._spill_file(path, f"{split}#{shard}")
        if not done.exists():
            try:
                os.close(os.open(folder / f"claim-{tag}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                mine = True
            except FileExistsError:
                mine = False
            if mine:
                self._spill_all(path, plan)
                done.touch()
            else:
                import time

                waited = 0.0
                while not done.exists():  # another worker is parsing this file
                    time.sleep(0.05)
                    waited += 0.05
                    if waited > SPILL_WAIT_SECONDS:
                        raise RuntimeError(f"gave up waiting for another worker to read {path} (no {done})")
        if target.exists():
            table = _read_ipc(target)
            target.unlink()
            return table
        # Already consumed: a second pass over a streamed split reads the file again.
        parts = [part for key, part in self._routed_batches(path, plan) if key == (split, shard)]
        return pa.concat_tables(parts) if parts else None

    def _spill_all(self, path: str, plan: dict[str, list[str]]) -> None:
        """Parse one file batch by batch and append each batch's rows to its shard's Arrow file: memory is
        bounded by a batch, not by the file. Every shard gets a file (empty when no row is its)."""
        schema = self._joined_schema()
        writers: dict[tuple[str, int], Any] = {}
        sinks: list = []
        tmp = {key: self._spill_file(path, f"{key[0]}#{key[1]}").with_suffix(f".{os.getpid()}.tmp")
               for key in ((s, k) for s, b in plan.items() for k in range(len(b) + 1))}
        try:
            for key, part in self._routed_batches(path, plan):
                if key not in writers:
                    sink = pa.OSFile(str(tmp[key]), "wb")
                    sinks.append(sink)
                    writers[key] = pa.ipc.new_file(sink, schema)
                writers[key].write_table(part.cast(schema))
            for key, target in tmp.items():
                if key not in writers:
                    sink = pa.OSFile(str(target), "wb")
                    sinks.append(sink)
                    writers[key] = pa.ipc.new_file(sink, schema)
        finally:
            for w in writers.values():
                w.close()
            for sink in sinks:
                sink.close()
        for key, target in tmp.items():
            os.replace(target, self._spill_file(path, f"{key[0]}#{key[1]}"))

    def _joined_schema(self) -> pa.Schema:
        return FULL_SCHEMA.append(pa.field("__pos", pa.int32()))

    def _routed_batches(self, path: str, plan: dict[str, list[str]]) -> Iterator[tuple[tuple[str, int], pa.Table]]:
        """Read one trajectory file in batches, join its rows to the images, cut by (split, shard)."""
        cfg = self.config
        for batch in iter_trajectory_batches(path, mapping=cfg.mapping, adapter=cfg.adapter, on_error=cfg.on_error,
                                             skips=self._skips):
            if cfg.adapter or cfg.mapping:
                from cxr_max.trajectories.io import fill_ids_from_metadata

                batch = fill_ids_from_metadata(batch, self._image_index())
            traj, pos = self._image_positions(batch, what=path)
            if not traj.num_rows:
                continue
            # Route by position: only the index's split column is looked at (the image rows are re-joined
            # from the memory-mapped index by the shard that uses them).
            joined = traj.append_column("__pos", pc.cast(pos, pa.int32()))
            splits = self._image_index().column("split").take(pos)
            for s, bounds in plan.items():
                in_split = pc.fill_null(pc.equal(splits, s), False)
                if not pc.any(in_split).as_py():
                    continue
                part = joined.filter(in_split)
                if not bounds:
                    yield (s, 0), part
                    continue
                dicom = part.column("dicom_id").to_numpy(zero_copy_only=False).astype(str)
                shard_of = np.searchsorted(np.asarray(bounds, dtype=str), dicom, side="right")
                for k in np.unique(shard_of):
                    yield (s, int(k)), part.filter(pa.array(shard_of == k))

    def _select_records(self, table: pa.Table, img: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Duplicates (all copies of a key are in this shard), failed requests, teacher/task/refusal filters."""
        cfg = self.config
        table = table.append_column("__i", pa.array(np.arange(table.num_rows)))
        table = resolve_duplicates(table, on_error=cfg.on_error, skips=self._skips)
        failed = pc.fill_null(pc.equal(table.column("status"), "failed"), False)
        n_failed = pc.sum(failed).as_py() or 0
        if n_failed:
            self._skips.counts["failed request (status=failed), excluded"] += n_failed
            table = table.filter(pc.invert(failed))
        if cfg.teachers:
            table = table.filter(pc.is_in(table.column("teacher"), pa.array(list(cfg.teachers))))
        if cfg.tasks:
            table = table.filter(pc.is_in(table.column("task"), pa.array(list(cfg.tasks))))
        include_refusals = cfg.include_refusals if cfg.include_refusals is not None else cfg.name != "sft"
        if not include_refusals:
            refused = pc.fill_null(table.column("refusal"), False)
            n = pc.sum(refused).as_py() or 0
            if n:
                self._skips.counts["refusal, excluded (include_refusals=False)"] += n
                table = table.filter(pc.invert(refused))
        img = img.take(table.column("__i"))
        return table.drop_columns(["__i"]), img

    # -- configs -------------------------------------------------------------------------------

    def _chunk_tables(self, chunk) -> Iterator[pa.Table]:
        name = self.config.name
        if name == "mimic":
            yield from self._mimic_tables(chunk["start"], chunk["stop"])
            return
        if name == "ms_cxr_t":
            yield from self._ms_cxr_t_checked(chunk)
            return
        if name == "apo":
            yield self._apo_table(chunk["file"], chunk["split"])
            return
        traj, img = self._shard_rows(chunk)
        if name == "studies":
            yield self._studies_table(traj, img)
            return
        for start in range(0, traj.num_rows, TRAJECTORY_SHARD_ROWS):
            part, part_img = traj.slice(start, TRAJECTORY_SHARD_ROWS), img.slice(start, TRAJECTORY_SHARD_ROWS)
            yield self._sft_table(part, part_img) if name == "sft" else self._trajectory_table(part, part_img)

    def _spill_file(self, path: str, split: str) -> Path:
        folder = getattr(self, "_spill_dir", None)
        if folder is None:
            import atexit
            import shutil
            import tempfile

            folder = self._spill_dir = Path(tempfile.mkdtemp(prefix="cxr_max_spill_"))
            atexit.register(shutil.rmtree, folder, True)
        return folder / (hashlib.sha1(f"{path}|{split}".encode()).hexdigest()[:16] + ".arrow")

    def _image_meta_columns(self, img: pa.Table) -> dict[str, pa.Array]:
        return {
            "subject_id": img.column("subject_id"),
            "study_id": img.column("study_id"),
            "dicom_id": img.column("dicom_id"),
            "split": pc.replace_substring(img.column("split"), "validate", "validation"),
            "view_position": img.column("view_position"),
            "study_datetime": _datetimes(img),
        }

    def _mimic_tables(self, start: int, stop: int) -> Iterator[pa.Table]:
        img = self._image_index().slice(start, stop - start)
        keep = self._check_images(img)
        if not keep.all():
            img = img.filter(pa.array(keep))
        if not img.num_rows:
            return
        root = self._root()
        has_reports = root.report_source is not None  # a JPG-only copy has no report text: null columns (said once)
        from cxr_max.mimic import parse_report

        parsed: dict[str, tuple] = {}  # one report read and parse per study, not per image
        subjects, studies = img.column("subject_id").to_pylist(), img.column("study_id").to_pylist()
        store = root.reports if has_reports else None
        for subject_id, study_id in zip(subjects, studies):
            if study_id in parsed or store is None:
                continue
            text = sections = None
            if not store.has(subject_id, study_id):  # real copies have studies without a report: null, and counted
                self._skips.add("study without a report (report, findings, impression null)", store.where(subject_id, study_id))
                parsed[study_id] = (None, None, None)
                continue
            try:
                text = root.report_text(study_id, subject_id)
                sections = parse_report(text) if text is not None else None
            except DataError as e:
                handle(e, self.config.on_error, self._skips)
            parsed[study_id] = (text, (sections or {}).get("FINDINGS"), (sections or {}).get("IMPRESSION"))
        empty = (None, None, None)
        rows = [parsed.get(s, empty) for s in studies]
        cols = self._image_meta_columns(img)
        cols["image"] = _image_column(img.column("image_path"), self.config)
        cols.update(report=pa.array([r[0] for r in rows], pa.string()), findings=pa.array([r[1] for r in rows], pa.string()),
                    impression=pa.array([r[2] for r in rows], pa.string()), labels=img.column("labels"))
        yield pa.table(cols)

    def _trajectory_table(self, traj: pa.Table, img: pa.Table) -> pa.Table:
        cols = self._image_meta_columns(img)
        cols["image"] = _image_column(img.column("image_path"), self.config)
        for f in ARROW_SCHEMA.names:
            if f not in cols:
                cols[f] = traj.column(f)
        return pa.table(cols)

    def _sft_table(self, traj: pa.Table, img: pa.Table) -> pa.Table:
        user = _message_array("user", pc.fill_null(traj.column("prompt"), IMAGE_TOKEN), with_image=True)
        assistant = _message_array("assistant", traj.column("raw"), with_image=False)
        system = traj.column("system").to_pylist() if "system" in traj.column_names else [None] * traj.num_rows
        messages = pa.array([([{"role": "system", "content": [{"type": "text", "text": sy}]}] if sy else []) + u + a
                             for sy, u, a in zip(system, user.to_pylist(), assistant.to_pylist())])
        images = pa.ListArray.from_arrays(
            pa.array(np.arange(img.num_rows + 1, dtype=np.int32)), _image_column(img.column("image_path"), self.config)
        )
        return pa.table(
            {"images": images, "messages": messages, "subject_id": img.column("subject_id"), "study_id": img.column("study_id"),
             "dicom_id": img.column("dicom_id"), "teacher": traj.column("teacher"),
             "split": pc.replace_substring(img.column("split"), "validate", "validation")}
        )

    def _studies_table(self, table: pa.Table, img: pa.Table) -> pa.Table:
        if not table.num_rows:
            return pa.table({})
        inner = [f for f in ARROW_SCHEMA.names if f not in ("subject_id", "study_id", "dicom_id", "prompt")]
        order = pc.sort_indices(table, sort_keys=[("dicom_id", "ascending"), ("teacher", "ascending"), ("task", "ascending"), ("sample", "ascending")])
        table, img = table.take(order), img.take(order)
        dicom = table.column("dicom_id").to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, dicom[1:] != dicom[:-1]])
        offsets = pa.array(np.r_[starts, len(dicom)].astype(np.int32))
        structs = pa.StructArray.from_arrays([table.column(f).combine_chunks() for f in inner], names=inner)
        first = img.take(pa.array(starts))
        cols = self._image_meta_columns(first)
        cols["image"] = _image_column(first.column("image_path"), self.config)
        cols["labels"] = first.column("labels")
        cols["trajectories"] = pa.ListArray.from_arrays(offsets, structs)
        return pa.table(cols)

    def _apo_table(self, path: str, split: str) -> pa.Table:
        from cxr_max.trajectories.io import iter_json_lines, read_maybe_gzip  # one JSON reader for the project

        p = Path(path)
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = list(enumerate(pq.read_table(p).to_pylist(), start=1))
        else:
            rows = list(iter_json_lines(p, read_maybe_gzip(p), self.config.on_error, self._skips))
        good = []
        for lineno, r in rows:
            problem = _preference_problem(r)
            if problem:
                handle(DataError(problem, path=p, row=lineno), self.config.on_error, self._skips)
                continue
            good.append({**r, "_file": str(p), "_row": lineno})
        if not good:
            return pa.table({})
        table = pa.Table.from_pylist(
            [{"dicom_id": r["dicom_id"], "_file": r["_file"], "_row": r["_row"], "_i": i} for i, r in enumerate(good)]
        )
        table, img = self._join_images(table, split, what=path)
        keep = self._check_images(img)
        if not keep.all():
            table, img = table.filter(pa.array(keep)), img.filter(pa.array(keep))
        rows_kept = [good[i] for i in table.column("_i").to_pylist()]
        prompt = _message_array("user", pa.array([r["prompt"] or IMAGE_TOKEN for r in rows_kept], pa.string()), with_image=True)
        chosen = _message_array("assistant", pa.array([r["chosen"] for r in rows_kept], pa.string()), with_image=False)
        rejected = pa.array(
            [[[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in r["rejected"]] for r in rows_kept]
        )
        weights = [r.get("rejected_weights") or [1.0] * len(r["rejected"]) for r in rows_kept]
        # each negative's agreement with the consensus (null where unknown): what ranking="full" orders by
        agreement = [r.get("rejected_agreement") or [None] * len(r["rejected"]) for r in rows_kept]
        images = pa.ListArray.from_arrays(
            pa.array(np.arange(img.num_rows + 1, dtype=np.int32)), _image_column(img.column("image_path"), self.config)
        )
        return pa.table(
            {
                "images": images, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                "rejected_teachers": pa.array([r["rejected_teachers"] for r in rows_kept], pa.list_(pa.string())),
                "rejected_weights": pa.array(weights, pa.list_(pa.float32())),
                "rejected_agreement": pa.array(agreement, pa.list_(pa.float32())),
                "subject_id": img.column("subject_id"), "study_id": img.column("study_id"), "dicom_id": img.column("dicom_id"),
                "consensus_method": pa.array([r.get("consensus_method") for r in rows_kept], pa.string()),
                "consensus_confidence": pa.array([r.get("consensus_confidence") for r in rows_kept], pa.float32()),
            }
        )

    def _ms_cxr_t_table(self) -> pa.Table:
        import pyarrow.csv as pacsv

        src = Path(self._ms_cxr_t or "")
        if src.is_dir():
            src = src / MS_CXR_T_FILE
        if not self._ms_cxr_t or not src.is_file():
            raise ValueError(f"config 'ms_cxr_t' needs the MS-CXR-T CSV: pass ms_cxr_t=<{MS_CXR_T_FILE} or its folder>"
                             + (f"; {src} does not exist" if self._ms_cxr_t else ""))
        table = pacsv.read_csv(src, convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in (
            "dicom_id", "previous_dicom_id", "subject_id", "study_id", "previous_study_id")}, strings_can_be_null=True))
        need = ["dicom_id", "previous_dicom_id", "subject_id", "study_id", "previous_study_id"]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise DataError(f"missing column(s) {missing}", path=src)
        # Path-like ids (p10/p10002428/s55758034/<dicom_id>) -> the bare dicom_id.
        for c in ("dicom_id", "previous_dicom_id"):
            bare = pc.replace_substring_regex(table.column(c), r"^.*/", "")
            bare = pc.replace_substring_regex(bare, r"\.(jpg|dcm)$", "")
            table = table.set_column(table.schema.get_field_index(c), c, bare)
        self._skips = getattr(self, "_skips", SkipLog())
        index = self._root().images()
        cur = pc.index_in(table.column("dicom_id"), index.column("dicom_id"))
        prev = pc.index_in(table.column("previous_dicom_id"), index.column("dicom_id"))
        ok = pc.and_(pc.is_valid(cur), pc.is_valid(prev))
        for i in np.flatnonzero(~ok.to_numpy(zero_copy_only=False)):
            handle(DataError("image pair not found in the MIMIC-CXR metadata", path=src, row=int(i) + 2,
                             kind="MS-CXR-T pair with an image absent from the metadata"), self.config.on_error, self._skips)
        table, cur, prev = table.filter(ok), cur.filter(ok), prev.filter(ok)
        cols = {c: table.column(c) for c in ("subject_id", "study_id", "dicom_id", "previous_study_id", "previous_dicom_id")}
        cols["image"] = _image_column(index.column("image_path").take(cur), self.config)
        cols["previous_image"] = _image_column(index.column("image_path").take(prev), self.config)
        for f in MS_CXR_T_FINDINGS:
            c = f"{label_key(f)}_progression"
            cols[c] = pc.cast(table.column(c), pa.string()) if c in table.column_names else pa.nulls(table.num_rows, pa.string())
        # The paths, for the worker's image check (dropped before writing).
        cols["__cur"], cols["__prev"] = index.column("image_path").take(cur), index.column("image_path").take(prev)
        return pa.table(cols)

    def _ms_cxr_t_checked(self, table: pa.Table) -> Iterator[pa.Table]:
        """The pairs whose two images pass the image check."""
        keep = self._check_images(pa.table({"image_path": table.column("__cur")}))
        keep &= self._check_images(pa.table({"image_path": table.column("__prev")}))
        table = table.drop_columns(["__cur", "__prev"])
        yield table if keep.all() else table.filter(pa.array(keep))


def _preference_problem(r: dict) -> str | None:
    for f in ("dicom_id", "chosen", "rejected", "rejected_teachers"):
        if r.get(f) in (None, ""):
            return f"preference row without {f!r}"
    if not isinstance(r["rejected"], list) or not r["rejected"]:
        return "preference row with no rejected trajectories"
    if len(r["rejected"]) != len(r["rejected_teachers"]):
        return "rejected and rejected_teachers have different lengths"
    w = r.get("rejected_weights")
    if w is not None and len(w) != len(r["rejected"]):
        return "rejected_weights and rejected have different lengths"
    a = r.get("rejected_agreement")
    if a is not None and len(a) != len(r["rejected"]):
        return "rejected_agreement and rejected have different lengths"
    return None


# ---------------------------------------------------------------------------------------------
# Registration and the stable entry point

BUILDER_NAME = "cxr_max"


def load_dataset(
    name: str = "mimic",
    split: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    download_mode: str | None = None,
    **config_kwargs,
):
    """Build and load a cxr_max config without going through ``datasets``' module resolution.

    Same arguments as ``datasets.load_dataset("cxr_max", name, ...)``. Also accepts
    ``load_dataset("cxr_max", "sft", ...)`` (the builder name first), like ``datasets``.
    """
    if name == BUILDER_NAME:
        name, split = (split or "mimic"), config_kwargs.pop("split", None)
    builder = CxrMax(
        config_name=name,
        data_dir=str(data_dir) if data_dir is not None else None,
        cache_dir=cache_dir,
        **config_kwargs,
    )
    if streaming:
        return builder.as_streaming_dataset(split=split)
    builder.download_and_prepare(num_proc=num_proc, download_mode=download_mode)
    return builder.as_dataset(split=split)

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

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.errors import DataError, SkipLog, handle, logger
from cxr_max.labels import CHEXPERT_LABELS, MS_CXR_T_FINDINGS, label_key
from cxr_max.trajectories.io import list_trajectory_files, read_trajectory_file, resolve_duplicates
from cxr_max.trajectories.prompts import IMAGE_TOKEN
from cxr_max.trajectories.schema import ARROW_SCHEMA, LATERALITY_TYPE

CONFIG_NAMES = ("mimic", "trajectories", "studies", "sft", "apo", "ms_cxr_t")
OFFICIAL_SPLITS = {"train": "train", "validate": "validation", "test": "test"}
FRONTAL_VIEWS = ("PA", "AP")
TRAJECTORY_SHARD_ROWS = 20_000  # rows per yielded table when a file is large
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
        dicom_dir: MIMIC-CXR (DICOM) root, for per-study report ``.txt`` files, ``mimic-cxr-reports.zip``
            and ``.dcm`` paths. Optional.
        trajectories: file or folder of teacher trajectories (JSONL / parquet, canonical schema).
        preferences: file or folder of compare-stage preference rows (``apo`` config).
        ms_cxr_t: MS-CXR-T CSV file or the folder holding it (``ms_cxr_t`` config).
        images: "decode" (a ``datasets.Image`` feature, decoded lazily on access) or "path" (strings).
        views: keep only these ViewPosition values; "frontal" means PA and AP. None keeps all.
        splits: official splits to build (MIMIC names: train, validate, test).
        teachers / tasks: keep only these teachers / tasks. None keeps all.
        include_refusals: keep refusals. Default: True, except the ``sft`` config (False).
        labels: "chexpert" or "negbio" label table.
        on_error: "raise" (first bad input raises, naming file and row) or "skip" (counted, summarised).
        mapping: {their_field: canonical_field} for trajectory files in another layout.
        adapter: "ms_swift" for the authors' ms-swift rows.
        check_images: "verify" (open every image once at build time, so a missing or corrupt file is
            reported at build, not mid-training), "exists" (only check the file is there) or "none".
            Default: "verify" when images are decoded, "exists" for paths.
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
        if self.check_images not in ("verify", "exists", "none"):
            raise ValueError(f"check_images must be 'verify', 'exists' or 'none', not {self.check_images!r}")
        if isinstance(self.views, str):
            self.views = FRONTAL_VIEWS if self.views.lower() == "frontal" else (self.views,)

    def create_config_id(self, config_kwargs: dict, custom_features=None) -> str:
        # The cache key must change when the input files change, not only when the options do.
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
            files = list_trajectory_files(p)
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
    "study_datetime": datasets.Value("string"),
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

    In a user prompt the image part goes where ``<image>`` was (start when absent).
    """
    rows = []
    for t in texts.to_pylist():
        content = []
        t = t or ""
        if with_image:
            before, marker, after = t.partition(IMAGE_TOKEN)
            if not marker:
                before, after = "", t
            if before.strip():
                content.append({"type": "text", "text": before.strip()})
            content.append({"type": "image", "text": None})
            if after.strip():
                content.append({"type": "text", "text": after.strip()})
        else:
            content.append({"type": "text", "text": t})
        rows.append([{"role": role, "content": content}])
    return pa.array(rows)


def _datetime_strings(images: pa.Table) -> pa.Array:
    if "study_datetime" in images.column_names:
        col = images.column("study_datetime")
        return pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
    return pa.nulls(images.num_rows, pa.string())


# ---------------------------------------------------------------------------------------------
# The builder


class CxrMax(datasets.ArrowBasedBuilder):
    """MIMIC-CXR + multi-teacher trajectories. See the module docstring for the configs."""

    BUILDER_CONFIG_CLASS = CxrMaxConfig
    BUILDER_CONFIGS = [CxrMaxConfig(name=n, description=_DESCRIPTIONS[n]) for n in CONFIG_NAMES]
    DEFAULT_CONFIG_NAME = "mimic"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.check()

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
        self._spill_file("", "")  # create the spill folder here, so worker processes share it
        if cfg.name == "ms_cxr_t":
            return [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"chunks": [self._ms_cxr_t_table()]})]
        index = self._image_index()
        gens = []
        for mimic_split in cfg.splits:
            split_images = index.filter(pc.equal(index.column("split"), mimic_split))
            if cfg.name == "mimic":
                chunks = [split_images.slice(i, 2000) for i in range(0, split_images.num_rows, 2000)] or [split_images]
                kwargs = {"chunks": chunks}
            elif cfg.name in ("trajectories", "sft", "studies"):
                kwargs = {"chunks": [(str(f), mimic_split) for f in self._trajectory_files()]}
            else:  # apo
                kwargs = {"chunks": [(str(f), mimic_split) for f in self._preference_files()]}
            gens.append(datasets.SplitGenerator(name=OFFICIAL_SPLITS[mimic_split], gen_kwargs=kwargs))
        return gens

    def _generate_tables(self, chunks) -> Iterator[tuple[Any, pa.Table]]:
        name = self.config.name
        if name == "studies":  # needs every teacher of an image together: one pass over all files
            yield from self._studies_tables(chunks)
        else:
            for i, chunk in enumerate(chunks):
                for j, table in enumerate(self._chunk_tables(chunk)):
                    if table.num_rows:
                        yield (i, j), table

    def _download_and_prepare(self, *args, **kwargs):
        super()._download_and_prepare(*args, **kwargs)
        skips = getattr(self, "_skips", None)
        if skips is not None and skips.total:  # the explicit end-of-build summary of everything skipped
            logger.warning("cxr_max/%s build: %s", self.config.name, skips.summary())

    @property
    def skips(self) -> SkipLog:
        """What the last build skipped, by reason (empty under on_error="raise" unless policy skips)."""
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

    def _trajectory_files(self) -> list[Path]:
        if not self._trajectories:
            raise ValueError(
                f"config {self.config.name!r} needs teacher trajectories: pass trajectories=<file or folder> "
                "(canonical JSONL/parquet; see the README's 'Trajectory schema')"
            )
        return list_trajectory_files(self._trajectories)

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
        """Per-image table (ids, split, view, datetime, image path, labels), filtered by the options."""
        cached = getattr(self, "_index", None)
        if cached is not None:
            return cached
        from cxr_max.mimic import MimicRoot

        cfg = self.config
        root = MimicRoot(self._jpg_root, self._dicom_root, labels=cfg.labels)
        images = root.images()
        if cfg.views:
            images = images.filter(pc.is_in(images.column("view_position"), pa.array(list(cfg.views))))
        images = images.filter(pc.is_in(images.column("split"), pa.array(list(cfg.splits))))
        keep = np.ones(images.num_rows, dtype=bool)
        if cfg.check_images != "none":
            for i, p in enumerate(images.column("image_path").to_pylist()):
                problem = _image_problem(p, cfg.check_images == "verify")
                if problem:
                    keep[i] = False
                    handle(DataError(problem, path=p, kind=problem.split(":")[0]), cfg.on_error, self._skips)
        self._index = images.filter(pa.array(keep)) if not keep.all() else images
        self._report_root = root
        return self._index

    def _join_images(self, table: pa.Table, split: str | None, *, what: str) -> pa.Table:
        """Attach image metadata to rows with a ``dicom_id``; rows whose image is unknown are bad input."""
        index = self._image_index()
        pos = pc.index_in(table.column("dicom_id"), index.column("dicom_id"))
        known = pc.is_valid(pos)
        if not pc.all(known).as_py():
            # An id absent from the (filtered) metadata: unknown to MIMIC at all is an error; filtered out is not.
            all_ids = getattr(self, "_all_ids", None)
            if all_ids is None:
                from cxr_max.mimic import MimicRoot

                all_ids = self._all_ids = MimicRoot(self._jpg_root, self._dicom_root, labels=self.config.labels).images().column("dicom_id")
            unknown = pc.invert(pc.is_in(table.column("dicom_id"), all_ids))
            for i in np.flatnonzero(unknown.to_numpy(zero_copy_only=False)):
                where_file = table.column("_file")[i].as_py() if "_file" in table.column_names else what
                where_row = table.column("_row")[i].as_py() if "_row" in table.column_names else i + 1
                err = DataError(
                    f"dicom_id {table.column('dicom_id')[i].as_py()!r} is not in the MIMIC-CXR metadata of {self._jpg_root}",
                    path=where_file, row=where_row, kind="trajectory references an image absent from the metadata",
                )
                handle(err, self.config.on_error, self._skips)
            table, pos = table.filter(known), pos.filter(known)
        img = index.take(pos)
        if split is None:
            return table, img
        in_split = pc.equal(img.column("split"), split)
        return table.filter(in_split), img.filter(in_split)

    # -- configs -------------------------------------------------------------------------------

    def _read_trajectories(self, path: str) -> pa.Table:
        cfg = self.config
        table = read_trajectory_file(
            path, mapping=cfg.mapping, adapter=cfg.adapter, on_error=cfg.on_error, skips=self._skips
        )
        if cfg.adapter or cfg.mapping:
            from cxr_max.trajectories.io import fill_ids_from_metadata

            table = fill_ids_from_metadata(table, self._image_index())
        failed = pc.equal(table.column("status"), "failed")
        n_failed = pc.sum(failed).as_py() or 0
        if n_failed:
            self._skips.counts["failed request (status=failed), excluded"] += n_failed
            table = table.filter(pc.invert(failed))
        table = self._dedupe_across_files(table)
        if cfg.teachers:
            table = table.filter(pc.is_in(table.column("teacher"), pa.array(list(cfg.teachers))))
        if cfg.tasks:
            table = table.filter(pc.is_in(table.column("task"), pa.array(list(cfg.tasks))))
        include_refusals = cfg.include_refusals if cfg.include_refusals is not None else cfg.name != "sft"
        if not include_refusals:
            refused = table.column("refusal")
            n = pc.sum(refused).as_py() or 0
            if n:
                self._skips.counts["refusal, excluded (include_refusals=False)"] += n
                table = table.filter(pc.invert(refused))
        return table

    def _dedupe_across_files(self, table: pa.Table) -> pa.Table:
        """Duplicates within the file are resolved by the reader; across files a key set per process."""
        table = resolve_duplicates(table, on_error=self.config.on_error, skips=self._skips)
        seen: dict = self.__dict__.setdefault("_seen_keys", {})
        keys = list(zip(*(table.column(f).to_pylist() for f in ("dicom_id", "teacher", "task", "sample"))))
        keep = np.ones(len(keys), dtype=bool)
        files, rows = table.column("_file").to_pylist(), table.column("_row").to_pylist()
        for i, k in enumerate(keys):
            first = seen.get(k)
            if first is None:
                seen[k] = (files[i], rows[i])
            elif first != (files[i], rows[i]):
                keep[i] = False
                err = DataError(
                    f"duplicate record for key {k} (first seen at {first[0]}, row {first[1]})", path=files[i], row=rows[i],
                    kind="duplicate record (same dicom_id, teacher, task, sample)",
                )
                handle(err, self.config.on_error, self._skips)
        return table if keep.all() else table.filter(pa.array(keep))

    def _chunk_tables(self, chunk) -> Iterator[pa.Table]:
        name = self.config.name
        if name == "mimic":
            yield self._mimic_table(chunk)
            return
        if name == "ms_cxr_t":
            yield chunk
            return
        path, split = chunk
        if name == "apo":
            yield self._apo_table(path, split)
            return
        for start, (part, img) in enumerate(self._split_part(path, split)):
            yield self._sft_table(part, img) if name == "sft" else self._trajectory_table(part, img)

    def _split_part(self, path: str, split: str) -> Iterator[tuple[pa.Table, pa.Table]]:
        """Rows of one trajectory file in one split, with their image rows.

        A file is parsed once: the rows of the other splits are spilled to Arrow IPC files and read
        back (memory-mapped) when those splits are generated, so memory stays bounded by one file.
        """
        spill = self._spill_file(path, split)
        if spill.exists():
            with pa.memory_map(str(spill)) as src:
                joined = pa.ipc.open_file(src).read_all()
            spill.unlink()
        else:
            table = self._read_trajectories(path)
            traj, img = self._join_images(table, None, what=path)
            joined = traj.append_column("__img", pa.StructArray.from_arrays(
                [c.combine_chunks() for c in img.columns], names=img.column_names))
            splits = img.column("split")
            for other in self.config.splits:
                if other == split:
                    continue
                part = joined.filter(pc.equal(splits, other))
                target = self._spill_file(path, other)
                with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, part.schema) as writer:
                    writer.write_table(part)
            joined = joined.filter(pc.equal(splits, split))
        for start in range(0, joined.num_rows, TRAJECTORY_SHARD_ROWS):
            part = joined.slice(start, TRAJECTORY_SHARD_ROWS)
            img = pa.Table.from_struct_array(part.column("__img").combine_chunks())
            yield part.drop_columns(["__img"]), img

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
            "study_datetime": _datetime_strings(img),
        }

    def _mimic_table(self, img: pa.Table) -> pa.Table:
        reports, findings, impressions = [], [], []
        root = self._report_root
        has_reports = root.reports is not None  # a JPG-only copy has no report text: null columns
        for subject_id, study_id in zip(img.column("subject_id").to_pylist(), img.column("study_id").to_pylist()):
            text = sections = None
            try:
                text = root.report_text(study_id, subject_id) if has_reports else None
                if text is not None:
                    from cxr_max.mimic import parse_report

                    sections = parse_report(text)
            except DataError as e:
                handle(e, self.config.on_error, self._skips)
            reports.append(text)
            findings.append((sections or {}).get("FINDINGS"))
            impressions.append((sections or {}).get("IMPRESSION"))
        cols = self._image_meta_columns(img)
        cols["image"] = _image_column(img.column("image_path"), self.config)
        cols.update(report=pa.array(reports, pa.string()), findings=pa.array(findings, pa.string()),
                    impression=pa.array(impressions, pa.string()), labels=img.column("labels"))
        return pa.table(cols)

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
        messages = pa.array([u + a for u, a in zip(user.to_pylist(), assistant.to_pylist())])
        images = pa.ListArray.from_arrays(
            pa.array(np.arange(img.num_rows + 1, dtype=np.int32)), _image_column(img.column("image_path"), self.config)
        )
        return pa.table(
            {"images": images, "messages": messages, "subject_id": img.column("subject_id"), "study_id": img.column("study_id"),
             "dicom_id": img.column("dicom_id"), "teacher": traj.column("teacher"),
             "split": pc.replace_substring(img.column("split"), "validate", "validation")}
        )

    def _studies_tables(self, chunks) -> Iterator[tuple[Any, pa.Table]]:
        if not chunks:
            return
        split = chunks[0][1]
        parts = [self._read_trajectories(path) for path, _ in chunks]
        table = pa.concat_tables(parts) if parts else ARROW_SCHEMA.empty_table()
        table, img = self._join_images(table, split, what="trajectories")
        if not table.num_rows:
            return
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
        yield 0, pa.table(cols)

    def _apo_table(self, path: str, split: str) -> pa.Table:
        from cxr_max.trajectories.io import _iter_json_lines, _open_text  # one JSON reader for the project

        p = Path(path)
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = list(enumerate(pq.read_table(p).to_pylist(), start=1))
        else:
            rows = list(_iter_json_lines(p, _open_text(p), self.config.on_error, self._skips))
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
        rows_kept = [good[i] for i in table.column("_i").to_pylist()]
        prompt = _message_array("user", pa.array([r["prompt"] or IMAGE_TOKEN for r in rows_kept], pa.string()), with_image=True)
        chosen = _message_array("assistant", pa.array([r["chosen"] for r in rows_kept], pa.string()), with_image=False)
        rejected = pa.array(
            [[[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in r["rejected"]] for r in rows_kept]
        )
        weights = [r.get("rejected_weights") or [1.0] * len(r["rejected"]) for r in rows_kept]
        images = pa.ListArray.from_arrays(
            pa.array(np.arange(img.num_rows + 1, dtype=np.int32)), _image_column(img.column("image_path"), self.config)
        )
        return pa.table(
            {
                "images": images, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                "rejected_teachers": pa.array([r["rejected_teachers"] for r in rows_kept], pa.list_(pa.string())),
                "rejected_weights": pa.array(weights, pa.list_(pa.float32())),
                "subject_id": img.column("subject_id"), "study_id": img.column("study_id"), "dicom_id": img.column("dicom_id"),
                "consensus_method": pa.array([r.get("consensus_method") for r in rows_kept], pa.string()),
                "consensus_confidence": pa.array([r.get("consensus_confidence") for r in rows_kept], pa.float32()),
            }
        )

    def _ms_cxr_t_table(self) -> pa.Table:
        from cxr_max.mimic import MimicRoot
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
        index = MimicRoot(self._jpg_root, self._dicom_root, labels=self.config.labels).images()
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
        return pa.table(cols)


def _image_problem(path: str | None, verify: bool) -> str | None:
    if not path:
        return "missing image path"
    if not os.path.isfile(path):
        return f"missing image file: {path}"
    if verify:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            return f"corrupt image file: {e}"
    return None


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
    return None


# ---------------------------------------------------------------------------------------------
# Registration and the stable entry point

BUILDER_NAME = "cxr_max"


def register_with_datasets() -> None:
    """Make ``datasets.load_dataset("cxr_max", ...)`` resolve to this module.

    ``datasets`` >= 4 has no loading scripts; its private ``_PACKAGED_DATASETS_MODULES`` dict maps
    a name to a builder module. Adding an entry is private API, so it is checked here and
    :func:`load_dataset` below works without it.
    """
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES as modules
    except ImportError as e:  # pragma: no cover - depends on a future datasets
        raise RuntimeError(
            f"datasets {datasets.__version__} has no packaged-module registry; use cxr_max.load_dataset(...) instead"
        ) from e
    if not isinstance(modules, dict):  # pragma: no cover
        raise RuntimeError("datasets' packaged-module registry changed shape; use cxr_max.load_dataset(...) instead")
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    modules[BUILDER_NAME] = (__name__, digest)
    _skip_data_file_resolution()
    # load_dataset(<packaged name>) pings a download counter over the network; cxr_max runs offline.
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False


def _skip_data_file_resolution() -> None:
    """Stop ``datasets`` from globbing ``data_dir`` (or the cwd) for data files for this builder.

    A packaged module normally resolves data files under ``data_dir`` (all of it: 377k JPGs on a
    real MIMIC-CXR-JPG root) and fails when it finds none (no ``data_dir`` at all: the synthetic
    default). The cxr_max builder reads its own inputs, so for its name the module is returned
    directly. Private API, wrapped once and guarded.
    """
    from datasets import load as _load

    factory = getattr(_load, "PackagedDatasetModuleFactory", None)
    if factory is None or not hasattr(factory, "get_module") or not hasattr(_load, "DatasetModule"):
        raise RuntimeError("datasets' PackagedDatasetModuleFactory changed; use cxr_max.load_dataset(...) instead")
    original = factory.get_module
    if getattr(original, "_cxr_max", False):
        return

    def get_module(self):
        if self.name == BUILDER_NAME:
            from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

            module_path, digest = _PACKAGED_DATASETS_MODULES[BUILDER_NAME]
            # An empty data-files dict: the builder reads its inputs itself (and datasets insists on one).
            from datasets.data_files import DataFilesDict

            return _load.DatasetModule(module_path, digest, {"dataset_name": BUILDER_NAME, "data_files": DataFilesDict()})
        return original(self)

    get_module._cxr_max = True
    factory.get_module = get_module


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

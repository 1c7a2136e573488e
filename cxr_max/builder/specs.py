"""One spec per config: its features, its splits and the tables of one shard, looked up by name.

A :class:`ConfigSpec` is what a ``datasets`` packaged module's builder class is for one format (compare
``datasets.packaged_modules.parquet``): :meth:`~ConfigSpec.features` gives the config's ``datasets.Features``,
:meth:`~ConfigSpec.split_generators` defines the splits and cuts each into shards (``gen_kwargs["chunks"]``,
which ``datasets`` hands out to its workers) and :meth:`~ConfigSpec.tables` yields the Arrow tables of one
shard, reading only that shard's inputs. :data:`SPECS` maps each config name to its spec; :func:`spec_for`
looks one up (an unknown name is an error listing the configs).

What ``split_generators`` reads, per config (the shards themselves: the README's "Shards" paragraph):

* every config but ``ms_cxr_t``: the MIMIC tables, once, into the filtered image index, which it writes to
  the build's scratch folder for the workers (no image file is opened, no trajectory file is parsed);
* ``mimic``: also where the reports are (to say once that there are none);
* ``trajectories`` / ``studies`` / ``sft``: also the list of trajectory files (names, not contents);
* ``apo``: the list of preference files; ``ms_cxr_t``: only whether the MS-CXR-T CSV exists (its one shard
  reads it).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.builder.arrow import (
    datasets_split,
    image_column,
    image_list_column,
    image_meta_columns,
    message_array,
)
from cxr_max.builder.config import OFFICIAL_SPLITS, CxrMaxConfig
from cxr_max.builder.context import BuildContext
from cxr_max.builder.features import IDS, IMAGE_META, MESSAGE, image_feature, labels_feature, trajectory_fields
from cxr_max.builder.shards import ImageShard, shard_bounds, shard_rows, trajectory_files
from cxr_max.errors import DataError, handle, logger
from cxr_max.labels import MS_CXR_T_FINDINGS, label_key
from cxr_max.trajectories.prompts import IMAGE_TOKEN
from cxr_max.trajectories.schema import ARROW_SCHEMA

TRAJECTORY_SHARD_ROWS = 20_000  # rows per yielded table when a shard is large
MIMIC_SHARD_ROWS = 2_000  # images per mimic-config shard (a range of the index, not a table slice)
MS_CXR_T_FILE = "MS_CXR_T_temporal_image_classification_v1.0.0.csv"
_MS_CXR_T_IDS = ("dicom_id", "previous_dicom_id", "subject_id", "study_id", "previous_study_id")


class ConfigSpec(abc.ABC):
    """What one config is: its name, description, features, splits and shard tables."""

    name: ClassVar[str]
    description: ClassVar[str]
    include_refusals: ClassVar[bool] = True  # the default of the include_refusals option

    @abc.abstractmethod
    def features(self, config: CxrMaxConfig) -> datasets.Features:
        """The config's features under these options (image features follow ``images=``)."""

    @abc.abstractmethod
    def split_generators(self, ctx: BuildContext, num_proc: int | None) -> list[datasets.SplitGenerator]:
        """The splits, each with ``gen_kwargs={"chunks": [...]}``: one chunk per shard."""

    @abc.abstractmethod
    def tables(self, ctx: BuildContext, chunk: Any) -> Iterator[pa.Table]:
        """The tables of one chunk (the rows of its shard only)."""

    def keeps_refusals(self, config: CxrMaxConfig) -> bool:
        return config.include_refusals if config.include_refusals is not None else self.include_refusals


def _split_generator(mimic_split: str, chunks: list) -> datasets.SplitGenerator:
    return datasets.SplitGenerator(name=OFFICIAL_SPLITS[mimic_split], gen_kwargs={"chunks": chunks})


# ---------------------------------------------------------------------------------------------- mimic


class IndexRange(TypedDict):
    """A ``mimic`` chunk: rows ``start:stop`` of the image index (the index itself is memory-mapped)."""

    start: int
    stop: int


class MimicSpec(ConfigSpec):
    name = "mimic"
    description = "One row per MIMIC-CXR image: identifiers, official split, view, image, report sections, CheXpert labels."

    def features(self, config: CxrMaxConfig) -> datasets.Features:
        return datasets.Features({
            **IDS, **IMAGE_META, "image": image_feature(config.images), "report": datasets.Value("string"),
            "findings": datasets.Value("string"), "impression": datasets.Value("string"), "labels": labels_feature(),
        })

    def split_generators(self, ctx: BuildContext, num_proc: int | None) -> list[datasets.SplitGenerator]:
        index = ctx.publish_index()
        say_if_no_reports(ctx)
        splits = index.column("split").to_numpy(zero_copy_only=False)
        gens = []
        for mimic_split in ctx.config.splits:
            rows = np.flatnonzero(splits == mimic_split)  # the index is grouped by split: one range each
            lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
            chunks: list[IndexRange] = [{"start": s, "stop": min(s + MIMIC_SHARD_ROWS, hi)}
                                        for s in range(lo, hi, MIMIC_SHARD_ROWS)]
            gens.append(_split_generator(mimic_split, chunks or [{"start": 0, "stop": 0}]))
        return gens

    def tables(self, ctx: BuildContext, chunk: IndexRange) -> Iterator[pa.Table]:
        img = ctx.index().slice(chunk["start"], chunk["stop"] - chunk["start"])
        keep = ctx.check_images(img)
        if not keep.all():
            img = img.filter(pa.array(keep))
        if not img.num_rows:
            return
        rows = report_columns(ctx, img)
        cols = image_meta_columns(img)
        cols["image"] = image_column(img.column("image_path"), ctx.config.images)
        cols.update(report=pa.array([r[0] for r in rows], pa.string()), findings=pa.array([r[1] for r in rows], pa.string()),
                    impression=pa.array([r[2] for r in rows], pa.string()), labels=img.column("labels"))
        yield pa.table(cols)


def report_columns(ctx: BuildContext, img: pa.Table) -> list[tuple[str | None, str | None, str | None]]:
    """(report, findings, impression) per image row; each study's report read and parsed once."""
    from cxr_max.mimic import parse_report  # looked up when called (the one report parser)

    root = ctx.root()
    store = root.reports if root.report_source is not None else None  # a JPG-only copy: null columns
    parsed: dict[str, tuple[str | None, str | None, str | None]] = {}
    subjects, studies = img.column("subject_id").to_pylist(), img.column("study_id").to_pylist()
    for subject_id, study_id in zip(subjects, studies):
        if study_id in parsed or store is None:
            continue
        text = sections = None
        if not store.has(subject_id, study_id):  # real copies have studies without a report: null, and counted
            ctx.skips.add("study without a report (report, findings, impression null)", store.where(subject_id, study_id))
            parsed[study_id] = (None, None, None)
            continue
        try:
            text = root.report_text(study_id, subject_id)
            sections = parse_report(text) if text is not None else None
        except DataError as e:
            handle(e, ctx.config.on_error, ctx.skips)
        parsed[study_id] = (text, (sections or {}).get("FINDINGS"), (sections or {}).get("IMPRESSION"))
    empty = (None, None, None)
    return [parsed.get(s, empty) for s in studies]


def say_if_no_reports(ctx: BuildContext) -> None:
    """The ``mimic`` config has report columns: say so when this copy has no reports to fill them."""
    if ctx.root().report_source is not None:
        return
    src = ctx.source
    where = " or ".join(str(r) for r in (src.dicom_dir, src.data_dir) if r is not None)
    logger.warning(
        "cxr_max/mimic: no reports found (looked for mimic-cxr-reports.zip, mimic-cxr-reports.tar.gz and "
        "files/p??/p*/s*.txt in %s); the report, findings and impression columns will be null%s",
        where, "" if src.dicom_dir else ". Pass dicom_dir=<MIMIC-CXR root> (it holds the reports)",
    )


# ------------------------------------------------------------------------------- trajectory configs


class ImageShardedSpec(ConfigSpec):
    """The configs made of trajectory records: shards are ranges of each split's images
    (:mod:`cxr_max.builder.shards`)."""

    def split_generators(self, ctx: BuildContext, num_proc: int | None) -> list[datasets.SplitGenerator]:
        index = ctx.publish_index()
        splits = index.column("split").to_numpy(zero_copy_only=False)
        files = trajectory_files(ctx)
        plan = {s: shard_bounds(index, splits, s, shards=ctx.config.shards, num_proc=num_proc) for s in ctx.config.splits}
        return [_split_generator(s, [ImageShard(split=s, shard=k, files=files, plan=plan) for k in range(len(plan[s]) + 1)])
                for s in ctx.config.splits]

    def tables(self, ctx: BuildContext, chunk: ImageShard) -> Iterator[pa.Table]:
        traj, img = shard_rows(ctx, chunk, include_refusals=self.keeps_refusals(ctx.config))
        yield from self.shard_tables(ctx, traj, img)

    @abc.abstractmethod
    def shard_tables(self, ctx: BuildContext, traj: pa.Table, img: pa.Table) -> Iterator[pa.Table]:
        """The rows of one shard's records (``traj``) and their images (``img``, row for row)."""


def _slices(traj: pa.Table, img: pa.Table) -> Iterator[tuple[pa.Table, pa.Table]]:
    for start in range(0, traj.num_rows, TRAJECTORY_SHARD_ROWS):
        yield traj.slice(start, TRAJECTORY_SHARD_ROWS), img.slice(start, TRAJECTORY_SHARD_ROWS)


class TrajectoriesSpec(ImageShardedSpec):
    name = "trajectories"
    description = "One row per (image, teacher, task, sample): the teacher's reasoning trajectory joined with the image."

    def features(self, config: CxrMaxConfig) -> datasets.Features:
        return datasets.Features({**IDS, **IMAGE_META, "image": image_feature(config.images), **trajectory_fields()})

    def shard_tables(self, ctx: BuildContext, traj: pa.Table, img: pa.Table) -> Iterator[pa.Table]:
        for part, part_img in _slices(traj, img):
            cols = image_meta_columns(part_img)
            cols["image"] = image_column(part_img.column("image_path"), ctx.config.images)
            for f in ARROW_SCHEMA.names:
                if f not in cols:
                    cols[f] = part.column(f)
            yield pa.table(cols)


class SftSpec(ImageShardedSpec):
    name = "sft"
    description = "TRL SFTTrainer rows for vision-language models: images + conversational messages (refusals excluded)."
    include_refusals = False

    def features(self, config: CxrMaxConfig) -> datasets.Features:
        return datasets.Features({
            "images": datasets.List(image_feature(config.images, "RGB")), "messages": datasets.List(MESSAGE), **IDS,
            "teacher": datasets.Value("string"), "split": datasets.Value("string"),
        })

    def shard_tables(self, ctx: BuildContext, traj: pa.Table, img: pa.Table) -> Iterator[pa.Table]:
        for part, part_img in _slices(traj, img):
            user = message_array("user", pc.fill_null(part.column("prompt"), IMAGE_TOKEN), with_image=True)
            assistant = message_array("assistant", part.column("raw"), with_image=False)
            system = part.column("system").to_pylist() if "system" in part.column_names else [None] * part.num_rows
            messages = pa.array([([{"role": "system", "content": [{"type": "text", "text": sy}]}] if sy else []) + u + a
                                 for sy, u, a in zip(system, user.to_pylist(), assistant.to_pylist())])
            yield pa.table({
                "images": image_list_column(part_img.column("image_path"), ctx.config.images), "messages": messages,
                "subject_id": part_img.column("subject_id"), "study_id": part_img.column("study_id"),
                "dicom_id": part_img.column("dicom_id"), "teacher": part.column("teacher"),
                "split": datasets_split(part_img.column("split")),
            })


_STUDY_INNER = [f for f in ARROW_SCHEMA.names if f not in ("subject_id", "study_id", "dicom_id", "prompt")]


class StudiesSpec(ImageShardedSpec):
    name = "studies"
    description = "One row per image with all teachers' trajectories as a list."

    def features(self, config: CxrMaxConfig) -> datasets.Features:
        inner = {k: v for k, v in trajectory_fields().items() if k != "prompt"}
        return datasets.Features({**IDS, **IMAGE_META, "image": image_feature(config.images), "labels": labels_feature(),
                                  "trajectories": datasets.List(inner)})

    def shard_tables(self, ctx: BuildContext, traj: pa.Table, img: pa.Table) -> Iterator[pa.Table]:
        if not traj.num_rows:
            return
        order = pc.sort_indices(traj, sort_keys=[("dicom_id", "ascending"), ("teacher", "ascending"),
                                                 ("task", "ascending"), ("sample", "ascending")])
        traj, img = traj.take(order), img.take(order)
        dicom = traj.column("dicom_id").to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, dicom[1:] != dicom[:-1]])
        offsets = pa.array(np.r_[starts, len(dicom)].astype(np.int32))
        structs = pa.StructArray.from_arrays([traj.column(f).combine_chunks() for f in _STUDY_INNER], names=_STUDY_INNER)
        first = img.take(pa.array(starts))
        cols = image_meta_columns(first)
        cols["image"] = image_column(first.column("image_path"), ctx.config.images)
        cols["labels"] = first.column("labels")
        cols["trajectories"] = pa.ListArray.from_arrays(offsets, structs)
        yield pa.table(cols)


# ------------------------------------------------------------------------------------------------ apo


class PreferenceFile(TypedDict):
    """An ``apo`` chunk: one preference file's rows of one split."""

    file: str
    split: str  # MIMIC's split name


class ApoSpec(ConfigSpec):
    name = "apo"
    description = "Preference rows from the compare stage: consensus chosen, every teacher's trajectory rejected, weights."

    def features(self, config: CxrMaxConfig) -> datasets.Features:
        return datasets.Features({
            "images": datasets.List(image_feature(config.images, "RGB")),
            "prompt": datasets.List(MESSAGE),
            "chosen": datasets.List(MESSAGE),
            "rejected": datasets.List(datasets.List(MESSAGE)),
            "rejected_teachers": datasets.List(datasets.Value("string")),
            "rejected_weights": datasets.List(datasets.Value("float32")),
            "rejected_agreement": datasets.List(datasets.Value("float32")),
            **IDS,
            "consensus_method": datasets.Value("string"),
            "consensus_confidence": datasets.Value("float32"),
        })

    def split_generators(self, ctx: BuildContext, num_proc: int | None) -> list[datasets.SplitGenerator]:
        from cxr_max.trajectories.io import list_trajectory_files

        ctx.publish_index()  # the rows join the index in the workers
        prefs = ctx.source.preferences
        if not prefs or not Path(prefs).exists():
            raise ValueError(
                "config 'apo' needs preference rows from the compare stage: run `python recipes/compare.py` "
                "(or `cxr_max.drift.write_preferences`) and pass preferences=<its output folder>"
                + (f"; {prefs} does not exist" if prefs else "")
            )
        files = [str(f) for f in list_trajectory_files(prefs)]
        return [_split_generator(s, [PreferenceFile(file=f, split=s) for f in files]) for s in ctx.config.splits]

    def tables(self, ctx: BuildContext, chunk: PreferenceFile) -> Iterator[pa.Table]:
        good = read_preference_rows(ctx, Path(chunk["file"]))
        if not good:
            return
        table = pa.Table.from_pylist(
            [{"dicom_id": r["dicom_id"], "_file": r["_file"], "_row": r["_row"], "_i": i} for i, r in enumerate(good)]
        )
        table, img = ctx.join_images(table, chunk["split"], what=chunk["file"])
        keep = ctx.check_images(img)
        if not keep.all():
            table, img = table.filter(pa.array(keep)), img.filter(pa.array(keep))
        rows = [good[i] for i in table.column("_i").to_pylist()]
        prompt = message_array("user", pa.array([r["prompt"] or IMAGE_TOKEN for r in rows], pa.string()), with_image=True)
        chosen = message_array("assistant", pa.array([r["chosen"] for r in rows], pa.string()), with_image=False)
        rejected = pa.array([[[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in r["rejected"]]
                             for r in rows])
        weights = [r.get("rejected_weights") or [1.0] * len(r["rejected"]) for r in rows]
        # each negative's agreement with the consensus (null where unknown): what ranking="full" orders by
        agreement = [r.get("rejected_agreement") or [None] * len(r["rejected"]) for r in rows]
        yield pa.table({
            "images": image_list_column(img.column("image_path"), ctx.config.images),
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "rejected_teachers": pa.array([r["rejected_teachers"] for r in rows], pa.list_(pa.string())),
            "rejected_weights": pa.array(weights, pa.list_(pa.float32())),
            "rejected_agreement": pa.array(agreement, pa.list_(pa.float32())),
            "subject_id": img.column("subject_id"), "study_id": img.column("study_id"), "dicom_id": img.column("dicom_id"),
            "consensus_method": pa.array([r.get("consensus_method") for r in rows], pa.string()),
            "consensus_confidence": pa.array([r.get("consensus_confidence") for r in rows], pa.float32()),
        })


def read_preference_rows(ctx: BuildContext, path: Path) -> list[dict[str, Any]]:
    """The well-formed rows of one preference file (JSONL or parquet), each with its ``_file`` and ``_row``."""
    from cxr_max.trajectories.io import iter_json_lines, read_maybe_gzip  # one JSON reader for the project

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = list(enumerate(pq.read_table(path).to_pylist(), start=1))
    else:
        rows = list(iter_json_lines(path, read_maybe_gzip(path), ctx.config.on_error, ctx.skips))
    good = []
    for lineno, r in rows:
        problem = preference_problem(r)
        if problem:
            handle(DataError(problem, path=path, row=lineno), ctx.config.on_error, ctx.skips)
            continue
        good.append({**r, "_file": str(path), "_row": lineno})
    return good


def preference_problem(r: Mapping[str, Any]) -> str | None:
    """What makes a preference row unusable, or None."""
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


# ------------------------------------------------------------------------------------------- ms_cxr_t


class PairFile(TypedDict):
    """The ``ms_cxr_t`` chunk: the MS-CXR-T CSV (one shard; MS-CXR-T is ~1,300 pairs)."""

    file: str


class MsCxrTSpec(ConfigSpec):
    name = "ms_cxr_t"
    description = "MS-CXR-T style temporal pairs: previous and current image with progression labels per finding."

    def features(self, config: CxrMaxConfig) -> datasets.Features:
        img = image_feature(config.images)
        prog = {f"{label_key(f)}_progression": datasets.Value("string") for f in MS_CXR_T_FINDINGS}
        return datasets.Features({**IDS, "previous_study_id": datasets.Value("string"),
                                  "previous_dicom_id": datasets.Value("string"), "image": img, "previous_image": img,
                                  **prog})

    def split_generators(self, ctx: BuildContext, num_proc: int | None) -> list[datasets.SplitGenerator]:
        given = ctx.source.ms_cxr_t
        src = Path(given) if given else None
        if src is not None and src.is_dir():
            src = src / MS_CXR_T_FILE
        if src is None or not src.is_file():
            raise ValueError(f"config 'ms_cxr_t' needs the MS-CXR-T CSV: pass ms_cxr_t=<{MS_CXR_T_FILE} or its folder>"
                             + (f"; {src} does not exist" if given else ""))
        return [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"chunks": [PairFile(file=str(src))]})]

    def tables(self, ctx: BuildContext, chunk: PairFile) -> Iterator[pa.Table]:
        import pyarrow.csv as pacsv

        src = Path(chunk["file"])
        table = pacsv.read_csv(src, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in _MS_CXR_T_IDS}, strings_can_be_null=True))
        missing = [c for c in _MS_CXR_T_IDS if c not in table.column_names]
        if missing:
            raise DataError(f"missing column(s) {missing}", path=src)
        # Path-like ids (p10/p10002428/s55758034/<dicom_id>) -> the bare dicom_id.
        for c in ("dicom_id", "previous_dicom_id"):
            bare = pc.replace_substring_regex(table.column(c), r"^.*/", "")
            bare = pc.replace_substring_regex(bare, r"\.(jpg|dcm)$", "")
            table = table.set_column(table.schema.get_field_index(c), c, bare)
        index = ctx.root().images()  # every image of the metadata: MS-CXR-T pairs ignore the split and view options
        cur = pc.index_in(table.column("dicom_id"), index.column("dicom_id"))
        prev = pc.index_in(table.column("previous_dicom_id"), index.column("dicom_id"))
        ok = pc.and_(pc.is_valid(cur), pc.is_valid(prev))
        for i in np.flatnonzero(~ok.to_numpy(zero_copy_only=False)):
            err = DataError("image pair not found in the MIMIC-CXR metadata", path=src, row=int(i) + 2,
                            kind="MS-CXR-T pair with an image absent from the metadata")
            handle(err, ctx.config.on_error, ctx.skips)
        table, cur, prev = table.filter(ok), cur.filter(ok), prev.filter(ok)
        paths = index.column("image_path")
        cur_paths, prev_paths = paths.take(cur), paths.take(prev)
        keep = ctx.check_images(pa.table({"image_path": cur_paths}))
        keep &= ctx.check_images(pa.table({"image_path": prev_paths}))
        cols = {c: table.column(c) for c in ("subject_id", "study_id", "dicom_id", "previous_study_id", "previous_dicom_id")}
        cols["image"] = image_column(cur_paths, ctx.config.images)
        cols["previous_image"] = image_column(prev_paths, ctx.config.images)
        for f in MS_CXR_T_FINDINGS:
            c = f"{label_key(f)}_progression"
            given = c in table.column_names
            cols[c] = pc.cast(table.column(c), pa.string()) if given else pa.nulls(table.num_rows, pa.string())
        out = pa.table(cols)
        yield out if keep.all() else out.filter(pa.array(keep))


# ------------------------------------------------------------------------------------------ registry

SPECS: dict[str, ConfigSpec] = {spec.name: spec for spec in (
    MimicSpec(), TrajectoriesSpec(), StudiesSpec(), SftSpec(), ApoSpec(), MsCxrTSpec())}
CONFIG_NAMES = tuple(SPECS)


def spec_for(name: str) -> ConfigSpec:
    """The spec of config ``name``; an unknown name is a ValueError listing the configs."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; configs: {CONFIG_NAMES}") from None


def features_for(name: str, config: CxrMaxConfig) -> datasets.Features:
    """The features of config ``name`` under ``config``'s options."""
    return spec_for(name).features(config)

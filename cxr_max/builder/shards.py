"""The trajectory configs' shards: every record of one range of images, from every trajectory file.

Each split's images are cut into dicom_id ranges (:func:`shard_bounds`), so every record of an image lands in
one shard: grouping (``studies``) and duplicate checks are complete within the worker writing it, whatever
``num_proc`` or the number of DataLoader workers.

Each trajectory file is read in batches and parsed once per build (:func:`file_part`): the first worker to
claim a file appends each batch's rows to its shard's Arrow file in the scratch folder (memory is bounded by
a batch and one shard, not by the file); the other shards' workers wait for its ``done`` marker and
memory-map their part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.builder.arrow import read_ipc
from cxr_max.builder.context import BuildContext
from cxr_max.trajectories.io import FULL_SCHEMA, iter_trajectory_batches, list_trajectory_files, resolve_duplicates

IMAGES_PER_SHARD = 25_000  # images per trajectory-config shard (at least num_proc shards)
SPILL_WAIT_SECONDS = 3600.0  # how long a worker waits for another to parse a trajectory file
JOINED_SCHEMA = FULL_SCHEMA.append(pa.field("__pos", pa.int32()))  # a record + its row in the image index

Plan = Mapping[str, Sequence[str]]  # MIMIC split -> the dicom_id bounds cutting it into shards


class ImageShard(TypedDict):
    """The ``gen_kwargs`` chunk of one trajectory-config shard."""

    split: str  # MIMIC's split name
    shard: int  # which range of the split's images (0 .. len(plan[split]))
    files: list[str]  # every trajectory file of the build
    plan: dict[str, list[str]]  # every split's bounds (a file's parser routes all of its rows)


class ShardId(NamedTuple):
    split: str
    shard: int

    @property
    def part(self) -> str:
        return f"{self.split}#{self.shard}"


def trajectory_files(ctx: BuildContext) -> list[str]:
    """The build's trajectory files (the config names what it needs when there are none)."""
    if not ctx.source.trajectories:
        raise ValueError(
            f"config {ctx.config.name!r} needs teacher trajectories: pass trajectories=<file or folder> "
            "(canonical JSONL/parquet; see the README's 'Trajectory schema')"
        )
    cfg = ctx.config
    files = list_trajectory_files(ctx.source.trajectories, foreign=bool(cfg.adapter or cfg.mapping), warn_json=True)
    return [str(f) for f in files]


def shard_bounds(index: pa.Table, splits: np.ndarray, split: str, *, shards: int | None, num_proc: int | None
                 ) -> list[str]:
    """dicom_id boundaries cutting one split's images into shards (``shards``, else one per
    :data:`IMAGES_PER_SHARD` images and at least ``num_proc``)."""
    ids = np.sort(index.column("dicom_id").to_numpy(zero_copy_only=False)[splits == split].astype(str))
    n = shards or max(1, -(-len(ids) // IMAGES_PER_SHARD), num_proc or 1)
    n = max(1, min(n, len(ids)))
    return [str(ids[k * len(ids) // n]) for k in range(1, n)]


def shard_rows(ctx: BuildContext, chunk: ImageShard, *, include_refusals: bool) -> tuple[pa.Table, pa.Table]:
    """Every trajectory record of one shard's images (all files), deduplicated and filtered, with their
    image rows; only the images of those rows are checked."""
    split, shard, plan = chunk["split"], chunk["shard"], chunk["plan"]
    parts = [file_part(ctx, path, ShardId(split, shard), plan) for path in chunk["files"]]
    parts = [p for p in parts if p is not None and p.num_rows]
    if not parts:
        return FULL_SCHEMA.empty_table(), ctx.index().schema.empty_table()
    table = pa.concat_tables(parts)
    img = ctx.index().take(table.column("__pos"))
    table = table.drop_columns(["__pos"])
    table, img = select_records(ctx, table, img, include_refusals=include_refusals)
    keep = ctx.check_images(img)
    if not keep.all():
        mask = pa.array(keep)
        table, img = table.filter(mask), img.filter(mask)
    return table, img


def file_part(ctx: BuildContext, path: str, shard: ShardId, plan: Plan) -> pa.Table | None:
    """The rows of one file that belong to one shard. The first worker to claim the file parses it and
    spills every shard's part (so a file is parsed, and its bad rows counted, once); the others wait for
    its ``done`` marker and memory-map their part."""
    folder = ctx.scratch.folder
    tag = ctx.scratch.file_tag(path)
    done, target = folder / f"done-{tag}", ctx.scratch.part_file(path, shard.part)
    if not done.exists():
        try:
            os.close(os.open(folder / f"claim-{tag}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            mine = True
        except FileExistsError:
            mine = False
        if mine:
            spill_file(ctx, path, plan)
            done.touch()
        else:
            waited = 0.0
            while not done.exists():  # another worker is parsing this file
                time.sleep(0.05)
                waited += 0.05
                if waited > SPILL_WAIT_SECONDS:
                    raise RuntimeError(f"gave up waiting for another worker to read {path} (no {done})")
    if target.exists():
        table = read_ipc(target)
        target.unlink()
        return table
    # Already consumed: a second pass over a streamed split reads the file again.
    parts = [part for key, part in routed_batches(ctx, path, plan) if key == shard]
    return pa.concat_tables(parts) if parts else None


def spill_file(ctx: BuildContext, path: str, plan: Plan) -> None:
    """Parse one file batch by batch and append each batch's rows to its shard's Arrow file: memory is
    bounded by a batch, not by the file. Every shard gets a file (empty when no row is its)."""
    final = {ShardId(s, k): ctx.scratch.part_file(path, ShardId(s, k).part)
             for s, bounds in plan.items() for k in range(len(bounds) + 1)}
    tmp = {key: target.with_suffix(f".{os.getpid()}.tmp") for key, target in final.items()}
    writers: dict[ShardId, pa.ipc.RecordBatchFileWriter] = {}
    sinks: list[pa.OSFile] = []

    def writer(key: ShardId) -> pa.ipc.RecordBatchFileWriter:
        if key not in writers:
            sink = pa.OSFile(str(tmp[key]), "wb")
            sinks.append(sink)
            writers[key] = pa.ipc.new_file(sink, JOINED_SCHEMA)
        return writers[key]

    try:
        for key, part in routed_batches(ctx, path, plan):
            writer(key).write_table(part.cast(JOINED_SCHEMA))
        for key in tmp:
            writer(key)  # an empty file for the shards no row of this file belongs to
    finally:
        for w in writers.values():
            w.close()
        for sink in sinks:
            sink.close()
    for key, target in final.items():
        os.replace(tmp[key], target)


def routed_batches(ctx: BuildContext, path: str, plan: Plan) -> Iterator[tuple[ShardId, pa.Table]]:
    """Read one trajectory file in batches, join its rows to the images, cut by (split, shard)."""
    cfg = ctx.config
    for batch in iter_trajectory_batches(path, mapping=cfg.mapping, adapter=cfg.adapter, on_error=cfg.on_error,
                                         skips=ctx.skips):
        if cfg.adapter or cfg.mapping:
            from cxr_max.trajectories.io import fill_ids_from_metadata

            batch = fill_ids_from_metadata(batch, ctx.index())
        traj, pos = ctx.image_positions(batch, what=path)
        if not traj.num_rows:
            continue
        # Route by position: only the index's split column is looked at (the image rows are re-joined
        # from the memory-mapped index by the shard that uses them).
        joined = traj.append_column("__pos", pc.cast(pos, pa.int32()))
        splits = ctx.index().column("split").take(pos)
        for s, bounds in plan.items():
            in_split = pc.fill_null(pc.equal(splits, s), False)
            if not pc.any(in_split).as_py():
                continue
            part = joined.filter(in_split)
            if not bounds:
                yield ShardId(s, 0), part
                continue
            dicom = part.column("dicom_id").to_numpy(zero_copy_only=False).astype(str)
            shard_of = np.searchsorted(np.asarray(bounds, dtype=str), dicom, side="right")
            for k in np.unique(shard_of):
                yield ShardId(s, int(k)), part.filter(pa.array(shard_of == k))


def select_records(ctx: BuildContext, table: pa.Table, img: pa.Table, *, include_refusals: bool
                   ) -> tuple[pa.Table, pa.Table]:
    """Duplicates (all copies of a key are in this shard), failed requests, teacher/task/refusal filters."""
    cfg = ctx.config
    table = table.append_column("__i", pa.array(np.arange(table.num_rows)))
    table = resolve_duplicates(table, on_error=cfg.on_error, skips=ctx.skips)
    failed = pc.fill_null(pc.equal(table.column("status"), "failed"), False)
    n_failed = pc.sum(failed).as_py() or 0
    if n_failed:
        ctx.skips.counts["failed request (status=failed), excluded"] += n_failed
        table = table.filter(pc.invert(failed))
    if cfg.teachers:
        table = table.filter(pc.is_in(table.column("teacher"), pa.array(list(cfg.teachers))))
    if cfg.tasks:
        table = table.filter(pc.is_in(table.column("task"), pa.array(list(cfg.tasks))))
    if not include_refusals:
        refused = pc.fill_null(table.column("refusal"), False)
        n = pc.sum(refused).as_py() or 0
        if n:
            ctx.skips.counts["refusal, excluded (include_refusals=False)"] += n
            table = table.filter(pc.invert(refused))
    img = img.take(table.column("__i"))
    return table.drop_columns(["__i"]), img

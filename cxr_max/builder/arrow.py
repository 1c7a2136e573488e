"""Arrow helpers the configs share: image columns, chat-message columns, timestamps, IPC files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.trajectories.prompts import chat_content

ArrayLike = pa.Array | pa.ChunkedArray


def image_column(paths: ArrayLike, images: str) -> pa.Array:
    """Image paths -> the storage of the image feature: ``struct<bytes, path>`` (``images="decode"``, a
    ``datasets.Image`` with the bytes left to the path) or the plain strings (``images="path"``)."""
    if isinstance(paths, pa.ChunkedArray):
        paths = paths.combine_chunks()
    if images == "path":
        return paths
    return pa.StructArray.from_arrays([pa.nulls(len(paths), pa.binary()), paths], names=["bytes", "path"])


def image_list_column(paths: ArrayLike, images: str) -> pa.ListArray:
    """One image per row as a one-element list (the ``images`` column TRL's vision trainers read)."""
    return pa.ListArray.from_arrays(pa.array(np.arange(len(paths) + 1, dtype=np.int32)), image_column(paths, images))


def message_array(role: str, texts: ArrayLike, with_image: bool) -> pa.Array:
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


def datetimes(images: pa.Table) -> ArrayLike:
    """The images' ``study_datetime`` as ``timestamp[us]`` (null when the index has none)."""
    if "study_datetime" in images.column_names:
        return pc.cast(images.column("study_datetime"), pa.timestamp("us"))
    return pa.nulls(images.num_rows, pa.timestamp("us"))


def datasets_split(split: ArrayLike) -> ArrayLike:
    """MIMIC's split names -> the ``datasets`` ones (``validate`` -> ``validation``)."""
    return pc.replace_substring(split, "validate", "validation")


def image_meta_columns(img: pa.Table) -> dict[str, ArrayLike]:
    """The per-image columns most configs start with: ids, split, view, study time."""
    return {
        "subject_id": img.column("subject_id"),
        "study_id": img.column("study_id"),
        "dicom_id": img.column("dicom_id"),
        "split": datasets_split(img.column("split")),
        "view_position": img.column("view_position"),
        "study_datetime": datetimes(img),
    }


def write_ipc(path: Path, table: pa.Table) -> None:
    """Write an Arrow IPC file atomically (workers of other processes may be reading the folder)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def read_ipc(path: Path) -> pa.Table:
    """Memory-map an Arrow IPC file (shared with forked workers, not copied)."""
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()

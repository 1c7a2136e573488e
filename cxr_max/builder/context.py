"""The state of one build, in two explicit objects.

* :class:`Scratch`: the build's temporary folder (the image index and the trajectory files' shard parts
  as Arrow IPC files that workers memory-map, the workers' skip counts), removed at exit.
* :class:`BuildContext`: what every process of one build shares (the options, the resolved
  :class:`~cxr_max.sources.DataSource`, the scratch folder, the current :class:`~cxr_max.errors.SkipLog`)
  and what each process keeps for itself (its :class:`~cxr_max.mimic.MimicRoot`, the memory-mapped index,
  the images it has checked). The process-local part is dropped when the context is pickled to a worker,
  which reopens it from the scratch folder: nothing large is pickled.

The process that plans the splits calls :meth:`BuildContext.publish_index` once; every other read of the
index (:meth:`BuildContext.index`) memory-maps what it wrote.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxr_max.builder.arrow import ArrayLike, read_ipc, write_ipc
from cxr_max.builder.config import OFFICIAL_SPLITS, CxrMaxConfig
from cxr_max.errors import DataError, SkipLog, handle
from cxr_max.sources import DataSource

if TYPE_CHECKING:
    from cxr_max.mimic import MimicRoot


@dataclasses.dataclass(frozen=True)
class Scratch:
    """One build's temporary folder (see the module docstring), shared by its processes by path."""

    folder: Path

    @classmethod
    def create(cls) -> Scratch:
        folder = Path(tempfile.mkdtemp(prefix="cxr_max_spill_"))
        atexit.register(shutil.rmtree, folder, True)
        return cls(folder)

    @property
    def index_file(self) -> Path:
        return self.folder / "index.arrow"

    @property
    def all_ids_file(self) -> Path:
        return self.folder / "all_ids.arrow"

    def part_file(self, source: str, part: str) -> Path:
        """Where the rows of trajectory file ``source`` that belong to ``part`` are spilled."""
        return self.folder / (hashlib.sha1(f"{source}|{part}".encode()).hexdigest()[:16] + ".arrow")

    def file_tag(self, source: str) -> str:
        return hashlib.sha1(source.encode()).hexdigest()[:16]

    def write_skips(self, skips: SkipLog) -> None:
        """Leave one worker's skip counts for the end-of-build summary (:meth:`collect_skips`)."""
        path = self.folder / f"skips-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"counts": dict(skips.counts), "examples": skips.examples}))
        os.replace(tmp, path)

    def collect_skips(self, into: SkipLog) -> None:
        """Merge (and remove) every skip file the workers left."""
        for f in sorted(self.folder.glob("skips-*.json")):
            data = json.loads(f.read_text())
            into.merge(SkipLog(counts=Counter(data["counts"]), examples=data["examples"]))
            f.unlink()


def drain(source: SkipLog, into: SkipLog) -> None:
    """Move the counts of ``source`` into ``into`` (``source`` stays the same object, emptied)."""
    if source.total:
        into.merge(source)
    source.counts.clear()
    source.examples.clear()


class BuildContext:
    """One build's shared inputs and this process's view of them (see the module docstring).

    Args:
        config: the build's options.
        source: where the data is (resolved once, by :func:`cxr_max.sources.resolve_source`).
        scratch: the build's temporary folder.
        skips: where bad input is counted; :meth:`shard_log` swaps in a shard's own log while it runs.
    """

    def __init__(self, config: CxrMaxConfig, source: DataSource, scratch: Scratch, skips: SkipLog):
        self.config = config
        self.source = source
        self.scratch = scratch
        self.skips = skips
        # Per process (not pickled; see __getstate__).
        self._root: MimicRoot | None = None
        self._root_skips = SkipLog()  # the root's own log, drained into self.skips (see drain_root_skips)
        self._index: pa.Table | None = None
        self._all_ids: pa.Array | None = None
        self._checked: dict[str, bool] = {}  # image path -> passed the check (each image checked once)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_root=None, _root_skips=SkipLog(), _index=None, _all_ids=None, _checked={})
        return state

    # -- the MIMIC copy ------------------------------------------------------------------------

    def root(self) -> MimicRoot:
        """This process's MimicRoot (tables read once per process, the reports archive opened once)."""
        if self._root is None:
            from cxr_max.mimic import MimicRoot

            self._root = MimicRoot(self.source.data_dir, self.source.dicom_dir, labels=self.config.labels,
                                   on_error=self.config.on_error, skips=self._root_skips)
        return self._root

    def drain_root_skips(self) -> None:
        """Count what the MimicRoot skipped (bad table rows, reports) in the current log."""
        drain(self._root_skips, self.skips)

    def release_root(self) -> None:
        """Close this process's MimicRoot and let its tables go (a later :meth:`root` opens a new one)."""
        if self._root is not None:
            self.drain_root_skips()
            self._root.close()
            self._root = None

    # -- the image index -------------------------------------------------------------------------

    def build_index(self) -> pa.Table:
        """Per-image table (ids, split, view, datetime, image path, labels), filtered by the options and
        grouped by split (metadata order within a split). Nothing is checked on disk here."""
        cfg = self.config
        root = self.root()
        images = root.images()
        if cfg.test_labels:
            images = with_radiologist_test_labels(images, root)
        if cfg.views:
            view = images.column("view_position")
            keep = pc.is_in(view, pa.array(list(cfg.views)))
            if cfg.views_from_meaning:
                meta = root.metadata
                meaning = meta.column("ViewCodeSequence_CodeMeaning") if (
                    "ViewCodeSequence_CodeMeaning" in meta.column_names) else pa.nulls(images.num_rows, pa.string())
                from_meaning = pc.is_in(pc.utf8_lower(meaning), pa.array(list(cfg.views_from_meaning)))
                keep = pc.or_(pc.fill_null(keep, False), pc.and_(pc.is_null(view), pc.fill_null(from_meaning, False)))
            images = images.filter(pc.fill_null(keep, False))
        images = images.filter(pc.fill_null(pc.is_in(images.column("split"), pa.array(list(cfg.splits))), False))
        rank = pc.index_in(images.column("split"), pa.array(list(OFFICIAL_SPLITS)))
        return images.take(pa.array(np.argsort(rank.to_numpy(zero_copy_only=False), kind="stable")))

    def publish_index(self) -> pa.Table:
        """Build the index and every dicom_id of the metadata once, write them to the scratch folder for the
        workers, let the MimicRoot's tables go, and return the index memory-mapped."""
        index = self.build_index()
        write_ipc(self.scratch.index_file, index)
        write_ipc(self.scratch.all_ids_file, pa.table({"dicom_id": self.root().metadata.column("dicom_id")}))
        self.release_root()  # the index holds what the build needs from the tables
        self._index = read_ipc(self.scratch.index_file)
        return self._index

    def index(self) -> pa.Table:
        """The index :meth:`publish_index` wrote (memory-mapped once per process)."""
        if self._index is None:
            if not self.scratch.index_file.exists():
                raise RuntimeError("the image index is written by _split_generators; it has not run for this build")
            self._index = read_ipc(self.scratch.index_file)
        return self._index

    def all_dicom_ids(self) -> pa.Array:
        """Every dicom_id of the metadata, before the options' filters (an id absent from it is bad input)."""
        if self._all_ids is None:
            self._all_ids = read_ipc(self.scratch.all_ids_file).column("dicom_id").combine_chunks()
        return self._all_ids

    # -- joins and checks ------------------------------------------------------------------------

    def image_positions(self, table: pa.Table, *, what: str) -> tuple[pa.Table, ArrayLike]:
        """The rows whose dicom_id is in the (filtered) index, and their positions in it.

        An id unknown to the metadata at all is bad input (named by the row's ``_file``/``_row`` when it has
        them, else ``what`` and the row number); one the options filtered out is dropped silently.
        """
        index = self.index()
        pos = pc.index_in(table.column("dicom_id"), index.column("dicom_id"))
        known = pc.is_valid(pos)
        if not pc.all(known).as_py():
            unknown = pc.invert(pc.is_in(table.column("dicom_id"), self.all_dicom_ids()))
            for i in np.flatnonzero(unknown.to_numpy(zero_copy_only=False)):
                where_file = table.column("_file")[i].as_py() if "_file" in table.column_names else what
                where_row = table.column("_row")[i].as_py() if "_row" in table.column_names else i + 1
                err = DataError(
                    f"dicom_id {table.column('dicom_id')[i].as_py()!r} is not in the MIMIC-CXR metadata of "
                    f"{self.source.data_dir}",
                    path=where_file, row=where_row, kind="trajectory references an image absent from the metadata",
                )
                handle(err, self.config.on_error, self.skips)
            table, pos = table.filter(known), pos.filter(known)
        return table, pos

    def join_images(self, table: pa.Table, split: str | None, *, what: str) -> tuple[pa.Table, pa.Table]:
        """Rows with a ``dicom_id`` and their image rows (of ``split`` only, when given)."""
        table, pos = self.image_positions(table, what=what)
        img = self.index().take(pos)
        if split is None:
            return table, img
        in_split = pc.equal(img.column("split"), split)
        return table.filter(in_split), img.filter(in_split)

    def check_images(self, img: pa.Table) -> np.ndarray:
        """Check the images of ``img`` (once per image and process); a mask of the rows to keep.

        A bad image raises under ``on_error="raise"`` (naming the file, with the way on) or is counted once
        under "skip". The check is :func:`cxr_max.mimic.images.image_problem`, looked up on
        :mod:`cxr_max.builder` when called.
        """
        level = self.config.check_images
        if level == "none" or not img.num_rows:
            return np.ones(img.num_rows, dtype=bool)
        import cxr_max.builder as package

        paths = img.column("image_path").to_pylist()
        keep = np.ones(len(paths), dtype=bool)
        for i, p in enumerate(paths):
            if p in self._checked:
                keep[i] = self._checked[p]
                continue
            problem = package.image_problem(p, level)
            self._checked[p] = problem is None
            if problem:
                keep[i] = False
                hint = "" if self.config.on_error == "skip" else (
                    "; pass on_error='skip' to build the rows whose images are present, "
                    "or check_images='none' to defer the check to decoding")
                handle(DataError(problem + hint, path=p, kind=problem.split(" (")[0]), self.config.on_error, self.skips)
        return keep


def with_radiologist_test_labels(images: pa.Table, root: MimicRoot) -> pa.Table:
    """Replace the labels of the test-split images by the radiologists' (null where a study has none)."""
    from cxr_max.mimic.tables import radiologist_label_struct

    table = root.radiologist_labels()
    test = pc.fill_null(pc.equal(images.column("split"), "test"), False)
    theirs = radiologist_label_struct(table, images.column("study_id"))
    labels = pc.if_else(test, theirs, images.column("labels").combine_chunks())
    return images.set_column(images.schema.get_field_index("labels"), "labels", labels)

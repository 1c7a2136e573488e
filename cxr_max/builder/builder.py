"""The ``cxr_max`` builder class and :func:`load_dataset`, the entry point that does not go through
``datasets``' module resolution.

:class:`CxrMax` only wires ``datasets``' builder API to the pieces of this package: the options
(:class:`~cxr_max.builder.config.CxrMaxConfig`), where the data is (:func:`cxr_max.sources.resolve_source`),
the build's state (:class:`~cxr_max.builder.context.BuildContext`) and the config's spec
(:func:`~cxr_max.builder.specs.spec_for`), which defines the features, the splits and each shard's tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import datasets
import pyarrow as pa
from datasets.builder import Key

from cxr_max.builder.cache import loaded_code_digest
from cxr_max.builder.config import CxrMaxConfig
from cxr_max.builder.context import BuildContext, Scratch
from cxr_max.builder.specs import CONFIG_NAMES, SPECS, ConfigSpec, spec_for
from cxr_max.errors import DataError, SkipLog, logger
from cxr_max.sources import resolve_source

BUILDER_NAME = "cxr_max"


class BadInputError(datasets.exceptions.DatasetGenerationError):
    """A DataError raised in a worker, carried (picklable) to the process that called download_and_prepare,
    which raises the DataError again (:meth:`data_error`)."""

    def __init__(self, err: DataError | None = None, *, message: str = "", path: Any = None, row: Any = None,
                 reason: str | None = None):
        if err is not None:
            message, path, row, reason = err.args[0] if err.args else str(err), err.path, err.row, err.reason
        super().__init__(message)
        self.message, self.path, self.row, self.reason = message, path, row, reason

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_rebuild_bad_input, (self.message, self.path, self.row, self.reason))

    def data_error(self) -> DataError:
        err = DataError("", path=None)
        err.args, err.path, err.row, err.reason = (self.message,), self.path, self.row, self.reason
        return err


def _rebuild_bad_input(message: str, path: Any, row: Any, reason: str | None) -> BadInputError:
    return BadInputError(message=message, path=path, row=row, reason=reason)


class CxrMax(datasets.ArrowBasedBuilder):
    """MIMIC-CXR + multi-teacher trajectories; one config per spec of :data:`~cxr_max.builder.specs.SPECS`.

    Attributes:
        spec: the config's :class:`~cxr_max.builder.specs.ConfigSpec`.
        skips: what the last build skipped (see :attr:`skips`).
    """

    BUILDER_CONFIG_CLASS = CxrMaxConfig
    BUILDER_CONFIGS = [CxrMaxConfig(name=name, description=SPECS[name].description) for name in CONFIG_NAMES]
    DEFAULT_CONFIG_NAME = "mimic"

    def __init__(self, *args: Any, **kwargs: Any):
        # One code fingerprint for every entry point: cxr_max.load_dataset and datasets.load_dataset("cxr_max")
        # then share one cache folder, and a change in any module the build reads invalidates it.
        if kwargs.get("hash") is None:
            kwargs["hash"] = loaded_code_digest()
        kwargs.setdefault("dataset_name", BUILDER_NAME)
        super().__init__(*args, **kwargs)
        self.config.check()
        self.spec: ConfigSpec = spec_for(self.config.name)
        self._skips = SkipLog()  # the last build's skips, every worker's merged in (see skips)
        self._context: BuildContext | None = None  # the current build's state, made by _split_generators
        self._num_proc: int | None = None  # download_and_prepare's num_proc: the trajectory configs' minimum shards
        self._preparing = False  # inside download_and_prepare (workers leave their skips in files) or streaming

    # -- datasets API --------------------------------------------------------------------------

    def _info(self) -> datasets.DatasetInfo:
        spec = spec_for(self.config.name)
        return datasets.DatasetInfo(
            description=spec.description,
            features=spec.features(self.config),
            homepage="https://physionet.org/content/mimic-cxr-jpg/",
            license="PhysioNet Credentialed Health Data License 1.5.0 (MIMIC-CXR); cc-by-nc-sa-4.0 (trajectories)",
            citation="arXiv:2510.04142; Johnson et al., MIMIC-CXR-JPG (2019)",
        )

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        """Resolve the sources once, then let the config's spec define the splits.

        Cheap by design: the MIMIC tables are read once into the image index (written to the build's scratch
        folder for the workers) and the input files are listed, no more; no image is opened and no trajectory
        or preference file is parsed here (what each config reads: :mod:`cxr_max.builder.specs`).
        """
        cfg = self.config
        source = resolve_source(cfg.data_dir, cfg.trajectories, dicom_dir=cfg.dicom_dir, preferences=cfg.preferences,
                                ms_cxr_t=cfg.ms_cxr_t, synthetic_patients=cfg.synthetic_patients, seed=cfg.seed,
                                stage=f"cxr_max/{cfg.name}")
        self._skips = SkipLog()
        self._context = ctx = BuildContext(cfg, source, Scratch.create(), self._skips)
        try:
            return self.spec.split_generators(ctx, self._num_proc)
        finally:
            ctx.drain_root_skips()

    def _generate_tables(self, chunks: list[Any]) -> Iterator[tuple[Key, pa.Table]]:
        """The tables of this worker's chunks, keyed ``Key(chunk, table)``; bad input is counted in a log of
        this shard's, which reaches the end-of-build summary through the scratch folder."""
        ctx = self._require_context()
        outer, local = ctx.skips, SkipLog()
        ctx.skips = local
        try:
            for i, chunk in enumerate(chunks):
                for j, table in enumerate(self.spec.tables(ctx, chunk)):
                    if table.num_rows:
                        yield Key(i, j), table
        except DataError as e:  # through datasets' worker pool intact (it re-raises its own error type as is)
            raise BadInputError(e) from e
        finally:
            ctx.drain_root_skips()
            ctx.skips = outer
            self._report_shard_skips(ctx, local)

    def _download_and_prepare(self, dl_manager: Any, verification_mode: Any, **prepare_split_kwargs: Any) -> None:
        self._num_proc = prepare_split_kwargs.get("num_proc")
        self._preparing = True
        self._context = None
        try:
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        except BadInputError as e:
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
            if self._context is not None:
                self._context.scratch.collect_skips(self._skips)
        if self._skips.total:  # the explicit end-of-build summary of everything skipped
            logger.warning("cxr_max/%s build: %s", self.config.name, self._skips.summary())

    # -- state -----------------------------------------------------------------------------------

    @property
    def skips(self) -> SkipLog:
        """What the last build skipped, by reason, from every worker (empty unless something was skipped)."""
        return self._skips

    def _require_context(self) -> BuildContext:
        if self._context is None:
            raise RuntimeError("no build in progress: _split_generators makes the build's context")
        return self._context

    def _image_index(self) -> pa.Table:
        """The current build's filtered image index (memory-mapped from its scratch folder)."""
        return self._require_context().index()

    def _report_shard_skips(self, ctx: BuildContext, local: SkipLog) -> None:
        if not local.total:
            return
        if self._preparing:
            ctx.scratch.write_skips(local)
        else:  # streaming: no end of build; each shard says what it skipped when it is exhausted
            logger.warning("cxr_max/%s shard: %s", self.config.name, local.summary())


def load_dataset(
    name: str = "mimic",
    split: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    download_mode: str | None = None,
    **config_kwargs: Any,
) -> datasets.Dataset | datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict:
    """Build and load a cxr_max config without going through ``datasets``' module resolution.

    ``load_dataset(config, split, *, data_dir, streaming, num_proc, cache_dir, download_mode, **options)``;
    also accepts ``load_dataset("cxr_max", "sft", ...)`` (the builder name first), like ``datasets``
    (:func:`cxr_max.load_dataset` binds that style to ``datasets.load_dataset``'s own signature).
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

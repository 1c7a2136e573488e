"""How ``datasets.load_dataset("cxr_max", ...)`` finds the cxr_max builder, with no effect on any other dataset.

``datasets`` resolves the ``path`` argument of ``load_dataset`` / ``load_dataset_builder`` (and of
``get_dataset_config_names``, which holds its own reference to it) in one function,
``datasets.load.dataset_module_factory``: a name of its own packaged modules (``json``, ``parquet``,
``imagefolder``, ...), a local folder, or a Hub repository. It has no public way to add a third-party
builder under a plain name, so :func:`register` wraps that one function:

* for the path ``"cxr_max"`` the wrapper returns the module :mod:`cxr_max.builder` (its ``CxrMax`` builder);
* for every other path it calls the original function with the same arguments and returns its result,
  untouched.

Nothing else in ``datasets`` is changed: its table of packaged modules, its module factories, its
configuration (download counters included) and every other name resolve as before. Because the
``cxr_max`` path never reaches the packaged-module factory, no download counter is pinged for it and no
folder is globbed for data files (the builder reads its own inputs: ``data_dir=``, ``trajectories=``, ...).

``import cxr_max`` calls :func:`register`; :func:`unregister` puts the original function back.
:func:`cxr_max.load_dataset` does not depend on any of this.
"""

from __future__ import annotations

import functools
import inspect

BUILDER_NAME = "cxr_max"
BUILDER_MODULE = "cxr_max.builder"
_installed = None  # the wrapper register() put in place, if any


def builder_module(data_files=None, revision=None):
    """The ``datasets.load.DatasetModule`` of the cxr_max builder (what the wrapper returns for ``"cxr_max"``).

    ``data_files`` and ``revision`` mean nothing to this builder (it is not a repository of data files), so
    they are refused instead of being ignored.
    """
    from datasets.load import DatasetModule

    from cxr_max import builder

    if data_files is not None:
        raise ValueError("the cxr_max builder reads its own inputs (data_dir=, trajectories=, preferences=, ...); "
                         f"data_files={data_files!r} is not used by it")
    if revision is not None:
        raise ValueError(f"the cxr_max builder is installed code, not a Hub repository; revision={revision!r} "
                         "is not used by it")
    return DatasetModule(BUILDER_MODULE, builder.loaded_code_digest(), {"dataset_name": BUILDER_NAME})


def _datasets_load():
    from datasets import load

    if not callable(getattr(load, "dataset_module_factory", None)):
        import datasets

        raise RuntimeError(f"datasets {datasets.__version__} has no datasets.load.dataset_module_factory; "
                           "use cxr_max.load_dataset(...) instead")
    return load


def is_registered() -> bool:
    """Whether ``datasets.load_dataset("cxr_max", ...)`` goes through the wrapper of :func:`register`."""
    from datasets import load

    fn, depth = getattr(load, "dataset_module_factory", None), 0
    while fn is not None and depth < 32:  # the wrapper, possibly wrapped again by someone else
        if fn is _installed:
            return True
        fn, depth = getattr(fn, "__wrapped__", None), depth + 1
    return False


def register() -> None:
    """Make ``datasets.load_dataset("cxr_max", ...)`` resolve to :mod:`cxr_max.builder` (idempotent)."""
    global _installed
    load = _datasets_load()
    if is_registered():
        return
    original = load.dataset_module_factory
    signature = inspect.signature(original)

    @functools.wraps(original)
    def dataset_module_factory(path, *args, **kwargs):
        if path != BUILDER_NAME:
            return original(path, *args, **kwargs)
        bound = signature.bind(path, *args, **kwargs).arguments
        return builder_module(bound.get("data_files"), bound.get("revision"))

    load.dataset_module_factory = _installed = dataset_module_factory
    # datasets.inspect (get_dataset_config_names, get_dataset_split_names) imported the same function by name
    inspect_module = _datasets_inspect()
    if inspect_module is not None and inspect_module.dataset_module_factory is original:
        inspect_module.dataset_module_factory = dataset_module_factory


def _datasets_inspect():
    try:
        from datasets import inspect as inspect_module
    except ImportError:  # pragma: no cover - depends on a future datasets
        return None
    return inspect_module if hasattr(inspect_module, "dataset_module_factory") else None


def unregister() -> None:
    """Put ``datasets``' own ``dataset_module_factory`` back (a no-op when :func:`register` is not in effect).

    If something else wrapped the cxr_max wrapper since, nothing is changed and a RuntimeError says so
    (removing ours would remove theirs too).
    """
    global _installed
    from datasets import load

    if not is_registered():
        return
    if load.dataset_module_factory is not _installed:
        raise RuntimeError("datasets.load.dataset_module_factory was wrapped again after cxr_max registered; "
                           "not removing the cxr_max wrapper from under that one")
    inspect_module = _datasets_inspect()
    if inspect_module is not None and inspect_module.dataset_module_factory is _installed:
        inspect_module.dataset_module_factory = _installed.__wrapped__
    load.dataset_module_factory, _installed = _installed.__wrapped__, None

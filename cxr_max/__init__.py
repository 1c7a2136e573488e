"""cxr_max: drift-aware multi-teacher distillation of chest X-ray VLMs on Hugging Face tools.

``import cxr_max`` makes ``datasets.load_dataset("cxr_max", ...)`` resolve to the cxr_max builder and changes
nothing for any other dataset (see :mod:`cxr_max.registration`). :func:`cxr_max.load_dataset` is the path that
does not depend on that registration.
"""

from cxr_max.labels import CHEXPERT_LABELS

__version__ = "0.1.0"
__all__ = ["CHEXPERT_LABELS", "load_dataset", "__version__"]

# datasets.load_dataset's parameters that mean nothing to the cxr_max builder: refused when given, never ignored.
_NOT_FOR_THIS_BUILDER = ("data_files", "features", "download_config", "verification_mode", "keep_in_memory",
                         "revision", "token", "storage_options", "save_infos")


def load_dataset(*args, **kwargs):
    """Load a cxr_max config; two call styles, told apart by the first argument.

    * ``cxr_max.load_dataset("sft", split="train", data_dir=..., ...)``: the config first, then the split
      (``cxr_max.builder.load_dataset(name, split, *, data_dir, streaming, num_proc, cache_dir, download_mode,
      **config_kwargs)``).
    * ``cxr_max.load_dataset("cxr_max", "sft", split="train", ...)``: exactly the arguments of
      ``datasets.load_dataset("cxr_max", ...)``, bound to its signature (so a third positional argument is
      ``data_dir``, as there). Its parameters that mean nothing to this builder (``data_files``, ``features``,
      ``revision``, ...) raise a TypeError when given.

    No config is named ``"cxr_max"``, so the two styles cannot be confused.
    """
    from cxr_max.builder import load_dataset as _load

    path = args[0] if args else kwargs.get("path")
    if path != "cxr_max":
        return _load(*args, **kwargs)
    import inspect

    import datasets

    bound = inspect.signature(datasets.load_dataset).bind(*args, **kwargs)
    given = dict(bound.arguments)
    given.pop("path")
    config_kwargs = given.pop("config_kwargs", {})
    unused = sorted(k for k in _NOT_FOR_THIS_BUILDER if given.pop(k, None) not in (None, False))
    if unused:
        raise TypeError(f"cxr_max.load_dataset('cxr_max', ...) got {', '.join(unused)}, which the cxr_max builder "
                        "does not use (it reads its own inputs: data_dir=, trajectories=, ...)")
    return _load(given.pop("name", None) or "mimic", given.pop("split", None), **given, **config_kwargs)


def _register() -> None:
    from cxr_max.registration import register

    register()


try:  # registration is best effort at import; cxr_max.load_dataset works regardless
    _register()
except Exception as _e:  # noqa: BLE001 - reported, never fatal at import
    import warnings

    warnings.warn(f"cxr_max could not register with datasets.load_dataset: {_e}", stacklevel=2)

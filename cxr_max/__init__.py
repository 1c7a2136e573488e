"""cxr_max: drift-aware multi-teacher distillation of chest X-ray VLMs on Hugging Face tools.

``import cxr_max`` registers the ``"cxr_max"`` builder with :func:`datasets.load_dataset`;
:func:`cxr_max.load_dataset` is the stable path that does not depend on that registration.
"""

from cxr_max.labels import CHEXPERT_LABELS

__version__ = "0.1.0"
__all__ = ["CHEXPERT_LABELS", "load_dataset", "__version__"]


def load_dataset(*args, **kwargs):
    """``datasets.load_dataset`` for the cxr_max builder; see :func:`cxr_max.builder.load_dataset`."""
    from cxr_max.builder import load_dataset as _load

    return _load(*args, **kwargs)


def _register() -> None:
    from cxr_max.builder import register_with_datasets

    register_with_datasets()


try:  # registration is best effort at import; cxr_max.load_dataset works regardless
    _register()
except Exception as _e:  # noqa: BLE001 - reported, never fatal at import
    import warnings

    warnings.warn(f"cxr_max could not register with datasets.load_dataset: {_e}", stacklevel=2)

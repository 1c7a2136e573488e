"""Test-wide settings: no network, caches inside the checkout, one shared synthetic world."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Set before any HF library is imported by a test module.
os.environ.setdefault("CXR_MAX_CACHE", str(ROOT / ".cache" / "cxr_max"))
os.environ.setdefault("HF_DATASETS_CACHE", str(ROOT / ".cache" / "hf_datasets"))
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TRACKIO_DISABLED", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_root() -> Path:
    """The default embedded synthetic MIMIC-CXR (built once, cached under .cache/)."""
    from cxr_max.synthetic import ensure_synthetic

    return Path(ensure_synthetic())

"""Optional CheXbert / RadGraph metrics: argument checks and every skip path (no package, no weights)."""

from __future__ import annotations

import importlib.util
import os

import pytest

import cxr_max.evaluation as ev
from cxr_max.errors import DataError
from cxr_max.evaluation import model_metrics as mm

PREDS = ["Small left pleural effusion.", "No acute cardiopulmonary process."]
REFS = ["Left pleural effusion.", "Normal chest."]


@pytest.mark.parametrize("fn", [mm.chexbert_f1, mm.radgraph_f1])
def test_argument_checks_raise(fn):
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        fn(PREDS, REFS[:1])
    with pytest.raises(DataError, match="no predictions"):
        fn([], [])
    with pytest.raises(DataError, match="row 1"):
        fn(["ok", None], ["ok", "ok"])  # type: ignore[list-item]
    with pytest.raises(DataError, match="refs.*row 0"):
        fn(["ok"], [b"bytes"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single string"):
        fn("a report", "a reference")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weights_path"):
        fn(PREDS, REFS, weights_path=3)  # type: ignore[arg-type]


def test_radgraph_model_type_checked():
    with pytest.raises(ValueError, match="model_type"):
        mm.radgraph_f1(PREDS, REFS, model_type="radgraph-xxl")


@pytest.mark.parametrize("fn, package", [(mm.chexbert_f1, "f1chexbert"), (mm.radgraph_f1, "radgraph")])
def test_missing_package_is_a_skip_with_the_install_hint(fn, package, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(mm.importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    out = fn(PREDS, REFS, weights_path=tmp_path)
    assert set(out) == {"skipped"}
    assert f"'{package}' package is not installed" in out["skipped"] and f"pip install {package}" in out["skipped"]


def _pretend_installed(monkeypatch, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(mm.importlib.util, "find_spec",
                        lambda name, *a: object() if name == package else real(name, *a))


def test_chexbert_skips_without_or_with_missing_weights(monkeypatch, tmp_path):
    _pretend_installed(monkeypatch, "f1chexbert")
    out = mm.chexbert_f1(PREDS, REFS)
    assert set(out) == {"skipped"} and "no local CheXbert weights" in out["skipped"]
    missing = tmp_path / "chexbert.pth"
    out = mm.chexbert_f1(PREDS, REFS, weights_path=missing)
    assert out == {"skipped": f"CheXbert weights file not found: {missing}"}
    wrong = tmp_path / "model.ckpt"
    wrong.write_bytes(b"not a checkpoint")
    out = mm.chexbert_f1(PREDS, REFS, weights_path=str(wrong))
    assert "named 'chexbert.pth'" in out["skipped"]


def test_radgraph_skips_without_or_with_empty_weights(monkeypatch, tmp_path):
    _pretend_installed(monkeypatch, "radgraph")
    out = mm.radgraph_f1(PREDS, REFS)
    assert set(out) == {"skipped"} and "no local RadGraph weights" in out["skipped"]
    out = mm.radgraph_f1(PREDS, REFS, weights_path=tmp_path)
    assert out == {"skipped": f"RadGraph weights folder not found or empty: {tmp_path / 'radgraph'}"}
    (tmp_path / "radgraph-xl").mkdir()
    out = mm.radgraph_f1(PREDS, REFS, weights_path=tmp_path, model_type="radgraph-xl")
    assert "not found or empty" in out["skipped"] and "radgraph-xl" in out["skipped"]


def test_offline_context_restores_settings(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    before = hf_constants.HF_HUB_OFFLINE
    with mm._hf_offline():
        assert hf_constants.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert hf_constants.HF_HUB_OFFLINE == before
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_exported_from_the_package():
    assert ev.chexbert_f1 is mm.chexbert_f1 and ev.radgraph_f1 is mm.radgraph_f1
    assert {"chexbert_f1", "radgraph_f1"} <= set(ev.__all__)

"""``model`` consensus runs end to end with the tiny CPU student (it only needs to run, not to be good)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_drift_core import make_world  # noqa: E402

from cxr_max.drift.compare import compare  # noqa: E402
from cxr_max.drift.findings import build_panel  # noqa: E402
from cxr_max.drift.model_consensus import consensus_prompt  # noqa: E402
from cxr_max.drift.preferences import write_preferences  # noqa: E402

training = pytest.importorskip("cxr_max.training")


def test_consensus_prompt_lists_every_trajectory():
    text = consensus_prompt("This is a chest X-ray <image>. What is it?", ["<think> a </think>A.", "B."])
    assert "<image>" not in text and "[1] <think> a </think>A." in text and "[2] B." in text
    assert "2 reasoning trajectories" in text


@pytest.mark.slow
def test_model_consensus_with_tiny_student(tmp_path):
    table, _ = make_world(n=6, seed=1)
    panel = build_panel(table, source="stored")
    texts = [t for t in table["raw"].to_pylist()] + [consensus_prompt("x", ["y"])]
    model, processor = training.tiny_vlm(texts, tmp_path / "student")
    calls = []

    def loader(subject_id, study_id, dicom_id):
        calls.append(dicom_id)
        return Image.new("RGB", (64, 64), color=(int(subject_id[-2:]) * 7 % 255,) * 3)

    result = compare(panel, consensus="model", model_consensus_kwargs=dict(
        model=str(tmp_path / "student"), image_loader=loader, batch_size=4, max_new_tokens=12, progress=False))
    assert sorted(calls) == sorted(panel.dicom_id.tolist())
    cons = result.consensus
    assert cons.method == "model" and cons.texts.shape == (6,)
    assert all(isinstance(t, str) for t in cons.texts)
    assert np.all((cons.confidence >= 0) & (cons.confidence <= 1))
    rows = result.rows
    assert rows and all(r["consensus_method"] == "model" and r["consensus_source"] == "model" for r in rows)
    assert all(r["chosen"] == cons.texts[list(panel.dicom_id).index(r["dicom_id"])] for r in rows)
    path = write_preferences(rows, tmp_path / "prefs")
    assert json.loads(path.read_text().splitlines()[0])["consensus_method"] == "model"

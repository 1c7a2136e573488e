"""`python recipes/apo.py` end to end on a tiny synthetic world (2 training steps per stage)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_apo_recipe_end_to_end_and_resume(tmp_path, monkeypatch):
    from cxr_max.synthetic import SIM_TEACHERS, ensure_synthetic

    root = ensure_synthetic(root=tmp_path / "world", n_patients=12)
    monkeypatch.syspath_prepend(str(REPO / "recipes"))
    monkeypatch.setattr(sys, "argv", ["apo.py"])
    import apo

    args = apo.APOArguments(output_dir=str(tmp_path / "out"), data_dir=str(root / "mimic-cxr-jpg"),
                            trajectories=str(root / "trajectories"), max_steps=2, eval_limit=4, eval_split="train")
    results = apo.main(args)
    out = tmp_path / "out"
    assert (out / "learn" / "config.json").is_file() and (out / "critique" / "config.json").is_file()
    assert any((out / "compare").glob("preferences*")) and (out / "drift_report" / "report.json").is_file()
    assert set(results["accuracy"]) == set(SIM_TEACHERS) | {"student (learn)", "student (APO)"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["accuracy"]["student (APO)"]["Avg"] == results["accuracy"]["student (APO)"]["Avg"]
    stages = json.loads((out / "critique" / "training_stages.json").read_text())
    assert [s["name"] for s in stages] == ["align", "learn", "critique"]  # the tiny student's alignment pass first
    pixels = saved["image_dependence"]
    assert set(pixels) == {"student (learn)", "student (APO)"}
    assert all(d["gap"] == pytest.approx(d["shuffled"] - d["true"]) and d["true"] > 0 for d in pixels.values())
    assert "another image" in (out / "results.md").read_text()
    # a rerun reuses every stage's output (no retraining): the checkpoints are untouched
    mtime = (out / "critique" / "model.safetensors").stat().st_mtime_ns
    apo.main(apo.APOArguments(**{**args.__dict__}))
    assert (out / "critique" / "model.safetensors").stat().st_mtime_ns == mtime

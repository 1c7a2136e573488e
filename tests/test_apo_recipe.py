"""The APO pipeline (cxr_max.stages.apo, what `python recipes/apo.py` runs) end to end on a tiny synthetic world
(2 training steps per stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fake_tracker import use_fake_tracker

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_apo_recipe_end_to_end_and_resume(tmp_path, monkeypatch):
    from cxr_max.synthetic import SIM_TEACHERS, ensure_synthetic

    root = ensure_synthetic(root=tmp_path / "world", n_patients=12)
    import yaml

    from cxr_max.stages import apo

    cfg = yaml.safe_load((REPO / "recipes/configs/learn_tiny.yaml").read_text())
    cfg.update(tiny_pretrain_patients=16, tiny_pretrain_epochs=1)  # a pretraining cohort small enough for a test
    (tmp_path / "learn.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("CXR_MAX_CACHE", str(tmp_path / "cache"))
    tracker = use_fake_tracker(monkeypatch)
    args = apo.APOArguments(output_dir=str(tmp_path / "out"), data_dir=str(root / "mimic-cxr-jpg"),
                            trajectories=str(root / "trajectories"), max_steps=2, eval_limit=4, eval_split="train",
                            learn_config=str(tmp_path / "learn.yaml"), report_to=["tensorboard"])
    results = apo.main(args)
    out = tmp_path / "out"
    # --report_to reached every stage: the trainers' logs, the compare summary and the final table
    by_dir = {Path(r["output_dir"]).name: r for r in tracker.runs}
    assert {"align", "learn", "compare", "critique", "oracle", "out"} <= set(by_dir)
    for stage in ("learn", "critique"):
        assert any("train_loss" in log for log in by_dir[stage]["logs"]), stage
    assert by_dir["compare"]["logs"][0]["compare/preference_rows"] > 0
    table = by_dir["out"]["logs"][0]
    apo_avg = results["metrics"]["student (APO)"]["Avg"]["balanced_accuracy"]["value"]
    assert table["test_student (APO)/Avg/balanced_accuracy"] == pytest.approx(apo_avg)
    assert (out / "learn" / "config.json").is_file() and (out / "critique" / "config.json").is_file()
    assert any((out / "compare").glob("preferences*")) and (out / "drift_report" / "report.json").is_file()
    oracle = "oracle ceiling (learn on the truth)"
    assert set(results["metrics"]) == set(SIM_TEACHERS) | {"student (learn)", "student (APO)", oracle,
                                                           "consensus (vote)", "majority answer"}
    assert results["metrics"]["majority answer"]["Avg"]["balanced_accuracy"]["value"] == pytest.approx(0.5, abs=0.01)
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["student (APO)"]["Avg"] == results["metrics"]["student (APO)"]["Avg"]
    assert (out / "oracle" / "config.json").is_file()
    # the compare stage read the train split only
    from cxr_max.synthetic import load_truth

    truth = load_truth(root)
    prefs = [json.loads(x) for x in (out / "compare" / "preferences.jsonl").read_text().splitlines()]
    assert prefs and {truth[p["dicom_id"]].split for p in prefs} == {"train"}
    stages = json.loads((out / "critique" / "training_stages.json").read_text())
    assert [s["name"] for s in stages] == ["align", "learn", "critique"]  # the tiny student's alignment pass first
    pixels = saved["image_dependence"]
    assert set(pixels) == {"student (learn)", "student (APO)", oracle}
    assert all(d["gap"] == pytest.approx(d["shuffled"] - d["true"]) and d["true"] > 0 for d in pixels.values())
    assert "another image" in (out / "results.md").read_text()
    # a rerun reuses every stage's output (no retraining): the checkpoints are untouched
    mtime = (out / "critique" / "model.safetensors").stat().st_mtime_ns
    apo.main(apo.APOArguments(**{**args.__dict__}))
    assert (out / "critique" / "model.safetensors").stat().st_mtime_ns == mtime

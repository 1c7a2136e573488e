"""--report_to for the stages that do not train: the compare and evaluation summaries reach the tracker through
transformers' reporting callbacks (tests/fake_tracker.py stands in for a real tracker: no network);
with report_to none no tracker is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_max.stages import compare, evaluate
from cxr_max.stages.tracking import Tracker, integrations
from tests.fake_tracker import use_fake_tracker


@pytest.fixture
def recorder(monkeypatch):
    return use_fake_tracker(monkeypatch)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from cxr_max.synthetic import ensure_synthetic

    return Path(ensure_synthetic(tmp_path_factory.mktemp("track") / "w", seed=0, n_patients=16, pixels="tiny"))


def test_report_to_values():
    assert integrations("none") == integrations(["none"]) == integrations(None) == []
    assert integrations(["trackio", "wandb"]) == integrations("trackio,wandb") == ["trackio", "wandb"]
    with pytest.raises(ValueError, match="not supported"):
        Tracker(["no-such-tracker"], run_name="r", output_dir="o")  # refused when the stage starts


def test_compare_summary_reaches_the_tracker(recorder, world, tmp_path):
    args = compare.CompareArguments(trajectories=str(world / "trajectories"), data_dir=str(world / "mimic-cxr-jpg"),
                                    output_dir=str(tmp_path / "c"), report=False, report_to=["tensorboard"],
                                    run_name="demo/compare")
    path = compare.main(args)
    rows = Path(path).read_text().splitlines()
    (run,) = recorder.runs
    assert run["name"] == "demo/compare" and run["closed"] and len(run["logs"]) == 1
    logged = run["logs"][0]
    assert logged["compare/preference_rows"] == len(rows) > 0
    assert 0 <= logged["compare/sim-glm-4.5v/agreement"] <= 1 and "compare/sim-grok-4/drift_points" in logged
    assert all(isinstance(v, float) for v in logged.values())


def test_evaluation_summary_reaches_the_tracker_and_none_sends_nothing(recorder, world, tmp_path):
    common = dict(teacher="sim-glm-4.5v", data_dir=str(world / "mimic-cxr-jpg"),
                  trajectories=str(world / "trajectories"), n_boot=20, plots=False)
    metrics = evaluate.main(evaluate.EvaluateArguments(**common, output_dir=str(tmp_path / "e"),
                                                       report_to=["tensorboard"]))
    (run,) = recorder.runs
    logged = run["logs"][0]
    assert run["name"] == "e" and logged["test_images"] == metrics["n_images"]
    assert logged["test_presence_accuracy/Avg"] == pytest.approx(metrics["accuracy"]["Avg"]["value"])
    assert logged["test_label_micro_f1"] == pytest.approx(metrics["label_f1"]["labels_14"]["micro_f1"]["value"])
    evaluate.main(evaluate.EvaluateArguments(**common, output_dir=str(tmp_path / "quiet")))  # report_to: none
    compare.main(compare.CompareArguments(trajectories=str(world / "trajectories"),
                                          data_dir=str(world / "mimic-cxr-jpg"), output_dir=str(tmp_path / "c"),
                                          report=False))
    assert recorder.created == 1 and len(recorder.runs) == 1

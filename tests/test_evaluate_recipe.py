"""The evaluate stage (cxr_max.stages.evaluate, run by recipes/evaluate.py) and cxr_max.evaluation.runner: scoring rules, resumable predictions, bad input, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_max.errors import DataError, SkipLog
from cxr_max.evaluation import runner
from cxr_max.evaluation.clinical import finding_state, ms_cxr_t_metrics, pair_progression

PRESENT = "The disease of this patient is pleural effusion."
ABSENT = "No pleural effusion. The heart size is normal, without cardiomegaly."


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from cxr_max.synthetic import ensure_synthetic

    return Path(ensure_synthetic(tmp_path_factory.mktemp("synth") / "w", seed=0, n_patients=24, pixels="tiny"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, world) -> Path:
    """An untrained tiny LLaVA (the embedded student architecture) with a tokenizer fit on the trajectories."""
    from cxr_max.training.tiny import TinyVLMSpec, tiny_vlm

    texts = [json.loads(line)["raw"] or "" for f in sorted((world / "trajectories").rglob("*.jsonl"))
             for line in f.read_text().splitlines()[:40]]
    out = tmp_path_factory.mktemp("model")
    tiny_vlm(texts + list(runner.PARAPHRASES), out, spec=TinyVLMSpec(image_size=32, patch_size=8, vocab_size=400))
    return out


# -- scoring rules -------------------------------------------------------------------------------------------


def test_presence_accuracy_hand_computed():
    preds = [{"Edema": 1.0}, {"Edema": 0.0}, {"Edema": -1.0}, {}]
    truth = [{"Edema": 1.0}, {"Edema": 1.0}, {"Edema": 0.0}, {"Edema": -1.0}]  # last one uncertain: left out
    acc = runner.presence_accuracy(preds, truth, ["Edema"], n_boot=200)
    # right, wrong (missed), right (uncertain prediction is not "present") -> 2/3 over 3 scored images
    assert acc["Edema"]["value"] == pytest.approx(2 / 3)
    assert acc["Edema"]["n"] == 3
    assert acc["Edema"]["ci_low"] <= 2 / 3 <= acc["Edema"]["ci_high"]
    assert acc["Avg"]["value"] == pytest.approx(2 / 3)


def test_agreement_counts_identical_findings():
    a = [{"Edema": 1.0, "Cardiomegaly": 0.0}, {"Edema": 1.0}]
    b = [{"Edema": 1.0, "Cardiomegaly": 1.0}, {"Edema": 1.0}]
    res = runner.agreement([a, b], ["Edema", "Cardiomegaly"], n_boot=100)
    assert res["value"] == pytest.approx(3 / 4)  # image 0 disagrees on Cardiomegaly only
    with pytest.raises(ValueError):
        runner.agreement([a], ["Edema"])


def test_finding_state_and_progression():
    assert finding_state("A small left pleural effusion.", "Pleural Effusion") == 1.0
    assert finding_state("Large right pleural effusion.", "Pleural Effusion") == 3.0
    assert finding_state("No pleural effusion.", "Pleural Effusion") == 0.0
    assert finding_state("Possible small pleural effusion.", "Pleural Effusion") == 0.5
    assert finding_state("Pleural effusion.", "Pleural Effusion") == 2.0  # present, no size word
    # the grade is read from the labeler's clauses: a line-wrapped sentence is one clause, a skipped section none
    assert finding_state("FINDINGS: Small left apical\npneumothorax.", "Pneumothorax") == 1.0
    assert finding_state("INDICATION: large effusion?\nFINDINGS: Small pleural effusion.", "Pleural Effusion") == 1.0
    assert pair_progression("Small pleural effusion.", "Large pleural effusion.", "Pleural Effusion") == "worsening"
    assert pair_progression("Large pleural effusion.", "No pleural effusion.", "Pleural Effusion") == "improving"
    assert pair_progression("No edema.", "No edema.", "Edema") == "stable"


def test_pair_records_missing_image_raises_or_counts():
    rows = [{"dicom_id": "a", "previous_dicom_id": "b", "edema_progression": "worsening"},
            {"dicom_id": "c", "previous_dicom_id": "gone", "edema_progression": "stable"}]
    answers = {"a": "Moderate pulmonary edema.", "b": "No edema.", "c": "No edema."}
    with pytest.raises(DataError, match="row 1.*gone"):
        runner.pair_records(rows, answers)
    skips = SkipLog()
    recs = runner.pair_records(rows, answers, on_error="skip", skips=skips)
    assert skips.total == 1 and len(recs) == 1
    assert recs[0]["finding"] == "Edema"
    assert (recs[0]["previous_answer"], recs[0]["answer"]) == ("No edema.", "Moderate pulmonary edema.")


def test_pairs_of_single_image_answers_are_scored():
    """Every pair gets a class from its two answers (none unparsed), scored against the label."""
    rows = [{"dicom_id": "a", "previous_dicom_id": "b", "edema_progression": "worsening",
             "pleural_effusion_progression": "improving"},
            {"dicom_id": "c", "previous_dicom_id": "d", "edema_progression": "stable",
             "pleural_effusion_progression": "stable"}]
    answers = {"b": "No edema. Large left pleural effusion.", "a": "Moderate pulmonary edema. Small left pleural effusion.",
               "d": "No edema. No pleural effusion.", "c": "Mild pulmonary edema. No pleural effusion."}
    out = ms_cxr_t_metrics(runner.pair_records(rows, answers), n_boot=50)
    assert out["n"] == 4 and out["unparsed"] == 0
    assert out["per_finding"]["Pleural Effusion"]["top1"]["value"] == 1.0
    assert out["per_finding"]["Edema"]["top1"]["value"] == 0.5  # "stable" pair read as worsening (0 -> 1)


# -- bad input ------------------------------------------------------------------------------------------------


def test_score_answers_bad_inputs():
    truth = [{"Pleural Effusion": 1.0}, {"Pleural Effusion": 0.0}]
    with pytest.raises(DataError, match="2 predictions but 1"):
        runner.score_answers([PRESENT, ABSENT], truth[:1], n_boot=50)
    with pytest.raises(DataError, match="no predictions"):
        runner.score_answers([], [], n_boot=50)
    with pytest.raises(DataError, match="row 1.*UTF-8"):
        runner.score_answers([PRESENT, b"\xff\xfe bad"], truth, n_boot=50)
    ok = runner.score_answers([PRESENT.encode("utf-8"), ""], truth, n_boot=50, reports=None)
    assert ok["accuracy"]["Pleural Effusion"]["value"] == 1.0  # an empty answer predicts nothing present
    assert ok["refusals_or_empty"] == 1


def test_runaway_and_empty_predictions_against_reports():
    truth = [{"Pleural Effusion": 1.0}] * 3
    reports = ["Small left pleural effusion."] * 3
    runaway = " ".join(["effusion"] * 600)  # over 100 x the 5-token reference (the cut-off is 50 x)
    with pytest.raises(DataError, match="row 1"):
        runner.score_answers([PRESENT, runaway, PRESENT], truth, reports=reports, n_boot=50)
    with pytest.raises(DataError, match="empty prediction"):
        runner.score_answers([PRESENT, "", PRESENT], truth, reports=reports, n_boot=50)
    skips = SkipLog()
    res = runner.score_answers([PRESENT, runaway, ""], truth, reports=reports, n_boot=50, on_error="skip", skips=skips)
    assert skips.total == 2 and res["report"]["n"] == 1 and res["report"]["n_skipped"] == 2


def test_predictions_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "predictions.jsonl"
    p.write_bytes(b'{"dicom_id": "a", "answer": "x"}\n\xff\xfe\n')
    with pytest.raises(DataError, match=r"predictions.jsonl, row 2: .*UTF-8"):
        runner.read_predictions(p)
    p.write_bytes(b'{"dicom_id": "a", "answer": "x"}\n{"dicom_id": "b"}\n')
    with pytest.raises(DataError, match="row 2.*answer"):
        runner.read_predictions(p)
    p.write_bytes(b'{"dicom_id": "a", "answer": "x"}\n{"dicom_id": "b", "ans')  # killed mid-write
    with pytest.raises(DataError, match="incomplete"):
        runner.read_predictions(p)
    assert list(runner.read_predictions(p, repair=True)) == ["a"]
    assert p.read_bytes() == b'{"dicom_id": "a", "answer": "x"}\n'


def test_predict_images_resumes_and_is_deterministic(tmp_path):
    calls = []

    def fake(images, prompt, *, do_sample, temperature, seed):
        calls.append(list(images))
        return [f"{im}-{seed}" for im in images]

    keys, images = [f"k{i}" for i in range(5)], [f"img{i}" for i in range(5)]
    path = tmp_path / "p.jsonl"
    runner.append_predictions(path, [{"key": "k1", "dicom_id": "k1", "answer": "old"}])
    with open(path, "ab") as fh:
        fh.write(b'{"key": "k2", "dic')  # torn line: k2 must be generated again
    got = runner.predict_images(fake, keys, images, path, batch_size=2, progress=False)
    assert got["k1"] == "old"
    assert sum(len(c) for c in calls) == 4 and all("img1" not in c for c in calls)
    assert len(path.read_text().splitlines()) == 5
    calls.clear()
    again = runner.predict_images(fake, keys, images, path, batch_size=2, progress=False)
    assert again == got and calls == []  # a rerun generates nothing


# -- end to end on a tiny world ----------------------------------------------------------------------------------


def test_evaluate_teacher_writes_outputs(world, tmp_path):
    jpg, traj = str(world / "mimic-cxr-jpg"), str(world / "trajectories")
    m = runner.evaluate(teacher="sim-glm-4.5v", out_dir=tmp_path, data_dir=jpg, trajectories=traj, n_boot=50)
    for f in ("predictions.jsonl", "metrics.json", "metrics.md", "accuracy.png"):
        assert (tmp_path / f).stat().st_size > 0
    n = m["n_images"]
    assert n > 0 and len((tmp_path / "predictions.jsonl").read_text().splitlines()) == n
    assert 0.0 <= m["accuracy"]["Avg"]["value"] <= 1.0
    assert "labels_14" in m["label_f1"]
    assert json.loads((tmp_path / "metrics.json").read_text())["name"] == "sim-glm-4.5v"
    runner.evaluate(teacher="sim-glm-4.5v", out_dir=tmp_path, data_dir=jpg, trajectories=traj, n_boot=50)
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == n  # resumed, nothing appended twice
    with pytest.raises(ValueError, match="exactly one"):
        runner.evaluate(out_dir=tmp_path)


def test_evaluate_recipe_model_and_ms_cxr_t(world, tiny_model, tmp_path):
    from cxr_max.stages import evaluate as recipe

    jpg = str(world / "mimic-cxr-jpg")
    args = recipe.EvaluateArguments(model_name_or_path=str(tiny_model), data_dir=jpg, output_dir=str(tmp_path / "m"),
                                    limit=3, max_new_tokens=6, n_boot=50, batch_size=2)
    m = recipe.main(args)
    assert m["n_images"] == 3
    lines = [json.loads(x) for x in (tmp_path / "m" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(isinstance(x["answer"], str) for x in lines)
    assert (tmp_path / "m" / "accuracy.png").stat().st_size > 0

    args = recipe.EvaluateArguments(model_name_or_path=str(tiny_model), dataset_config="ms_cxr_t", data_dir=jpg,
                                    ms_cxr_t=str(world / "ms-cxr-t"), output_dir=str(tmp_path / "t"), limit=2,
                                    max_new_tokens=6, n_boot=50, batch_size=4)
    t = recipe.main(args)
    assert t["ms_cxr_t"]["n"] >= 1
    assert t["ms_cxr_t"]["unparsed"] == 0  # a pair's class comes from its two answers, always
    assert np.isfinite(t["ms_cxr_t"]["avg_top1"]["value"])


def test_evaluate_stage_reads_ready_rows_as_the_builder_gives_them(world, tiny_model, tmp_path):
    """--dataset_name <folder>: the rows of --dataset_test_split are scored as they are; the builder's frontal test
    images written to a folder give the same images, answers and metrics as the builder path."""
    import cxr_max
    from cxr_max.stages import evaluate as recipe

    jpg = str(world / "mimic-cxr-jpg")
    rows = cxr_max.load_dataset("mimic", split="test", views="frontal", data_dir=jpg).select(range(3))
    (tmp_path / "rows").mkdir()
    rows.to_parquet(str(tmp_path / "rows" / "test.parquet"))
    common = dict(model_name_or_path=str(tiny_model), limit=3, max_new_tokens=6, n_boot=50, batch_size=2, plots=False)
    built = recipe.main(recipe.EvaluateArguments(data_dir=jpg, output_dir=str(tmp_path / "b"), **common))
    ready = recipe.main(recipe.EvaluateArguments(dataset_name=str(tmp_path / "rows"), output_dir=str(tmp_path / "r"),
                                                 **common))
    answers = [(tmp_path / d / "predictions.jsonl").read_text().splitlines() for d in ("b", "r")]
    assert [json.loads(x)["dicom_id"] for x in answers[0]] == [json.loads(x)["dicom_id"] for x in answers[1]]
    assert built["accuracy"] == ready["accuracy"] and ready["n_images"] == 3
    with pytest.raises(ValueError, match="--data_dir is an option of the cxr_max builder"):
        recipe.main(recipe.EvaluateArguments(dataset_name=str(tmp_path / "rows"), data_dir=jpg,
                                             output_dir=str(tmp_path / "x"), **common))
    (tmp_path / "bare").mkdir()
    rows.select_columns(["dicom_id", "image"]).to_parquet(str(tmp_path / "bare" / "test.parquet"))
    with pytest.raises(ValueError, match="missing labels"):
        recipe.main(recipe.EvaluateArguments(dataset_name=str(tmp_path / "bare"), output_dir=str(tmp_path / "y"),
                                             **common))


def test_majority_baseline_and_distinct_answers():
    truth = [{"Edema": 1.0}, {"Edema": 0.0}, {"Edema": 0.0}, {"Edema": -1.0}]
    base = runner.majority_baseline(truth, ["Edema"], n_boot=50)
    assert base["Edema"]["value"] == pytest.approx(2 / 3)  # "no edema" for all: right on the two negatives
    same = runner.score_answers(["No edema."] * 3, truth[:3], findings=["Edema"], n_boot=50)
    assert same["distinct_label_sets"] == 1
    varied = runner.score_answers(["Pulmonary edema.", "No edema.", "Cardiomegaly."], truth[:3], findings=["Edema"],
                                  n_boot=50)
    assert varied["distinct_label_sets"] == 3

"""The drift benchmark's pieces: truth renderer, control preferences, metrics and the report's checks (fast)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from cxr_max.drift.controls import (
    closest_to_truth,
    control_preferences,
    split_table,
    truth_trajectory,
    write_truth_trajectories,
)
from cxr_max.errors import DataError
from cxr_max.evaluation import bench_report
from cxr_max.evaluation.labeler import label_reports
from cxr_max.evaluation.probe import (
    balanced_accuracy,
    finding_metrics,
    macro_f1,
    probe_metrics,
    roc_auc,
    template_texts,
)


def _truth(labels, lat=None, split="train"):
    return SimpleNamespace(labels=labels, laterality=lat or {}, split=split)


# -- truth renderer -------------------------------------------------------------------------------------------

def test_truth_trajectory_states_exactly_the_truth_and_negates_the_rest():
    text = truth_trajectory({"Pleural Effusion": 1.0, "Edema": -1.0, "Cardiomegaly": None},
                            {"Pleural Effusion": "left"})
    assert "left pleural effusion" in text and "no cardiomegaly" in text.lower()
    lab = label_reports([text])[0]
    assert lab["Pleural Effusion"] == 1.0 and lab["Edema"] == -1.0
    for f in ("Cardiomegaly", "Consolidation", "Pneumothorax", "Atelectasis"):
        assert lab[f] == 0.0, f  # stated absent, not silent


def test_write_truth_trajectories_keeps_every_record_and_refusals(tmp_path):
    src = tmp_path / "src" / "sim-a"
    src.mkdir(parents=True)
    recs = [{"dicom_id": "d1", "raw": "<think> x </think>The disease of this patient is edema.", "refusal": False,
             "status": "ok", "labels": {"Edema": 1.0}, "laterality": None, "reasoning": "x", "answer": "a"},
            {"dicom_id": "d2", "raw": "As an AI, I cannot provide medical diagnoses.", "refusal": True, "status": "ok", "labels": None}]
    (src / "part-00000.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    truth = {"d1": _truth({"Cardiomegaly": 1.0}), "d2": _truth({})}
    out = write_truth_trajectories(tmp_path / "src", truth, tmp_path / "out")
    got = [json.loads(x) for x in (out / "sim-a" / "part-00000.jsonl").read_text().splitlines()]
    assert len(got) == 2
    assert got[1] == recs[1]  # the refusal is copied as it is
    assert got[0]["labels"] == {"Cardiomegaly": 1.0} and "cardiomegaly" in got[0]["raw"].lower()
    assert label_reports([got[0]["raw"]])[0]["Edema"] == 0.0  # the teacher's edema is gone
    with pytest.raises(DataError, match="d1"):
        write_truth_trajectories(tmp_path / "src", {"d2": _truth({})}, tmp_path / "out2")


# -- control preferences --------------------------------------------------------------------------------------

def _row(**kw):
    row = {"dicom_id": "d1", "prompt": "p", "chosen": "C", "rejected": ["A", "B", "As an AI, I cannot provide medical diagnoses."],
           "rejected_teachers": ["ta", "tb", "tr"], "rejected_weights": [0.5, 1.5, 1.0], "consensus_source": "tc",
           "consensus_method": "vote", "rejected_agreement": [0.1, 0.2, None]}
    row.update(kw)
    return row


def test_positive_control_chosen_is_the_teacher_closest_to_the_truth_and_every_other_is_rejected():
    truth = {"d1": _truth({"Edema": 1.0})}
    texts = {"A": "There is no pulmonary edema. No pleural effusion.",
             "B": "There is moderate pulmonary edema. No pleural effusion.",  # right on all six findings
             "C": "There is pulmonary edema. There is a left pleural effusion."}
    row = _row(chosen=texts["C"], rejected=[texts["A"], texts["B"], "As an AI, I cannot provide medical diagnoses."])
    (got,) = control_preferences([row], truth, "positive")
    assert got["chosen"] == texts["B"] and got["consensus_source"] == "closest to the truth: tb"
    # every other teacher is rejected (the refusal and the consensus teacher's own text too)
    assert got["rejected"] == [texts["A"], "As an AI, I cannot provide medical diagnoses.", texts["C"]]
    assert got["rejected_teachers"] == ["ta", "tr", "tc"]
    assert got["rejected_weights"] == [1.0] * 3 and "rejected_agreement" not in got
    assert closest_to_truth(["As an AI, I cannot provide medical diagnoses.", ""], {"Edema": 1.0}) is None


def test_closest_to_truth_breaks_ties_at_random_not_by_teacher_order():
    import random

    right = ["There is pulmonary edema.", "Moderate pulmonary edema is present.", "Edema is seen."]
    texts = ["There is no pulmonary edema.", *right]
    assert closest_to_truth(texts, {"Edema": 1.0}) == 1  # no rng: the first of the tied
    picks = {closest_to_truth(texts, {"Edema": 1.0}, rng=random.Random(i)) for i in range(40)}
    assert picks == {1, 2, 3}  # every tied trajectory gets picked, the wrong one never
    # control_preferences draws per image, reproducibly: the positives spread over the tied teachers
    truth = {f"d{i}": _truth({"Edema": 1.0}) for i in range(30)}
    rows = [_row(dicom_id=f"d{i}", chosen=right[0], rejected=[texts[0], *right[1:]]) for i in range(30)]
    first = [r["chosen"] for r in control_preferences(rows, truth, "positive", seed=3)]
    assert first == [r["chosen"] for r in control_preferences(rows, truth, "positive", seed=3)]
    assert set(first) == set(right)


def test_positive_control_rendered_is_the_truth_and_every_teacher_is_rejected():
    truth = {"d1": _truth({"Edema": 1.0})}
    (row,) = control_preferences([_row()], truth, "positive", positive="rendered")
    assert row["chosen"] == truth_trajectory({"Edema": 1.0})
    assert row["rejected"] == ["A", "B", "As an AI, I cannot provide medical diagnoses.", "C"]  # the consensus teacher's text too
    assert row["rejected_teachers"] == ["ta", "tb", "tr", "tc"]
    assert row["rejected_weights"] == [1.0] * 4 and "rejected_agreement" not in row
    (rendered,) = control_preferences([_row(consensus_source="rendered")], truth, "positive", positive="rendered")
    assert "C" not in rendered["rejected"]  # a rendered consensus is no teacher's answer


def test_negative_control_picks_a_random_non_refusal_teacher_and_is_seeded():
    rows = [_row(dicom_id=f"d{i}") for i in range(40)]
    truth = {r["dicom_id"]: _truth({}) for r in rows}
    a = control_preferences(rows, truth, "negative", seed=0)
    b = control_preferences(rows, truth, "negative", seed=0)
    assert [r["chosen"] for r in a] == [r["chosen"] for r in b]
    assert {r["chosen"] for r in a} == {"A", "B", "C"}  # never the refusal, every usable teacher drawn
    for r in a:
        assert r["chosen"] not in r["rejected"] and len(r["rejected"]) == 3
    assert control_preferences([_row(rejected=["As an AI, I cannot provide medical diagnoses."], rejected_teachers=["tr"],
                                     consensus_source="rendered")], truth, "negative") == []
    with pytest.raises(ValueError):
        control_preferences(rows, truth, "other")
    with pytest.raises(ValueError, match="closest or rendered"):
        control_preferences(rows, truth, "positive", positive="truth")


def test_split_table_keeps_only_that_split():
    t = pa.table({"dicom_id": ["a", "b", "c", "zz"], "x": [1, 2, 3, 4]})
    truth = {"a": _truth({}, split="train"), "b": _truth({}, split="test"), "c": _truth({}, split="train")}
    assert split_table(t, truth, "train").column("dicom_id").to_pylist() == ["a", "c"]


# -- metrics ----------------------------------------------------------------------------------------------------

def test_balanced_accuracy_and_macro_f1_by_hand():
    # TP 3, FP 1, FN 1, TN 5: sensitivity 3/4, specificity 5/6
    assert balanced_accuracy(3, 1, 1, 5) == pytest.approx((0.75 + 5 / 6) / 2)
    # F1(pos) = 6/8, F1(neg) = 10/12
    assert macro_f1(3, 1, 1, 5) == pytest.approx((6 / 8 + 10 / 12) / 2)
    assert np.isnan(balanced_accuracy(0, 0, 0, 4))  # no positives: undefined


def test_finding_metrics_constant_answer_is_half_and_uncertain_left_out():
    truths = [{"Edema": 1.0}, {"Edema": 0.0}, {"Edema": None}, {"Edema": -1.0}]
    never = finding_metrics([{}] * 4, truths, ["Edema"], n_boot=100)["Edema"]
    assert never["balanced_accuracy"]["value"] == 0.5 and never["accuracy"]["value"] == pytest.approx(2 / 3)
    assert never["n"] == 3 and never["positives"] == 1
    pred = [{"Edema": 1.0}, {"Edema": 1.0}, {}, {"Edema": 1.0}]
    m = finding_metrics(pred, truths, ["Edema"], n_boot=100)["Edema"]
    assert m["balanced_accuracy"]["value"] == pytest.approx(0.75)  # sens 1, spec 1/2
    assert m["macro_f1"]["value"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert m["balanced_accuracy"]["ci_low"] <= 0.75 <= m["balanced_accuracy"]["ci_high"]
    with pytest.raises(ValueError):
        finding_metrics([{}], truths)


def test_roc_auc_and_probe_metrics_by_hand():
    assert roc_auc(np.array([0.9, 0.1, 0.5, 0.5]), np.array([True, False, True, False])) == pytest.approx(0.875)
    truths = [{"Edema": 1.0}, {"Edema": 0.0}, {"Edema": 1.0}]
    scores = np.array([[0.3], [-0.2], [-0.1]])
    m = probe_metrics(scores, truths, ["Edema"], n_boot=50)["Edema"]
    assert m["balanced_accuracy"]["value"] == pytest.approx(0.75) and m["auc"] == pytest.approx(1.0)


def test_probe_templates_are_fixed_and_not_the_renderer_wording():
    present, absent = template_texts("Pleural Effusion")
    assert len(present) == len(absent) == 3
    rendered = truth_trajectory({"Pleural Effusion": 1.0})
    assert not any(t in rendered for t in present + absent)
    assert all(t.startswith("<think> ") and "</think>The " in t for t in present + absent)  # the trajectory format
    labels = label_reports(present + absent)
    assert [lab["Pleural Effusion"] for lab in labels] == [1.0] * 3 + [0.0] * 3  # each says what it should


# -- report checks -----------------------------------------------------------------------------------------------

def _m(vals: dict) -> dict:
    out = {f: {m: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1} for m in ("balanced_accuracy", "accuracy",
                                                                              "macro_f1", "auc")}
           for f, v in vals.items()}
    out["Avg"] = {m: {"value": float(np.mean(list(vals.values()))), "ci_low": 0.0, "ci_high": 1.0}
                  for m in ("balanced_accuracy", "accuracy", "macro_f1", "auc")}
    return out


def test_summary_checks_oracle_controls_and_disagreements(tmp_path):
    F = ("Edema", "Cardiomegaly")
    student = lambda e, c, pe=None: {"metrics": _m({"Edema": e, "Cardiomegaly": c}),  # noqa: E731
                                     "probe": _m({"Edema": pe if pe is not None else e, "Cardiomegaly": c})}
    results = {
        "n_test_images": 10,
        "teachers": {"t1": {"metrics": _m({"Edema": 0.80, "Cardiomegaly": 0.70})},
                     "t2": {"metrics": _m({"Edema": 0.60, "Cardiomegaly": 0.75})}},
        "consensus": {"vote": {"metrics": _m({"Edema": 0.85, "Cardiomegaly": 0.80})}},
        "majority": {"metrics": _m({"Edema": 0.5, "Cardiomegaly": 0.5})},
        "students": {"learn/seed0": student(0.6, 0.6), "learn/seed1": student(0.62, 0.6),
                     "oracle/seed0": student(0.9, 0.78), "oracle/seed1": student(0.9, 0.80),
                     "apo-positive/seed0": student(0.7, 0.7), "apo-positive/seed1": student(0.72, 0.7),
                     "apo-negative/seed0": student(0.58, 0.6, pe=0.9), "apo-negative/seed1": student(0.6, 0.6, pe=0.9)},
        "sweep": {"0/3 drifting|learn/seed0": {"metrics": _m({"Edema": 0.6, "Cardiomegaly": 0.6})}},
        "timings_s": {"x": 60.0},
    }
    s = bench_report.write_report(results, tmp_path, findings=F)
    assert (tmp_path / "balanced_accuracy.png").stat().st_size > 1000
    bars = bench_report.plot_rows(results, s, findings=F)
    assert bars["best teacher (per finding)"]["Cardiomegaly"]["value"] == pytest.approx(0.75)  # t2, not t1
    assert bars["student: oracle"]["Edema"]["value"] == pytest.approx(0.90)
    assert s["best_teacher"]["Edema"] == {"teacher": "t1", "balanced_accuracy": 0.80}
    om = s["checks"]["oracle_margin"]
    assert om["per_finding"]["Edema"] == pytest.approx(0.10)
    assert om["per_finding"]["Cardiomegaly"] == pytest.approx(0.79 - 0.75)
    assert om["met"] is False and om["findings_missed"] == ["Cardiomegaly"]
    assert s["checks"]["consensus_margin_vote"]["above_on_every_finding"] is True
    assert s["checks"]["vs_learn"]["apo-positive"]["value"] == pytest.approx(0.10)  # (.70 - .60, .71 - .61)
    assert s["checks"]["positive_control_beats_learn"] is True
    assert s["checks"]["negative_control_not_above_learn"] is True
    flags = s["checks"]["disagreements"]
    assert any(f.startswith("apo-negative vs learn") for f in flags)  # generated -0.01, probe +0.14
    assert any("apo-negative on Edema" in f for f in flags)
    assert s["claims"]["robustness"]["learn"]["0/3 drifting"]["value"] == pytest.approx(0.6)
    md = (tmp_path / "results.md").read_text()
    assert "| consensus (vote) | .85 | .80 | .82 |" in md
    assert "missed on Cardiomegaly" in md
    assert "| **student, learn only (2 seeds)** | .61 | .60 | .60 |" in md


def test_plots_never_switch_the_callers_backend(tmp_path):
    """Library plots use matplotlib's Figure API: a notebook's backend (here svg) is left as it was."""
    import matplotlib

    from cxr_max.evaluation.plots import plot_finding_bars

    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg", force=True)
        cell = {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8}
        plot_finding_bars({"m": {"Edema": cell, "Avg": cell}}, tmp_path / "b.png", findings=("Edema",))
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before, force=True)

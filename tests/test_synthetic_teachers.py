"""The simulated teachers: planted behaviours measurable against the truth; text states the claims."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from cxr_max.labels import LATERAL_FINDINGS
from cxr_max.synthetic import SHARED_ERRORS, SIM_TEACHERS, generate_world, simulate_trajectories
from cxr_max.drift.teacher_accuracy import teacher_accuracy_table
from cxr_max.synthetic.teachers import HEADLINE_FINDINGS, shared_error_applies
from cxr_max.synthetic.world import image_truths
from cxr_max.trajectories.parse import is_refusal, split_answer
from cxr_max.trajectories.schema import normalize_record
from test_synthetic_labeler import read_labels

POS = (1.0, -1.0)


@pytest.fixture(scope="module")
def truths():
    return [t for t in image_truths(generate_world(seed=11, n_patients=1500))]


@pytest.fixture(scope="module")
def claims(truths):
    return {name: [t_.claims(t) for t in truths] for name, t_ in SIM_TEACHERS.items()}


def test_seven_teachers_named_after_cxr_max():
    assert set(SIM_TEACHERS) == {"sim-sonnet-4", "sim-gpt-5-nano", "sim-glm-4.5v", "sim-gemini-2.5-flash-lite",
                                 "sim-moonshot-v1", "sim-qwen-vl-max", "sim-grok-4"}
    kinds = {p["kind"] for t in SIM_TEACHERS.values() for p in t.planted}
    assert {"high_precision", "high_recall", "laterality_swap", "refusal", "hallucination", "sudden_drift",
            "gradual_drift", "shared_error"} <= kinds
    assert all(t.profile and t.version for t in SIM_TEACHERS.values())


def test_claims_deterministic_and_vary_with_sample(truths):
    t = SIM_TEACHERS["sim-gpt-5-nano"]
    assert [t.claims(x) for x in truths[:50]] == [t.claims(x) for x in truths[:50]]
    assert [t.respond(x) for x in truths[:50]] == [t.respond(x) for x in truths[:50]]
    differ = sum(t.claims(x, sample=0) != t.claims(x, sample=1) for x in truths[:300])
    assert 0 < differ < 300
    assert t.claims(truths[0], seed=1) != t.claims(truths[0], seed=0) or t.respond(truths[0], seed=1) != t.respond(truths[0])


def _swap_rate(truths, claims):
    swaps = n = 0
    for t, (_, lat, refused) in zip(truths, claims):
        for f in LATERAL_FINDINGS:
            if t.laterality[f] in ("left", "right") and lat[f] in ("left", "right"):
                n += 1
                swaps += lat[f] != t.laterality[f]
    return swaps / n


def test_laterality_teacher_swaps_at_its_rate(truths, claims):
    rate = next(p["rate"] for p in SIM_TEACHERS["sim-qwen-vl-max"].planted if p["kind"] == "laterality_swap")
    qwen, glm = _swap_rate(truths, claims["sim-qwen-vl-max"]), _swap_rate(truths, claims["sim-glm-4.5v"])
    assert glm < 0.12
    assert abs(qwen - rate) < 0.1


def _planted(name, kind):
    return next(p for p in SIM_TEACHERS[name].planted if p["kind"] == kind)


def test_refuser_refuses_at_its_rate(truths, claims):
    refusals = [c[2] for c in claims["sim-moonshot-v1"]]
    assert abs(sum(refusals) / len(refusals) - _planted("sim-moonshot-v1", "refusal")["rate"]) < 0.03
    assert not any(c[2] for c in claims["sim-glm-4.5v"])
    t = SIM_TEACHERS["sim-moonshot-v1"]
    for x, (labels, lat, refused) in list(zip(truths, claims["sim-moonshot-v1"]))[:200]:
        assert is_refusal(t.respond(x)) == refused
        if refused:
            assert all(v is None for v in labels.values())


def _miss_rate(truths, claims, finding, lo, hi):
    hits = [c[0][finding] not in POS for t, c in zip(truths, claims)
            if lo <= t.stream_pos < hi and t.labels[finding] == 1.0 and not c[2]]
    return sum(hits) / len(hits)


def test_sudden_drift_changes_error_rate_at_start(truths, claims):
    name = "sim-gemini-2.5-flash-lite"
    p = _planted(name, "sudden_drift")
    f = p["finding"]
    before = _miss_rate(truths, claims[name], f, 0.0, p["start"])
    after = _miss_rate(truths, claims[name], f, p["start"], 1.0)
    # before the start: its own misreads plus a few perception misses near the threshold
    assert before < SIM_TEACHERS[name].miss[f] + 0.1
    # after it: the planted rate of the findings it still saw goes missing on top
    assert after == pytest.approx(before + p["rate"] * (1 - before), abs=0.06)


def _error_rate(truths, claims, lo, hi, findings=("Cardiomegaly", "Pleural Effusion", "Consolidation", "Edema")):
    errs = n = 0
    for t, (labels, _, refused) in zip(truths, claims):
        if lo <= t.stream_pos < hi and not refused:
            for f in findings:
                n += 1
                errs += (labels[f] in POS) != (t.labels[f] in POS)
    return errs / n


def test_gradual_drift_ramps(truths, claims):
    grok = [_error_rate(truths, claims["sim-grok-4"], lo, lo + 0.25) for lo in (0.0, 0.25, 0.5, 0.75)]
    glm = [_error_rate(truths, claims["sim-glm-4.5v"], lo, lo + 0.25) for lo in (0.0, 0.75)]
    assert grok[3] > grok[0] + 0.15 and grok[2] > grok[0]
    assert abs(glm[1] - glm[0]) < 0.08


def test_precision_vs_recall_styles(truths, claims):
    def pr(name):
        tp = fp = fn = 0
        for t, (labels, _, refused) in zip(truths, claims[name]):
            for f in ("Cardiomegaly", "Pleural Effusion", "Consolidation", "Atelectasis"):
                p, g = labels[f] == 1.0, t.labels[f] == 1.0
                tp += p and g
                fp += p and not g
                fn += g and not p
        return tp / (tp + fp), tp / (tp + fn)

    (p_sonnet, r_sonnet), (p_gpt, r_gpt) = pr("sim-sonnet-4"), pr("sim-gpt-5-nano")
    assert p_sonnet > p_gpt + 0.1 and r_gpt > r_sonnet + 0.2


def test_shared_wrong_majority_where_planted(truths, claims):
    names = list(SIM_TEACHERS)
    for err in SHARED_ERRORS:
        f = err["finding"]
        wrong_in = wrong_out = n_in = n_out = 0
        for i, t in enumerate(truths):
            truth_pos = t.labels[f] in POS
            eligible = (truth_pos if err["effect"] == "miss" else
                        (not truth_pos and t.labels[err["condition"]] == 1.0))
            if not eligible:
                continue
            votes = [claims[n][i][0][f] in POS for n in names if not claims[n][i][2]]
            majority_wrong = (sum(votes) > len(votes) / 2) != truth_pos
            lo, hi = err["window"]
            if lo <= t.stream_pos < hi:
                n_in += 1
                wrong_in += majority_wrong
                assert shared_error_applies(err, t) in (True, False)
            else:
                n_out += 1
                wrong_out += majority_wrong
        assert n_in >= 10, err["id"]
        assert wrong_in / n_in > 0.6 and wrong_in / n_in > wrong_out / n_out + 0.3, (err["id"], wrong_in / n_in, wrong_out / n_out)


_ITEM = re.compile(r"^(possible )?(?:(left|right|bilateral) )?(.+)$")
_NAMES = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
          "consolidation": "Consolidation", "pulmonary edema": "Edema", "atelectasis": "Atelectasis",
          "support devices": "Support Devices", "pneumonia": "Pneumonia", "lung nodule": "Lung Lesion",
          "rib fracture": "Fracture"}


def _answer_claims(answer: str) -> tuple[dict[str, float], dict[str, str]]:
    if answer == "The patient has no acute cardiopulmonary disease.":
        return {}, {}
    m = re.fullmatch(r"The disease of this patient is (.+)\.", answer)
    assert m, answer
    labels, lat = {}, {}
    for item in re.split(r", | and ", m.group(1)):
        hedge, side, name = _ITEM.match(item).groups()
        labels[_NAMES[name]] = -1.0 if hedge else 1.0
        if side:
            lat[_NAMES[name]] = side
    return labels, lat


@pytest.mark.parametrize("task", ["diagnose", "explain", "report"])
def test_respond_states_exactly_the_claims(truths, task):
    for name, teacher in SIM_TEACHERS.items():
        for x in truths[:120]:
            for sample in (0, 1):
                labels, lat, refused = teacher.claims(x, task=task, sample=sample)
                raw = teacher.respond(x, task=task, sample=sample)
                assert is_refusal(raw) == refused
                if refused:
                    continue
                reasoning, answer = split_answer(raw)
                assert reasoning and answer
                stated = read_labels(reasoning)
                expect = {k: v for k, v in labels.items() if v is not None and k != "No Finding"}
                if task == "report":
                    assert answer.startswith("FINDINGS:") and "IMPRESSION:" in answer
                    assert read_labels(answer.split("IMPRESSION:")[0].replace("FINDINGS:", "")) == expect, (name, raw)
                else:
                    got, got_lat = _answer_claims(answer)
                    want = {k: v for k, v in labels.items() if v in POS and k not in ("Lung Opacity", "No Finding")}
                    assert got == want, (name, raw)
                    assert got_lat == {k: v for k, v in lat.items() if v}, (name, raw)
                assert stated == expect, (name, task, raw, labels)
                assert (labels["No Finding"] == 1.0) == ("no acute cardiopulmonary" in raw.lower())


def test_simulate_trajectories_writes_canonical_shards(tmp_path, truths):
    sub = {t.dicom_id: t for t in truths[:60]}
    out = simulate_trajectories(tmp_path, tasks=("diagnose", "explain"), samples=2, seed=0, truth=sub,
                                teachers=["sim-grok-4", "sim-moonshot-v1"])
    assert out == tmp_path / "trajectories"
    recs = []
    for name in ("sim-grok-4", "sim-moonshot-v1"):
        lines = (out / name / "part-00000.jsonl").read_text().splitlines()
        assert len(lines) == 60 * 2 * 2
        rows = [json.loads(line) for line in lines]
        assert [r["collected_at"] for r in rows] == sorted(r["collected_at"] for r in rows)
        recs += rows
    teacher = SIM_TEACHERS["sim-moonshot-v1"]
    for r in recs:
        assert normalize_record(r) == r
        if r["teacher"] == "sim-moonshot-v1":
            labels, lat, refused = teacher.claims(sub[r["dicom_id"]], task=r["task"], sample=r["sample"])
            assert r["refusal"] == refused
            assert r["labels"] == (None if refused else labels)
        if r["task"] == "explain":
            assert "diagnosed with" in r["prompt"]
    with pytest.raises(ValueError, match="unknown simulated teacher"):
        simulate_trajectories(tmp_path, teachers=["sim-nope"], truth=sub)


# -- teacher-specific misreads and the consensus ---------------------------------------------------------

def _outside_windows(t, finding):
    return not any(e["window"][0] <= t.stream_pos < e["window"][1] for e in SHARED_ERRORS if e["finding"] == finding)


@pytest.mark.parametrize("name,finding", [("sim-glm-4.5v", "Cardiomegaly"), ("sim-qwen-vl-max", "Pleural Effusion"),
                                          ("sim-sonnet-4", "Consolidation")])
def test_misses_at_their_planted_rate(truths, claims, name, finding):
    """On clear findings (far above every threshold) a teacher without other planted effects there misses at
    its own ``miss`` rate."""
    key = {"Cardiomegaly": ("cardiomegaly",), "Pleural Effusion": ("effusion_left", "effusion_right"),
           "Consolidation": ("consolidation_left", "consolidation_right")}[finding]
    clear = [i for i, t in enumerate(truths) if max(t.severity[k] for k in key) >= 0.7 and t.view != "AP"]
    assert len(clear) > 120
    missed = np.mean([claims[name][i][0][finding] not in POS for i in clear])
    assert missed == pytest.approx(SIM_TEACHERS[name].miss[finding], abs=0.05)


def test_false_positives_at_their_planted_rate(truths, claims):
    """On images without a trace of the finding, the high-recall teacher states it at 70 % of its false-positive
    rate and hedges it at the other 30 %; the high-precision one calls it at its own, far lower rate."""
    f = "Edema"
    clean = [i for i, t in enumerate(truths) if t.severity["edema"] == 0 and _outside_windows(t, f)]
    gpt = SIM_TEACHERS["sim-gpt-5-nano"]
    stated = np.mean([claims["sim-gpt-5-nano"][i][0][f] == 1.0 for i in clean])
    hedged = np.mean([claims["sim-gpt-5-nano"][i][0][f] == -1.0 for i in clean])
    assert stated == pytest.approx(0.7 * gpt.false_positive[f], abs=0.03)
    assert hedged == pytest.approx(0.3 * gpt.false_positive[f], abs=0.03)
    sonnet = np.mean([claims["sim-sonnet-4"][i][0][f] in POS for i in clean])
    assert sonnet == pytest.approx(SIM_TEACHERS["sim-sonnet-4"].false_positive[f], abs=0.02)
    assert sonnet < stated / 5


def test_misreads_are_teacher_specific(truths, claims):
    """Two teachers' misses on the same clear images are independent (joint rate = product of rates)."""
    clear = [i for i, t in enumerate(truths) if t.severity["cardiomegaly"] >= 0.75 and t.view != "AP"]
    a = np.array([claims["sim-glm-4.5v"][i][0]["Cardiomegaly"] not in POS for i in clear])
    b = np.array([claims["sim-qwen-vl-max"][i][0]["Cardiomegaly"] not in POS for i in clear])
    assert a.mean() > 0.1 and b.mean() > 0.1  # misses common enough to test independence
    assert (a & b).mean() == pytest.approx(a.mean() * b.mean(), abs=0.03)


@pytest.fixture(scope="module")
def accuracy(truths, claims):
    return teacher_accuracy_table(truths, claims=claims)


def test_teachers_are_at_mllm_level(accuracy):
    """Every teacher's balanced accuracy over the six headline findings is that of a real MLLM, none is near
    perfect on any finding (so a student that reads the pixels has room above them)."""
    for name, row in accuracy["teachers"].items():
        assert 0.62 <= row["mean"] <= 0.88, (name, row["mean"])
        for f in HEADLINE_FINDINGS:
            assert 0.6 <= row[f]["balanced_accuracy"] <= 0.88, (name, f, row[f]["balanced_accuracy"])


def test_consensus_beats_the_best_teacher_on_every_finding(accuracy):
    for method in ("vote", "dawid_skene"):
        for f in HEADLINE_FINDINGS:
            assert accuracy["margin"][method][f] > 0.02, (method, f, accuracy["margin"][method][f])
    assert accuracy["consensus"]["vote"]["mean"] > max(r["mean"] for r in accuracy["teachers"].values()) + 0.05


def test_accuracy_table_scores_by_hand(truths):
    """balanced accuracy = (sensitivity + specificity) / 2 with hedged truth left out, checked on 4 images."""
    base = truths[0]
    rows = []
    for lab in (1.0, 1.0, 0.0, -1.0):
        labels = dict(base.labels) | {"Edema": lab}
        rows.append(dataclasses.replace(base, labels=labels, dicom_id=f"img{len(rows)}"))
    said = [1.0, None, 1.0, 1.0]  # TP, FN, FP, (hedged truth: not scored)
    claims = {"t": [({"Edema": v}, {}, False) for v in said]}
    tab = teacher_accuracy_table(rows, teachers={"t": SIM_TEACHERS["sim-glm-4.5v"]}, claims=claims,
                                 findings=("Edema",), consensus=())
    e = tab["teachers"]["t"]["Edema"]
    assert (e["n_pos"], e["n_neg"]) == (2, 1)
    assert e["sensitivity"] == 0.5 and e["specificity"] == 0.0 and e["balanced_accuracy"] == 0.25
    with pytest.raises(ValueError, match="do not match"):
        teacher_accuracy_table(rows, claims={"t": said[:2]}, consensus=())
    with pytest.raises(ValueError, match="no images"):
        teacher_accuracy_table(rows, claims=claims, teachers={"t": SIM_TEACHERS["sim-glm-4.5v"]}, split="nope")

"""The simulated teachers: planted behaviours measurable against the truth; text states the claims."""

from __future__ import annotations

import json
import re

import pytest

from cxr_max.labels import LATERAL_FINDINGS
from cxr_max.synthetic import SHARED_ERRORS, SIM_TEACHERS, generate_world, simulate_trajectories
from cxr_max.synthetic.teachers import shared_error_applies
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


def test_refuser_refuses_at_its_rate(truths, claims):
    refusals = [c[2] for c in claims["sim-moonshot-v1"]]
    assert abs(sum(refusals) / len(refusals) - 0.25) < 0.03
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
    before = _miss_rate(truths, claims["sim-gemini-2.5-flash-lite"], "Pleural Effusion", 0.0, 0.5)
    after = _miss_rate(truths, claims["sim-gemini-2.5-flash-lite"], "Pleural Effusion", 0.5, 1.0)
    assert before < 0.25 and after > before + 0.5


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

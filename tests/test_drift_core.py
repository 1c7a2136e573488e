"""Compare stage on a small planted world built here (independent of cxr_max.synthetic).

Teachers: three honest ones with light noise, a sudden drifter (misses effusion from stream 0.5 on),
a laterality swapper, a refuser, and a late joiner (absent for the first 40% of the stream).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cxr_max.drift.compare import compare, run_compare
from cxr_max.drift.consensus import dawid_skene_consensus, usable_images, vote_consensus
from cxr_max.drift.findings import ABSENT, NEG, NO_VOTE, POS, PRESENT, UNCERTAIN, build_panel
from cxr_max.drift.preferences import PREFERENCE_FIELDS, render_trajectory, write_preferences
from cxr_max.errors import DataError, SkipLog
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS
from cxr_max.trajectories.prompts import render_prompt
from cxr_max.trajectories.schema import ARROW_SCHEMA

FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumothorax", "Support Devices")
PREVALENCE = (0.2, 0.3, 0.15, 0.2, 0.35, 0.1, 0.25)
EFF = CHEXPERT_LABELS.index("Pleural Effusion")
REFUSAL = "As an AI, I cannot provide medical diagnoses. Please consult a radiologist."
TEACHERS = ("honest-a", "honest-b", "honest-c", "drifter", "lateral", "refuser", "late")
DRIFT_START, SWAP_RATE, REFUSAL_RATE, LATE_START = 0.5, 0.6, 0.25, 0.4


def _truth(rng: np.random.Generator, n: int):
    state = np.full((n, 14), ABSENT, dtype=np.int8)
    side = np.zeros((n, 4), dtype=np.int8)
    for name, p in zip(FINDINGS, PREVALENCE):
        state[:, CHEXPERT_LABELS.index(name)] = (rng.random(n) < p).astype(np.int8)
    for j, name in enumerate(LATERAL_FINDINGS):
        k = CHEXPERT_LABELS.index(name)
        side[:, j] = np.where(state[:, k] == PRESENT, rng.integers(1, 3, n), 0)
    pathology = [CHEXPERT_LABELS.index(f) for f in FINDINGS if f != "Support Devices"]
    state[:, CHEXPERT_LABELS.index("No Finding")] = (state[:, pathology] == ABSENT).all(axis=1)
    return state, side


def _codes(state: np.ndarray) -> np.ndarray:
    mentioned = np.zeros(14, dtype=bool)
    mentioned[[CHEXPERT_LABELS.index(f) for f in FINDINGS]] = True
    return np.where(state == PRESENT, POS, np.where(mentioned, NEG, 0)).astype(np.int8)


def make_world(n: int = 1500, seed: int = 0) -> tuple[pa.Table, dict]:
    """Canonical records (with a stream_pos column) and the truth/planted facts."""
    rng = np.random.default_rng(seed)
    state, side = _truth(rng, n)
    pos = np.sort(rng.random(n))
    records = []
    refused_at = {}
    for t in TEACHERS:
        for i in range(n):
            if t == "late" and pos[i] < LATE_START:
                continue
            s, sd = state[i].copy(), side[i].copy()
            flip = rng.random(len(FINDINGS)) < 0.03
            for f, fl in zip(FINDINGS, flip):
                k = CHEXPERT_LABELS.index(f)
                if fl:
                    s[k] = PRESENT if s[k] == ABSENT else ABSENT
            if t == "drifter" and pos[i] >= DRIFT_START and rng.random() < 0.9:
                s[EFF] = ABSENT
            if t == "lateral":
                swap = (rng.random(4) < SWAP_RATE) & (sd > 0) & (sd < 3)
                sd[swap] = 3 - sd[swap]
            for j, f in enumerate(LATERAL_FINDINGS):
                k = CHEXPERT_LABELS.index(f)
                if s[k] == PRESENT and sd[j] == 0:
                    sd[j] = 1
                if s[k] != PRESENT:
                    sd[j] = 0
            pathology = [CHEXPERT_LABELS.index(f) for f in FINDINGS if f != "Support Devices"]
            s[CHEXPERT_LABELS.index("No Finding")] = (s[pathology] == ABSENT).all()
            refused = t == "refuser" and rng.random() < REFUSAL_RATE
            refused_at[(i, t)] = refused
            codes = _codes(s)
            labels = {name: {POS: 1.0, NEG: 0.0, 0: None}[int(c)] for name, c in zip(CHEXPERT_LABELS, codes)}
            lat = {name: {0: None, 1: "left", 2: "right", 3: "bilateral"}[int(sd[j])] for j, name in enumerate(LATERAL_FINDINGS)}
            raw = REFUSAL if refused else render_trajectory(s, codes, sd)
            records.append({
                "subject_id": f"1{i:07d}", "study_id": f"5{i:07d}", "dicom_id": f"img-{i:05d}", "teacher": t,
                "teacher_version": "v1", "collected_at": None, "task": "diagnose", "sample": 0,
                "prompt": render_prompt("diagnose"), "reasoning": None, "answer": None, "raw": raw,
                "refusal": refused, "status": "ok", "error": None, "prompt_tokens": None, "completion_tokens": None,
                "labels": None if refused else labels, "laterality": None if refused else lat,
                "stream_pos": float(pos[i]),
            })
    schema = ARROW_SCHEMA.append(pa.field("stream_pos", pa.float64()))
    return pa.Table.from_pylist(records, schema=schema), {"state": state, "side": side, "pos": pos}


def _first_images(table: pa.Table, n: int) -> pa.Table:
    ids = pa.array([f"img-{i:05d}" for i in range(n)])
    return table.filter(pc.is_in(table["dicom_id"], value_set=ids))


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def panel(world):
    return build_panel(world[0], source="stored")


def test_panel_shapes_order_and_coverage(world, panel):
    table, truth = world
    assert panel.teachers == sorted(TEACHERS)
    assert panel.labels.shape == (1500, 7, 14)
    assert np.all(np.diff(panel.stream_pos) >= 0)
    late = panel.teachers.index("late")
    assert not panel.present[panel.stream_pos < LATE_START, late].any()
    assert panel.present[panel.stream_pos >= LATE_START, late].all()
    ref = panel.teachers.index("refuser")
    assert 0.2 < panel.refused[:, ref].mean() < 0.3
    assert panel.flags.counts["refusal (no vote)"] == int(panel.refused.sum())
    assert (panel.state[panel.refused] == NO_VOTE).all()


def test_vote_recovers_truth_and_marks_ties(panel, world):
    truth = world[1]
    cons = vote_consensus(panel)
    eff_acc = (cons.state[:, EFF] == truth["state"][:, EFF]).mean()
    assert eff_acc > 0.97
    # sides: the swapper is outvoted
    j = LATERAL_FINDINGS.index("Pleural Effusion")
    has = truth["state"][:, EFF] == PRESENT
    assert (cons.side[has, j] == truth["side"][has, j]).mean() > 0.95
    # a 2-vs-2 split on a finding gives UNCERTAIN and a tie flag
    sub = panel.subset(np.arange(panel.n_images) < 5)
    sub.labels = sub.labels.copy()
    sub.present = sub.present.copy()
    sub.present[:, 4:] = False  # keep four teachers
    sub.labels[:, :2, EFF] = POS
    sub.labels[:, 2:4, EFF] = NEG
    c2 = vote_consensus(sub)
    assert (c2.state[:, EFF] == UNCERTAIN).all() and c2.tie[:, EFF].all() and c2.low_confidence.all()


def test_dawid_skene_agrees_with_truth_and_estimates_confusion(panel, world):
    truth = world[1]
    cons = dawid_skene_consensus(panel)
    assert (cons.state[:, EFF] == truth["state"][:, EFF]).mean() > 0.97
    d = panel.teachers.index("drifter")
    h = panel.teachers.index("honest-a")
    # P(says absent | truly present) for effusion: the drifter misses about half overall, honest ones rarely
    assert cons.confusion[EFF, d, PRESENT, ABSENT] > 0.3
    assert cons.confusion[EFF, h, PRESENT, ABSENT] < 0.1


def test_drift_points_and_reliability_recover_planted_behaviour(panel):
    result = compare(panel, consensus="vote", negative_weighting="drift")
    eff_points = [p for p in result.drift_points if p.teacher == "drifter" and p.signal == "Pleural Effusion"]
    assert eff_points, "the drifter's effusion drift was not detected"
    assert min(abs(p.change_at - DRIFT_START) for p in eff_points) < 0.08
    best = min(eff_points, key=lambda p: abs(p.change_at - DRIFT_START))
    assert best.before > best.after + 0.3
    honest_eff = [p for p in result.drift_points if p.teacher.startswith("honest") and p.signal == "Pleural Effusion"]
    assert not honest_eff
    t = result.report["teachers"]
    assert t["lateral"]["laterality_swap_rate"] == pytest.approx(SWAP_RATE, abs=0.08)
    assert max(v["laterality_swap_rate"] for k, v in t.items() if k != "lateral") < 0.1
    assert t["refuser"]["refusal_rate"] == pytest.approx(REFUSAL_RATE, abs=0.04)
    assert t["late"]["coverage"] == pytest.approx(1 - LATE_START, abs=0.05)
    assert t["late"]["first_stream_pos"] >= LATE_START
    # per-window effusion agreement of the drifter falls after the planted start
    w = t["drifter"]["findings"]["Pleural Effusion"]["window_agreement"]
    assert np.mean(w[:5]) > np.mean(w[5:]) + 0.3


def test_drift_weighting_pushes_harder_in_drift_windows(panel):
    result = compare(panel, consensus="vote", negative_weighting="drift")
    def mean_weight(before: bool):
        ws = [r["rejected_weights"][r["rejected_teachers"].index("drifter")] for r in result.rows
              if "drifter" in r["rejected_teachers"] and (r["stream_pos"] < DRIFT_START) == before]
        return float(np.mean(ws))
    assert mean_weight(before=False) > mean_weight(before=True) * 1.2
    for r in result.rows:
        assert np.mean(r["rejected_weights"]) == pytest.approx(1.0)
    uni = compare(panel, consensus="vote", negative_weighting="uniform")
    assert all(w == 1.0 for r in uni.rows for w in r["rejected_weights"])


def test_preference_rows_are_complete_and_consistent(panel, tmp_path):
    result = compare(panel, consensus="vote", drop_refusals=True)
    assert len(result.rows) == result.kept.sum() - result.skips.counts.get("no negatives left for the image", 0)
    row = result.rows[0]
    assert list(row)[:10] == list(PREFERENCE_FIELDS)
    for r in result.rows:
        assert "<image>" in r["prompt"]
        assert r["chosen"] not in r["rejected"]
        assert len(r["rejected"]) == len(r["rejected_teachers"]) == len(r["rejected_weights"]) == len(r["rejected_agreement"])
        assert "refuser" not in r["rejected_teachers"] or "As an AI" not in r["rejected"][r["rejected_teachers"].index("refuser")]
        assert r["consensus_source"] in set(TEACHERS) | {"rendered"}
    path = write_preferences(result.rows, tmp_path)
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert back[3]["rejected_teachers"] == result.rows[3]["rejected_teachers"]
    pq_path = write_preferences(result.rows, tmp_path, fmt="parquet")
    import pyarrow.parquet as pq
    t = pq.read_table(pq_path)
    assert t.num_rows == len(result.rows) and t.column_names[:10] == list(PREFERENCE_FIELDS)


def test_drop_agreeing_removes_exact_matches(panel):
    result = compare(panel, consensus="vote", drop_agreeing=True)
    for r in result.rows[:200]:
        assert all(a is None or a < 1.0 for a in r["rejected_agreement"])


def test_bad_images_are_skipped_with_counts(world):
    table = world[0]
    # image 0: every teacher refuses; image 1: only one teacher left
    recs = table.to_pylist()
    for rec in recs:
        if rec["dicom_id"] == "img-00000":
            rec.update(raw=REFUSAL, refusal=True, labels=None, laterality=None)
    recs = [r for r in recs if not (r["dicom_id"] == "img-00001" and r["teacher"] != "honest-a")]
    bad = pa.Table.from_pylist(recs, schema=table.schema)
    panel = build_panel(bad, source="stored")
    keep, reasons = usable_images(panel)
    ids = list(panel.dicom_id)
    assert not keep[ids.index("img-00000")] and reasons["all teachers refused"][ids.index("img-00000")]
    assert reasons["fewer than 2 usable trajectories"][ids.index("img-00001")]
    result = compare(panel)
    assert result.skips.counts["all teachers refused"] == 1
    assert result.skips.counts["fewer than 2 usable trajectories"] >= 1
    assert len(result.rows) + result.skips.total >= panel.n_images


def test_empty_trajectory_and_duplicates(world):
    table = world[0]
    recs = _first_images(table, 10).to_pylist()
    recs[0].update(raw="The image quality is limited.", labels={n: None for n in CHEXPERT_LABELS})
    t = pa.Table.from_pylist(recs, schema=table.schema)
    panel = build_panel(t, source="stored")
    assert panel.empty.sum() == 1
    assert panel.flags.counts["no extractable findings (no vote)"] == 1
    dup = pa.Table.from_pylist(recs + [recs[3]], schema=table.schema)
    with pytest.raises(DataError, match="duplicate trajectory"):
        build_panel(dup, source="stored")
    skips = SkipLog()
    p2 = build_panel(dup, source="stored", on_error="skip", skips=skips)
    assert skips.total == 1 and p2.present.sum() == panel.present.sum()


def test_text_extraction_matches_stored_labels_and_conflicts(world):
    table = _first_images(world[0], 300)
    stored = build_panel(table, source="stored")
    text = build_panel(table, source="text")
    assert text.source == "text"
    assert (stored.state == text.state).mean() > 0.99
    assert (stored.side == text.side).mean() > 0.99
    # a trajectory naming two single sides for one finding: its side is unknown, presence still votes
    recs = _first_images(table, 20).to_pylist()
    r0 = next(r for r in recs if r["teacher"] == "honest-a" and r["labels"]["Pleural Effusion"] == 1.0
              and r["laterality"]["Pleural Effusion"] == "left")
    r0["raw"] = "<think> There is a left pleural effusion. A right pleural effusion is also seen. </think>The disease of this patient is pleural effusion."
    p = build_panel(pa.Table.from_pylist(recs, schema=table.schema), source="text")
    i, t = list(p.dicom_id).index(r0["dicom_id"]), p.teachers.index("honest-a")
    j = LATERAL_FINDINGS.index("Pleural Effusion")
    assert p.side_conflict[i, t, j] and p.state[i, t, EFF] == PRESENT
    cons = vote_consensus(p)
    assert cons.side[i, j] == 1  # decided by the other teachers' sides (left)


def test_run_compare_writes_report_and_preferences(world, tmp_path):
    table = _first_images(world[0], 200)
    result = run_compare(table, order="column", source="stored", out=tmp_path / "prefs", report_dir=tmp_path / "rep",
                         consensus="vote", negative_weighting="reliability", progress=False)
    assert result.preferences_path.exists()
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(rep["teachers"]) <= set(TEACHERS)
    for f in ("agreement_matrix.png", "agreement_over_stream.png", "refusal_verbosity.png", "summary.md"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    assert "Drift report" in (tmp_path / "rep" / "summary.md").read_text()



def test_positive_ties_are_drawn_per_image_not_by_teacher_order(panel):
    """Several teachers agree exactly with the consensus on most images; the positive is one of the closest,
    drawn at random per image (seeded), so no single teacher's phrasing becomes most of the positives."""
    from collections import Counter

    from cxr_max.drift.preferences import build_preferences

    result = compare(panel, consensus="vote", positive_text="closest")
    sub, cons = panel.subset(result.kept), result.consensus
    index = {d: i for i, d in enumerate(sub.dicom_id)}
    teachers = list(sub.teachers)
    tied = 0
    for r in result.rows:
        i = index[r["dicom_id"]]
        agree = np.where(sub.usable[i], cons.agreement[i], np.nan)
        assert agree[teachers.index(r["consensus_source"])] == np.nanmax(agree)  # one of the closest
        tied += int(np.sum(agree == np.nanmax(agree)) > 1)
    assert tied > 0.5 * len(result.rows)
    sources = Counter(r["consensus_source"] for r in result.rows)
    assert max(sources.values()) < 0.4 * len(result.rows)
    assert all(sources[t] > 0.1 * len(result.rows) for t in ("honest-a", "honest-b", "honest-c"))
    # deterministic for a seed; another seed draws other ties
    same = build_preferences(sub, cons, positive_text="closest")
    other = build_preferences(sub, cons, positive_text="closest", seed=1)
    assert [r["chosen"] for r in same] == [r["chosen"] for r in result.rows]
    assert sum(a["consensus_source"] != b["consensus_source"] for a, b in zip(same, other)) > 0.2 * len(same)

"""The drift report recovers the synthetic teachers' planted behaviour (read from SIM_TEACHERS, not hard-coded)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

synthetic = pytest.importorskip("cxr_max.synthetic")

from cxr_max.drift.compare import run_compare  # noqa: E402
from cxr_max.drift.findings import build_panel  # noqa: E402
from cxr_max.drift.io import read_trajectories, stream_positions  # noqa: E402

N_IMAGES = 6000
TOL = 0.05  # stream-position tolerance for a recovered change point


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic.ensure_synthetic(tmp_path_factory.mktemp("synth") / "world", n_images=N_IMAGES, pixels="none")


@pytest.fixture(scope="module")
def result(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return run_compare(root / "trajectories", data_dir=root / "mimic-cxr-jpg", out=out / "prefs",
                       report_dir=out / "report", source="stored", consensus="vote", negative_weighting="drift",
                       progress=False)


def _planted(kind: str):
    return [(name, p) for name, t in synthetic.SIM_TEACHERS.items() for p in t.planted if p["kind"] == kind]


def _points(result, teacher, signal):
    return [p for p in result.drift_points if p.teacher == teacher and p.signal == signal]


def test_stream_order_comes_from_the_metadata(root, result):
    truth = synthetic.load_truth(root)
    pos = stream_positions(root / "mimic-cxr-jpg")
    ids = list(truth)[:200]
    # same order as the synthetic world's own stream_pos (both rank studies by date and time)
    ours = pos.reindex(ids).to_numpy()
    theirs = np.array([truth[i].stream_pos for i in ids])
    assert np.corrcoef(ours, theirs)[0, 1] > 0.999
    assert np.all(np.diff(result.panel.stream_pos) >= 0)


def test_sudden_drift_is_found_where_planted(result):
    planted = _planted("sudden_drift")
    assert planted
    for teacher, p in planted:
        pts = _points(result, teacher, p["finding"])
        assert pts, f"no drift detected for {teacher} on {p['finding']}"
        best = min(pts, key=lambda q: abs(q.change_at - p["start"]))
        assert abs(best.change_at - p["start"]) < TOL
        assert best.before - best.after > 0.4  # it starts missing the finding
        # honest teachers show no change on that finding (they are not in a shared error on it)
        others = [n for n, t in synthetic.SIM_TEACHERS.items() if n != teacher and not any(
            q.get("finding") == p["finding"] or p["finding"] in q.get("findings", ()) for q in t.planted)]
        assert others
        for other in others:
            assert not _points(result, other, p["finding"])


def test_gradual_drift_shows_as_a_falling_agreement(result):
    for teacher, p in _planted("gradual_drift"):
        w = [x for x in result.report["teachers"][teacher]["window_agreement"]]
        assert np.mean(w[:3]) - np.mean(w[-3:]) > 0.15
        pts = _points(result, teacher, "overall")
        assert pts and all(q.after < q.before for q in pts)
        # it falls more than any non-drifting teacher
        drop = {n: np.mean(t["window_agreement"][:3]) - np.mean(t["window_agreement"][-3:])
                for n, t in result.report["teachers"].items()}
        assert max(drop, key=drop.get) == teacher


def test_shared_wrong_majority_windows_are_found_on_the_minority(result):
    for err in synthetic.SHARED_ERRORS:
        minority = [n for n in synthetic.SIM_TEACHERS if n not in err["teachers"]]
        lo, hi = err["window"]
        for teacher in minority:
            pts = _points(result, teacher, err["finding"])
            assert any(abs(q.change_at - lo) < TOL and q.after < q.before for q in pts), (teacher, err["id"], pts)
            # at this size the return to normal is too short a stretch for a detector to confirm; the
            # per-window agreement shows it: low inside the window, high outside
            w = result.report["teachers"][teacher]["findings"][err["finding"]]["window_agreement"]
            edges = np.asarray(result.report["window_edges"])
            mids = (edges[:-1] + edges[1:]) / 2
            inside = (mids > lo) & (mids < hi)
            vals = np.array([np.nan if x is None else x for x in w], dtype=float)
            # (teachers at MLLM level disagree with the consensus off the window too, so the drop is relative:
            # measured inside/outside .62 at the weakest pair, B edema on sim-moonshot-v1 (world
            # v6); why an absolute .2 gap cannot be had without losing the vote's lead: README, simulated
            # teachers; without the shared error both sides are alike)
            assert np.nanmean(vals[inside]) < 0.75 * np.nanmean(vals[~inside])


def test_laterality_swapper_and_refuser_are_recovered(root, result):
    teachers = result.report["teachers"]
    for teacher, p in _planted("laterality_swap"):
        swap = {n: t["laterality_swap_rate"] for n, t in teachers.items()}
        assert max(swap, key=swap.get) == teacher
        assert swap[teacher] > 0.5 * p["rate"]
        assert all(v < 0.05 for n, v in swap.items() if n != teacher)
        # the swap rate against the consensus matches the rate measured against the truth
        truth = synthetic.load_truth(root)
        table = read_trajectories(root / "trajectories")
        t = table.filter(pc.equal(table["teacher"], teacher)).to_pylist()
        n = swaps = 0
        for rec in t:
            tr = truth[rec["dicom_id"]]
            for f, side in (rec["laterality"] or {}).items():
                if side in ("left", "right") and tr.laterality.get(f) in ("left", "right") and tr.labels.get(f) == 1.0:
                    n += 1
                    swaps += side != tr.laterality[f]
        assert abs(swaps / n - swap[teacher]) < 0.06
    for teacher, p in _planted("refusal"):
        assert teachers[teacher]["refusal_rate"] == pytest.approx(p["rate"], abs=0.03)
        others = [t["refusal_rate"] for n, t in teachers.items() if n != teacher and not
                  any(q["kind"] == "refusal" for q in synthetic.SIM_TEACHERS[n].planted)]
        assert max(others) < 0.01


def test_report_files_and_preferences(result):
    rep = json.loads((result.report_dir / "report.json").read_text())
    assert rep["consensus"]["n_images_total"] == N_IMAGES
    assert set(rep["teachers"]) == set(synthetic.SIM_TEACHERS)
    for f in ("agreement_matrix.png", "agreement_over_stream.png", "refusal_verbosity.png", "summary.md"):
        assert (result.report_dir / f).stat().st_size > 1000 or f == "summary.md"
    rows = [json.loads(line) for line in result.preferences_path.read_text().splitlines()]
    assert len(rows) == len(result.rows) > 0.95 * N_IMAGES
    # drift weighting: the sudden drifter is pushed harder after its planted start
    for teacher, p in _planted("sudden_drift"):
        def w(after: bool):
            return np.mean([r["rejected_weights"][r["rejected_teachers"].index(teacher)] for r in rows
                            if teacher in r["rejected_teachers"] and (r["stream_pos"] >= p["start"]) == after])
        # measured 1.17x (world v6, 6,000 images)
        assert w(True) > 1.15 * w(False)


def test_text_extraction_agrees_with_the_teachers_claims(root):
    table = read_trajectories(root / "trajectories")
    ids = pc.unique(table["dicom_id"]).slice(0, 150)
    table = table.filter(pc.is_in(table["dicom_id"], value_set=ids))
    pos = stream_positions(root / "mimic-cxr-jpg")
    stored = build_panel(table, pos, source="stored")
    text = build_panel(table, pos, source="text")
    assert text.source == "text"
    assert (stored.state == text.state).mean() > 0.97
    assert (stored.refused == text.refused).all()


def test_cli_drift_report(root, tmp_path, capsys):
    from cxr_max.cli.main import main

    out = tmp_path / "rep"
    code = main(["drift-report", "--trajectories", str(root / "trajectories"), "--data-dir", str(root / "mimic-cxr-jpg"),
                 "--out", str(out), "--labels", "stored", "--consensus", "dawid_skene", "--preferences",
                 str(tmp_path / "prefs")])
    res_output = capsys.readouterr().out
    assert code == 0, res_output
    assert "Teachers vs consensus" in res_output and "sim-qwen-vl-max" in res_output
    rep = json.loads((out / "report.json").read_text())
    assert rep["consensus"]["method"] == "dawid_skene"
    assert (tmp_path / "prefs" / "preferences.jsonl").exists()

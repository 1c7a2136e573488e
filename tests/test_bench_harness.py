"""The drift benchmark's harness can tell, shown on a small world at a test-suite budget (slow, ~4 min).

``recipes/benchmark.py`` trains learn-only, the positive and negative controls and the oracle on a 200-patient
world with a small pretrained tower (300 patients, 10 epochs) and two learn epochs, then this test checks
what such a budget can show (measured on this machine, seed 0):

- the consensus (vote and Dawid-Skene) reads the test images better than the best single teacher, averaged
  over the six findings (.84 / .89 against .79);
- the oracle student (the learn recipe on truth-rendered trajectories) reads the images: .65 against the
  image-blind majority's .50 (pleural effusion .88, cardiomegaly .86);
- the critique stage learns the preference it is given: on the controls' own training images, the positive
  control (APO whose positive is the teacher trajectory closest to the truth) widens the gap between that
  trajectory and the other teachers' in its own likelihood, and the negative control (a random teacher's
  trajectory as the positive) does not.

At this budget every student's generated answers are still the image-blind majority answer (learn and both
controls .50), and on held-out images the likelihood gap does not separate the controls (learn .004, positive
.007, negative .017); both separate at the benchmark's budget (600 patients: held-out gap learn .007,
positive .074, negative .001; generated answers in README, "The drift benchmark"), which ``make
bench-science`` measures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# one worker trains the students once for both tests (make test runs pytest-xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("bench_harness")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    mp = pytest.MonkeyPatch()
    mp.setenv("CXR_MAX_CACHE", str(tmp / "cache"))
    sys.path.insert(0, str(ROOT / "recipes"))
    import benchmark

    cfg = yaml.safe_load((ROOT / "recipes/configs/learn_tiny.yaml").read_text())
    cfg.update(tiny_pretrain_patients=300, tiny_pretrain_epochs=10)
    learn_config = tmp / "learn_small.yaml"
    learn_config.write_text(yaml.safe_dump(cfg))
    a = benchmark.BenchArguments(results_dir=str(tmp / "res"), work_dir=str(tmp / "work"), seeds=[0],
                                 synthetic_patients=200, learn_epochs=2.0, learn_config=str(learn_config),
                                 variants=["learn", "apo-positive", "apo-negative", "oracle"], sweep=False,
                                 consistency_images=0, shifted=False, probe=False, n_boot=200, jobs=1)
    results = benchmark.main(a)
    yield benchmark, a, results
    mp.undo()


def _avg(rec) -> float:
    return rec["metrics"]["Avg"]["balanced_accuracy"]["value"]


@pytest.mark.slow
def test_consensus_beats_the_best_teacher_and_the_oracle_reads_the_images(bench):
    _, _, res = bench
    best_teacher = max(_avg(r) for r in res["teachers"].values())
    for method in ("vote", "dawid_skene"):
        assert _avg(res["consensus"][method]) > best_teacher + 0.03, method
    majority = _avg(res["majority"])
    assert majority == pytest.approx(0.5)
    oracle = res["students"]["oracle/seed0"]["metrics"]
    assert _avg(res["students"]["oracle/seed0"]) > majority + 0.08
    assert oracle["Avg"]["balanced_accuracy"]["ci_low"] > majority  # over a bootstrap of the test images


@pytest.mark.slow
def test_the_positive_control_learns_its_preference_and_the_negative_one_does_not(bench):
    """On the controls' own training images: each image's teacher trajectory closest to the truth against the
    other teachers' trajectories, the margin being the mean log-likelihood per answer token of the closest one
    minus that of the others. APO with the truth-closest positive must widen it well beyond learn-only; APO
    with a random teacher's positive must not (measured: learn .007, positive .030, negative .009)."""
    _, a, _ = bench
    import cxr_max
    from cxr_max.drift import io as drift_io
    from cxr_max.drift.controls import closest_to_truth, split_table
    from cxr_max.evaluation.predict import answer_losses, user_message
    from cxr_max.synthetic import ensure_synthetic, load_truth
    from cxr_max.trajectories.parse import is_refusal
    from cxr_max.trajectories.prompts import render_prompt

    root = Path(ensure_synthetic(seed=a.world_seed, n_patients=a.synthetic_patients))
    truth = load_truth(root)
    train = split_table(drift_io.read_trajectories(root / "trajectories"), truth, "train").to_pylist()
    by_image: dict[str, list[str]] = {}
    for rec in train:
        if rec.get("raw") and not is_refusal(rec["raw"]):
            by_image.setdefault(rec["dicom_id"], []).append(rec["raw"])
    frontal = cxr_max.load_dataset("mimic", split="train", views="frontal", images="decode",
                                   data_dir=str(root / "mimic-cxr-jpg"))
    prompt = user_message(render_prompt("diagnose"))
    rows, images = [], []  # images: (first row, rows, index of the closest-to-truth row)
    for rec in frontal.select(range(60)):
        texts = by_image.get(rec["dicom_id"], [])
        if len(texts) < 2:
            continue
        images.append((len(rows), len(texts), closest_to_truth(texts, truth[rec["dicom_id"]].labels)))
        rows += [{"messages": prompt + [{"role": "assistant", "content": t}], "images": [rec["image"]]} for t in texts]
    assert len(images) >= 30

    def margin(student: str) -> float:
        got = answer_losses(str(Path(a.work_dir) / "seed0" / student), rows, batch_size=32)
        lp = np.array([-n / max(c, 1) for n, c in got])  # mean log-likelihood per answer token
        return float(np.mean([lp[start + best] - np.delete(lp[start:start + n], best).mean()
                              for start, n, best in images]))

    learn, positive, negative = margin("learn"), margin("apo-positive"), margin("apo-negative")
    assert positive - learn > 0.01
    assert positive - learn > 3 * (negative - learn)

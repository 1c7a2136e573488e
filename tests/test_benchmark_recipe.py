"""recipes/benchmark.py: the summary and claims logic (fast) and the whole pipeline on a tiny world (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cxr_max.evaluation import runner

ROOT = Path(__file__).resolve().parents[1]


def test_mean_interval():
    m = runner.mean_interval([0.7, 0.8, 0.9])
    assert m["value"] == pytest.approx(0.8) and m["n"] == 3
    assert m["ci_low"] == pytest.approx(0.8 - 4.302653 * 0.1 / 3 ** 0.5, abs=1e-4)
    assert runner.mean_interval([0.5])["ci_low"] == 0.5
    assert runner.mean_interval([])["n"] == 0


def _small_learn_config(tmp_path) -> str:
    """The tiny learn recipe with a pretraining cohort small enough for a test."""
    import yaml

    cfg = yaml.safe_load((ROOT / "recipes/configs/learn_tiny.yaml").read_text())
    cfg.update(tiny_pretrain_patients=16, tiny_pretrain_epochs=1, align_epochs=0.2)
    path = tmp_path / "learn_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_benchmark_pipeline_tiny_world(tmp_path, monkeypatch):
    """Every stage on a tiny world with 1-step training: proves the pipeline, files and resumability."""
    monkeypatch.setenv("CXR_MAX_CACHE", str(tmp_path / "cache"))
    sys.path.insert(0, str(ROOT / "recipes"))
    import benchmark

    a = benchmark.BenchArguments(results_dir=str(tmp_path / "res"), work_dir=str(tmp_path / "work"), seeds=[0],
                                 synthetic_patients=24, learn_max_steps=1, critique_max_steps=1, preference_rows=4,
                                 eval_limit=3, consistency_images=2, consistency_samples=2, max_new_tokens=6, n_boot=20,
                                 batch_size=4, sweep_variants=["learn"], learn_config=_small_learn_config(tmp_path))
    res = benchmark.main(a)
    assert set(res["students"]) == {f"{v}/seed0" for v in benchmark.VARIANTS}
    assert len(res["teachers"]) == 7 and len(res["sweep"]) == 3
    assert set(res["consensus"]) == {"vote", "dawid_skene"} and "majority" in res
    rec = res["students"]["apo-drift/seed0"]
    assert {"metrics", "probe", "shifted", "consistency_prompts", "consistency_samples"} <= set(rec)
    assert set(rec["metrics"]["Edema"]) >= {"balanced_accuracy", "accuracy", "macro_f1"}
    assert all("metrics" in r and "probe" not in r for r in res["sweep"].values())  # robustness reads the answers
    b = res["budget"]["seed0"]
    assert b["apo_steps"] == b["dpo_steps"] == 1 and b["pairs"] >= b["rows"]
    assert b["apo_policy_tokens"] > 0 and b["dpo_policy_tokens"] > 0
    # the compare stage saw the train split only, and the controls are built from its rows
    from cxr_max.synthetic import ensure_synthetic, load_truth

    truth = load_truth(ensure_synthetic(n_patients=24))
    for kind in ("uniform", "drift", "positive", "negative"):
        rows = benchmark.read_jsonl(tmp_path / "work" / f"compare-{kind}" / "preferences.jsonl")
        assert rows and {truth[r["dicom_id"]].split for r in rows} == {"train"}, kind
    pos = benchmark.read_jsonl(tmp_path / "work" / "compare-positive" / "preferences.jsonl")
    assert all(r["consensus_source"].startswith("closest to the truth: ") for r in pos)  # a teacher's own words
    stages = json.loads((tmp_path / "work" / "seed0" / "oracle" / "training_stages.json").read_text())
    assert stages[-1]["name"] == "learn"
    out = tmp_path / "res"
    assert json.loads((out / "results.json").read_text())["n_test_images"] == 3
    md = (out / "results.md").read_text()
    assert "oracle student" in md and "consensus (vote)" in md and "positive control" in md
    learn_cfg = tmp_path / "work" / "seed0" / "learn" / "config.json"
    stamp = learn_cfg.stat().st_mtime_ns
    again = benchmark.main(a)  # resumes: every stage and evaluation is reused
    assert learn_cfg.stat().st_mtime_ns == stamp
    assert json.dumps(again["students"], sort_keys=True) == json.dumps(res["students"], sort_keys=True)  # NaN-safe
    # a retrained student (new weights file) is scored again, its old predictions discarded
    weights = tmp_path / "work" / "seed0" / "dpo" / "model.safetensors"
    old_print = res["students"]["dpo/seed0"]["model_fingerprint"]
    weights.write_bytes(weights.read_bytes())
    assert benchmark.model_fingerprint(weights.parent) != old_print
    third = benchmark.main(a)
    assert third["students"]["dpo/seed0"]["model_fingerprint"] == benchmark.model_fingerprint(weights.parent)
    assert third["students"]["apo-drift/seed0"]["model_fingerprint"] == rec["model_fingerprint"]  # untouched
    assert third["timings_s"]["eval dpo/seed0"] > res["timings_s"]["eval dpo/seed0"]  # it ran again


def test_mean_interval_of_shares_stays_in_bounds():
    wide = runner.mean_interval([0.95, 1.0])  # t(0.975, 1) = 12.7: the raw interval runs far past 1
    assert wide["ci_high"] > 1
    clipped = runner.mean_interval([0.95, 1.0], bounds=(0.0, 1.0))
    assert clipped["ci_high"] == 1.0 and clipped["ci_low"] == pytest.approx(wide["ci_low"]) and clipped["value"] == 0.975
    assert runner.mean_interval([0.0, 0.1], bounds=(0.0, 1.0))["ci_low"] == 0.0

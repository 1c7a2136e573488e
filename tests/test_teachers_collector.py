"""The collector over real HTTP on loopback against the local simulated-teacher server.

These tests use a tiny world of echo teachers (cxr_max.teachers.make_tiny_world) so they test the
collector's mechanics; test_teachers_sim.py runs the seven simulated teachers of the synthetic world.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_max.teachers import (FaultPlan, collect, make_tiny_world, parse_registry, read_records, run_sim_server,
                              scan_keys)
from cxr_max.teachers.guard import ComplianceError
from cxr_max.teachers.store import iter_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("world"), n_images=24, teachers=3)


def registry(url, world, **defaults):
    return parse_registry({"defaults": {"base_url": url, "version": "auto", "timeout_s": 5, "max_concurrency": 8,
                                        **defaults},
                           "teachers": [{"name": n, "model": n} for n in world.teachers]})


def ok_keys_exactly_once(out):
    counts = collections.Counter()
    for _, _, rec in iter_rows(out):
        if rec["status"] == "ok":
            counts[(rec["dicom_id"], rec["teacher"], rec["task"], rec["sample"])] += 1
    assert counts and max(counts.values()) == 1, "duplicate ok rows"
    return set(counts)


def expected_keys(jroot, world, tasks, samples):
    from cxr_max.teachers import list_images

    return {(it.dicom_id, t, task, s) for it in list_images(jroot) for t in world.teachers for task in tasks
            for s in range(samples)}


def test_end_to_end_records(tiny, tmp_path):
    jroot, world = tiny
    with run_sim_server(world) as srv:
        s = collect(registry(srv.base_url, world), jroot, tmp_path, tasks=("diagnose", "explain"), samples=2,
                    progress=False)
    assert s.ok == 24 * 3 * 2 * 2 and s.failed == 0
    recs = read_records(tmp_path)
    assert {(r["dicom_id"], r["teacher"], r["task"], r["sample"]) for r in recs} == \
        expected_keys(jroot, world, ("diagnose", "explain"), 2)
    for r in recs:
        assert r["teacher_version"] == "echo-1" and r["collected_at"] and r["status"] == "ok"
        if r["refusal"]:
            assert r["reasoning"] == "" and "As an AI" in r["answer"]
        else:  # the server saw the right image, task and sample
            assert f"image {r['dicom_id']} for task {r['task']}, sample {r['sample']}" in r["reasoning"]
            assert r["answer"] == "The disease of this patient is cardiomegaly."
        assert r["prompt_tokens"] > 256 and r["completion_tokens"] > 0
    assert 0 < sum(r["refusal"] for r in recs) < len(recs)
    assert s.teachers["echo-0"].usage_reported == 96
    # a rerun finds everything done and sends nothing
    with run_sim_server(world) as srv:
        again = collect(registry(srv.base_url, world), jroot, tmp_path, tasks=("diagnose", "explain"), samples=2,
                        progress=False)
        assert srv.server.stats["requests"] == 0
    assert again.ok == 0 and again.skipped_existing == s.ok


def test_faults_output_still_complete(tiny, tmp_path):
    jroot, world = tiny
    faults = FaultPlan(rate_429=0.15, rate_500=0.15, rate_malformed=0.1, rate_drop=0.1, rate_timeout=0.1,
                       burst_429=30, timeout_delay_s=3.0, max_faults_per_key=3)
    with run_sim_server(world, faults=faults) as srv:
        s = collect(registry(srv.base_url, world, timeout_s=0.5, max_retries=8), jroot, tmp_path, samples=2,
                    backoff_s=0.02, progress=False)
        stats = srv.server.stats
    for kind in ("429", "500", "malformed", "drop", "timeout"):
        assert stats[f"fault_{kind}"] > 0, kind
    assert s.failed == 0 and s.ok == 24 * 3 * 2
    assert sum(t.retries for t in s.teachers.values()) >= sum(stats[k] for k in stats if k.startswith("fault_"))
    assert ok_keys_exactly_once(tmp_path) == expected_keys(jroot, world, ("diagnose",), 2)


def test_final_failures_are_rows_and_retried_on_resume(tiny, tmp_path):
    jroot, world = tiny
    # every attempt of every request gets a 500 and retries are few: all work ends as failure rows
    with run_sim_server(world, faults=FaultPlan(rate_500=1.0, max_faults_per_key=99)) as srv:
        s = collect(registry(srv.base_url, world, max_retries=1), jroot, tmp_path, backoff_s=0.01, progress=False)
    assert s.ok == 0 and s.failed == 72 and s.failures_by_reason == {"http_500": 72}
    state = scan_keys(tmp_path)
    assert len(state.failed) == 72 and not state.ok
    # --no-retry-failed keeps them; the default asks again and supersedes them
    with run_sim_server(world) as srv:
        kept = collect(registry(srv.base_url, world), jroot, tmp_path, retry_failed=False, progress=False)
        assert kept.ok == 0 and kept.skipped_existing == 72
        redone = collect(registry(srv.base_url, world), jroot, tmp_path, progress=False)
    assert redone.ok == 72 and redone.failed == 0
    assert len(read_records(tmp_path)) == 72 and len(read_records(tmp_path, include_failed=True)) == 72


def test_bad_inputs_recorded_and_counted(tmp_path, monkeypatch):
    jroot, world = make_tiny_world(tmp_path / "w", n_images=8, teachers=2)
    from cxr_max.teachers import list_images

    items = list_images(jroot)
    items[0].path.write_bytes(b"not a jpeg")       # an image that fails to load
    monkeypatch.setenv("ECHO_KEY", "sk-very-secret-key-42")
    reg = parse_registry({"defaults": {"version": "auto", "timeout_s": 5}, "teachers": [
        {"name": "echo-0", "model": "echo-0", "base_url": "URL"},
        {"name": "echo-1", "model": "echo-1", "base_url": "URL", "max_tokens": 5},  # truncated completions
        {"name": "wrong-key", "model": "echo-0", "base_url": "URL", "api_key_env": "ECHO_KEY"},
        {"name": "not-served", "model": "gpt-9", "base_url": "URL"},
        {"name": "down", "model": "echo-0", "base_url": "http://127.0.0.1:9/v1"},   # nothing listens on port 9
    ]})
    with run_sim_server(world, api_key="EMPTY") as srv:
        url = srv.base_url
        reg = reg.__class__(tuple(t if t.name == "down" else t.__class__(**{**t.__dict__, "base_url": url})
                                  for t in reg.teachers))
        s = collect(reg, items, tmp_path / "out", progress=False)
    t = s.teachers
    assert t["echo-0"].ok == 7 and t["echo-0"].failures == {"image_unreadable": 1}
    assert t["echo-1"].failures["truncated_completion"] + t["echo-1"].failures["image_unreadable"] == 8
    assert t["echo-1"].refusals + t["echo-1"].failures["truncated_completion"] == 7  # refusals are short
    assert t["wrong-key"].failures == {"http_401": 8}
    assert t["not-served"].failures == {"model_not_served": 8}
    assert t["down"].failures == {"unreachable": 8}
    assert s.failed == sum(s.failures_by_reason.values()) == 1 + 8 - t["echo-1"].refusals + 8 + 8 + 8
    rows = [rec for _, _, rec in iter_rows(tmp_path / "out")]
    bad = [r for r in rows if r["status"] == "failed" and r["error"].startswith("image_unreadable")]
    assert bad and all(items[0].dicom_id in r["error"] and r["teacher"] in r["error"] for r in bad)
    blob = "".join(p.read_text() for p in (tmp_path / "out").rglob("*.jsonl"))
    assert "sk-very-secret-key-42" not in blob
    wrong = [r for r in rows if r["teacher"] == "wrong-key"]
    assert wrong and all("Incorrect API key provided: Bearer ***" in r["error"] for r in wrong)  # echoed, redacted


def test_guard_refuses_non_loopback(tiny, tmp_path):
    jroot, world = tiny
    reg = registry("http://teacher.example.com/v1", world)
    with pytest.raises(ComplianceError, match="PhysioNet"):
        collect(reg, jroot, tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.jsonl"))  # refused before any work


def test_shards_merge_cleanly(tiny, tmp_path):
    jroot, world = tiny
    with run_sim_server(world) as srv:
        reg = registry(srv.base_url, world)
        parts = [collect(reg, jroot, tmp_path, shard=(i, 3), progress=False) for i in range(3)]
    assert sum(p.images for p in parts) == 24 and all(p.images > 0 for p in parts)
    assert sorted(p.name for p in (tmp_path / "echo-0").glob("*.jsonl")) == \
        [f"part-000{i}-of-0003.jsonl" for i in range(3)]
    assert ok_keys_exactly_once(tmp_path) == expected_keys(jroot, world, ("diagnose",), 1)


def test_sigkill_and_resume(tiny, tmp_path):
    jroot, world = tiny
    out = tmp_path / "out"
    with run_sim_server(world, faults=FaultPlan(delay_s=0.03)) as srv:
        reg_file = tmp_path / "reg.yaml"
        reg_file.write_text(
            f"defaults: {{base_url: '{srv.base_url}', version: auto, max_concurrency: 2, timeout_s: 10}}\n"
            "teachers:\n" + "".join(f"  - {{name: {n}, model: {n}}}\n" for n in world.teachers))
        cmd = [sys.executable, str(REPO / "builders" / "distill_teachers.py"), "--registry", str(reg_file),
               "--images", str(jroot), "--out", str(out), "--samples", "2", "--task", "diagnose", "--task", "report",
               "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for kill_after in (20, 120):  # kill twice, at different points
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if sum(p.read_bytes().count(b"\n") for p in out.rglob("*.jsonl")) >= kill_after:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "collector finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        partial = scan_keys(out)
        assert 0 < len(partial.ok) < 24 * 3 * 4
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert ok_keys_exactly_once(out) == expected_keys(jroot, world, ("diagnose", "report"), 2)
    assert all(p.read_bytes().endswith(b"\n") for p in out.rglob("*.jsonl"))

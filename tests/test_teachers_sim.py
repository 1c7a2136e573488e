"""The seven simulated drifting teachers of the synthetic world, over real HTTP, and the two commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_max.synthetic import SIM_TEACHERS, ensure_synthetic, load_truth
from cxr_max.teachers import collect, list_images, load_registry, read_records, run_sim_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    return Path(ensure_synthetic(tmp_path_factory.mktemp("synth") / "w", seed=0, n_patients=10, pixels="tiny",
                                 teachers=False))


def test_sim_registry_matches_simulated_teachers():
    assert load_registry("sim").names == list(SIM_TEACHERS)


def test_seven_simulated_teachers_end_to_end(world_root, tmp_path):
    jroot = world_root / "mimic-cxr-jpg"
    images = list_images(jroot)
    with run_sim_server(root=world_root, seed=0) as srv:
        s = collect("sim", jroot, tmp_path, base_url=srv.base_url, tasks=("diagnose", "explain"), progress=False)
    assert len(s.teachers) == 7 and s.failed == 0 and s.ok == 7 * len(images) * 2
    truth = load_truth(world_root)
    recs = read_records(tmp_path)
    assert len(recs) == s.ok
    refused = 0
    for r in recs:
        teacher = SIM_TEACHERS[r["teacher"]]
        assert r["teacher_version"] == teacher.version
        # the server identified the image by its bytes and the task by the prompt text
        assert r["raw"] == teacher.respond(truth[r["dicom_id"]], task=r["task"], sample=r["sample"], seed=0)
        planted_refusal = teacher.claims(truth[r["dicom_id"]], task=r["task"], sample=r["sample"], seed=0)[2]
        assert r["refusal"] == planted_refusal
        refused += r["refusal"]
        if not r["refusal"]:
            assert r["reasoning"] and r["answer"]
    assert refused > 0  # some teachers refuse, and the refusals are flagged, not dropped
    # the collected folder is a trajectory folder the builder loads, one row per key
    import cxr_max

    ds = cxr_max.load_dataset("trajectories", data_dir=str(jroot), trajectories=str(tmp_path), images="path",
                              cache_dir=str(tmp_path / "hf"))
    assert sum(d.num_rows for d in ds.values()) == s.ok


def test_cli_serve_and_distill(world_root, tmp_path):
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "cxr_max.cli"]  # the real `cxr-max` command
    server = subprocess.Popen([*cli, "serve-teachers", "--root", str(world_root), "--port", "0",
                               "--port-file", str(port_file)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not port_file.exists() and time.time() < deadline and server.poll() is None:
            time.sleep(0.1)
        assert port_file.exists(), "serve-teachers did not start"
        url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        run = subprocess.run([*cli, "distill", "--out", str(tmp_path / "out"), "--images",
                              str(world_root / "mimic-cxr-jpg"), "--limit", "4", "--frontal-only",
                              "--no-progress", "--summary-json", str(tmp_path / "s.json")],
                             env={**env, "CXR_MAX_SIM_URL": url}, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "collection summary" in run.stderr
        assert len(read_records(tmp_path / "out")) == 4 * 7
        refused = subprocess.run([*cli, "distill", "--out", str(tmp_path / "x"), "--images",
                                  str(world_root / "mimic-cxr-jpg"), "--base-url", "http://10.1.2.3:8000/v1",
                                  "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1 and "PhysioNet" in refused.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "CXR_MAX_SIM_URL=http://127.0.0.1:" in server.stdout.read()

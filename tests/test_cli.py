"""The `cxr-max` command: every subcommand is registered; validate and info on real-layout folders."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from cxr_max.cli import _load, app

runner = CliRunner()
_load()


def test_all_subcommands_are_registered():
    names = {c.name for c in app.registered_commands}
    assert {"synth", "validate", "info", "serve-teachers", "distill", "drift-report", "export", "push"} <= names


def test_validate_clean_and_broken_copies(synthetic_root, tmp_path):
    ok = runner.invoke(app, ["validate", str(synthetic_root / "mimic-cxr-jpg"), "--dicom-dir",
                             str(synthetic_root / "mimic-cxr"), "--trajectories", str(synthetic_root / "trajectories")])
    assert ok.exit_code == 0, ok.output
    jpg = tmp_path / "jpg"
    shutil.copytree(synthetic_root / "mimic-cxr-jpg", jpg)
    next(jpg.rglob("*.jpg")).unlink()
    traj = tmp_path / "traj"
    shutil.copytree(synthetic_root / "trajectories", traj)
    f = next(traj.rglob("*.jsonl"))
    f.write_text(f.read_text() + '{"broken json\n')
    bad = runner.invoke(app, ["validate", str(jpg), "--trajectories", str(traj)])
    assert bad.exit_code == 1
    assert "malformed JSON" in bad.output


def test_info_counts_per_split_and_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = runner.invoke(app, ["info", "-c", "trajectories"])
    assert out.exit_code == 0, out.output
    assert "cxr_max / trajectories" in out.output and "sim-glm-4.5v=" in out.output

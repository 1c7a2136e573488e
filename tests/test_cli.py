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


def test_validate_reports_each_real_copy_problem_with_a_count_and_an_example(tmp_path, monkeypatch):
    """A partial copy with a cut JPG, an empty JPG, reports as tar.gz, a JSON-array file and an unknown id."""
    import json
    import tarfile

    from cxr_max.synthetic import ensure_synthetic, load_truth
    from cxr_max.synthetic.build import study_dir

    world = ensure_synthetic(tmp_path / "w", seed=6, n_patients=10, pixels="tiny")
    truth = load_truth(world)
    jpg = tmp_path / "copy" / "mimic-cxr-jpg"
    shutil.copytree(world / "mimic-cxr-jpg", jpg)
    (jpg / "mimic-cxr-2.1.0-test-set-labeled.csv").unlink()  # a MIMIC-CXR-JPG 2.0.0 copy: no radiologist labels
    dcm = tmp_path / "copy" / "mimic-cxr"
    dcm.mkdir()
    with tarfile.open(dcm / "mimic-cxr-reports.tar.gz", "w:gz") as tf:
        tf.add(world / "mimic-cxr" / "files", arcname="mimic-cxr-reports/files",
               filter=lambda m: m if m.isdir() or m.name.endswith(".txt") else None)
    ids = sorted(truth)
    path = lambda d: jpg / study_dir(truth[d].subject_id, truth[d].study_id) / f"{d}.jpg"  # noqa: E731
    unneeded, cut, empty = ids[0], ids[1], ids[2]
    path(unneeded).unlink()
    path(cut).write_bytes(path(cut).read_bytes()[:100])
    path(empty).write_bytes(b"")
    traj = tmp_path / "traj"
    shutil.copytree(world / "trajectories", traj)
    for f in traj.rglob("*.jsonl"):
        f.write_text("".join(ln + "\n" for ln in f.read_text().splitlines() if json.loads(ln)["dicom_id"] != unneeded))
    f = next(traj.rglob("*.jsonl"))
    first = json.loads(f.read_text().splitlines()[0])
    f.write_text(f.read_text() + json.dumps({**first, "dicom_id": "deadbeef-00000000-00000000-00000000-00000000"}) + "\n")
    (traj / "SPD.json").write_text("[]")
    from cxr_max import commands

    monkeypatch.setattr(commands.console, "width", 300)  # one line per issue in the table
    out = runner.invoke(app, ["validate", str(jpg), "--dicom-dir", str(dcm), "--trajectories", str(traj), "--verify-images"],
                        terminal_width=250)
    assert out.exit_code == 1
    text = " ".join(out.output.split())
    for check in ("partial-copy", "truncated-image-files", "empty-image-files", "trajectory-unknown-ids",
                  "trajectory-json-not-read", "report-source", "no-radiologist-test-labels"):
        assert check in text, check
    assert str(path(cut))[-30:] in out.output.replace("\n", "") and "mimic-cxr-reports.tar.gz" in text
    assert "reports read from the tar" in text


def test_synth_with_real_copy_options(tmp_path):
    import json

    from PIL import Image

    out = runner.invoke(app, ["synth", "--out", str(tmp_path / "w"), "--n-patients", "4", "--pixels", "tiny",
                              "--no-teachers", "--image-shape", "40x32", "--jpg-style", "physionet",
                              "--broken", "missing=1,empty=1"])
    assert out.exit_code == 0, out.output
    broken = json.loads((tmp_path / "w" / "broken_files.json").read_text())
    assert len(broken["missing"]) == 1 and len(broken["empty"]) == 1
    jpgs = [p for p in (tmp_path / "w" / "mimic-cxr-jpg").rglob("*.jpg") if p.stat().st_size]
    with Image.open(jpgs[0]) as im:
        assert im.size == (32, 40)  # (columns, rows): non-square
        hist = im.histogram()
    assert sum(1 for h in hist if h) > 20  # equalised: the grey levels are spread
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--broken", "gone=1", "--pixels", "tiny"])
    assert bad.exit_code != 0

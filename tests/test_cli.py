"""The `cxr-max` command: one parser style (TrlParser dataclasses), one error handler, stages registered by name,
builders/ scripts that are the CLI's own commands; validate, info and synth on real-layout folders."""

from __future__ import annotations

import dataclasses
import json
import runpy
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cxr_max.cli import main as cli
from cxr_max.cli.main import BY_NAME, COMMANDS, STAGES, Command, command_parser, main, parse_command

REPO = Path(__file__).resolve().parents[1]
OWN = [c for c in COMMANDS if c not in STAGES]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``cxr-max *argv`` in-process: (exit status, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# -- the parser -----------------------------------------------------------------------------------------------


def test_no_command_prints_help_and_exits_0(capsys):
    code, out, _ = run(capsys)
    assert code == 0
    assert "usage: cxr-max" in out
    for command in COMMANDS:
        assert command.name in out


def test_unknown_command_exits_2(capsys):
    code, _, err = run(capsys, "synthesize")
    assert code == 2 and "invalid choice: 'synthesize'" in err


@pytest.mark.parametrize("name", [c.name for c in OWN])
def test_every_command_has_help_with_both_spellings_of_each_option(capsys, name):
    code, out, _ = run(capsys, name, "--help")
    assert code == 0
    assert out.startswith(f"usage: cxr-max {name}")
    parser, _ = command_parser(BY_NAME[name])
    for dtype in parser.dataclass_types:
        for f in dataclasses.fields(dtype):
            assert f"--{f.name}" in out, f.name
            if "_" in f.name:
                assert f"--{f.name.replace('_', '-')}" in out, f.name


def test_both_spellings_parse_the_same():
    parser, _ = command_parser(BY_NAME["drift-report"])
    (a,) = parse_command(parser, ["--negative_weighting", "drift", "--on_error", "skip", "--data_dir", "x"])
    (b,) = parse_command(parser, ["--negative-weighting", "drift", "--on-error", "skip", "--data-dir", "x"])
    assert a == b and a.negative_weighting == "drift" and a.on_error == "skip" and a.data_dir == Path("x")


def test_repeatable_options_accept_both_forms_and_replace_the_default():
    parser, _ = command_parser(BY_NAME["export"])
    (a,) = parse_command(parser, ["-o", "out", "-c", "trajectories", "-c", "sft"])
    (b,) = parse_command(parser, ["--out", "out", "--dataset_config", "trajectories", "sft"])
    assert a.dataset_config == b.dataset_config == ["trajectories", "sft"]
    (c,) = parse_command(parser, ["-o", "out"])
    assert c.dataset_config == list(cli_data().CONFIG_NAMES)  # the default: every config
    parser, _ = command_parser(BY_NAME["distill"])
    (d,) = parse_command(parser, ["--out", "o", "--task", "diagnose", "--task", "report", "--no-retry-failed"])
    assert d.task == ["diagnose", "report"] and d.retry_failed is False and d.progress is True


def test_positional_arguments_and_their_options(tmp_path):
    parser, _ = command_parser(BY_NAME["push"])
    (a,) = parse_command(parser, ["exp", "me/x", "--dry-run", "-m", "hello", "--dataset", "a/b", "--dataset", "c/d"])
    (b,) = parse_command(parser, ["--folder", "exp", "--repo_id", "me/x", "--dry_run", "--message", "hello",
                                  "--dataset", "a/b", "c/d"])
    assert a == b and a.folder == Path("exp") and a.dry_run is True and a.dataset == ["a/b", "c/d"]
    with pytest.raises(SystemExit) as e:
        parse_command(parser, ["exp"])
    assert e.value.code == 2


def test_config_file_sets_options_and_the_command_line_overrides_it(tmp_path):
    cfg = tmp_path / "drift.yaml"
    cfg.write_text("consensus: dawid_skene\nnegative_weighting: reliability\nout: rep\nwindows: 4\n")
    parser, _ = command_parser(BY_NAME["drift-report"])
    (a,) = parse_command(parser, ["--config", str(cfg), "--windows", "7"])
    assert (a.consensus, a.negative_weighting, a.out, a.windows) == ("dawid_skene", "reliability", Path("rep"), 7)
    cfg.write_text("consensus: votes\n")
    with pytest.raises(SystemExit) as e:  # a typo in the file is the same parse-time error
        parse_command(parser, ["--config", str(cfg)])
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [
    ["drift-report", "--consensus", "votes"],
    ["drift-report", "--negative-weighting", "drifts"],
    ["distill", "--out", "o", "--task", "diagnoze"],
    ["export", "-o", "o", "-c", "mimc"],
    ["synth", "--pixels", "small"],
    ["validate", "--adapter", "swift"],
])
def test_an_invalid_choice_exits_2_before_any_work(capsys, monkeypatch, argv):
    import cxr_max.synthetic

    def work(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(cxr_max.synthetic, "ensure_synthetic", work)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize("argv, message", [
    (["drift-report", "--detector", "kswin", "--delta", "0.1"], "--delta applies to adwin and page_hinkley"),
    (["drift-report", "--consensus", "model"], "--consensus model needs --model"),
    (["distill", "--out", "o", "--shard", "4/4"], "0 <= i < n"),
    (["synth", "--image_shape", "320by256"], "ROWSxCOLUMNS"),
    (["synth", "--unknown", "1"], "unrecognized arguments: --unknown 1"),
])
def test_option_checks_are_usage_errors(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_choice_lists_match_the_library():
    import typing

    from cxr_max.builder import CONFIG_NAMES
    from cxr_max.cli.drift import DriftReportArguments
    from cxr_max.drift.consensus import Method
    from cxr_max.drift.findings import Source
    from cxr_max.drift.preferences import Weighting
    from cxr_max.trajectories.io import ADAPTERS

    assert cli_data().CONFIG_NAMES == tuple(CONFIG_NAMES) and cli_data().ADAPTERS == tuple(ADAPTERS)
    hints = typing.get_type_hints(DriftReportArguments)
    assert typing.get_args(hints["consensus"]) == typing.get_args(Method)
    assert typing.get_args(hints["labels"]) == typing.get_args(Source)
    assert typing.get_args(hints["negative_weighting"]) == typing.get_args(Weighting)
    from cxr_max.cli.teachers import TASKS
    from cxr_max.trajectories.schema import TASKS as SCHEMA_TASKS

    assert set(TASKS) == set(SCHEMA_TASKS) == set(typing.get_args(typing.get_args(hints["task"])[0]))


def cli_data():
    from cxr_max.cli import data

    return data


# -- the error handler ----------------------------------------------------------------------------------------


def test_a_data_error_is_one_line_naming_file_and_row_and_debug_shows_the_traceback(capsys, tmp_path):
    bad = tmp_path / "traj" / "t.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"broken json\n')
    argv = ["drift-report", "--trajectories", str(bad), "--order", "collected", "--out", str(tmp_path / "rep")]
    code, _, err = run(capsys, *argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0] and "row 1" in lines[0]
    assert "Traceback" not in err
    code, _, err = run(capsys, "--debug", *argv)
    assert code == 1 and "Traceback (most recent call last)" in err and "DataError" in err


@pytest.fixture
def fake_command(monkeypatch):
    """A command ``boom`` whose main raises what the test puts in ``box["error"]``."""
    box = {}

    @dataclasses.dataclass
    class Args:
        what: str = "x"

    module = types.ModuleType("cxr_max_fake_boom")
    module.make_parser = lambda sub: sub.add_parser("boom", help="fails", dataclass_types=[Args])

    def boom(args):
        raise box["error"]

    module.main = boom
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(BY_NAME, "boom", Command("boom", module.__name__, "fails"))
    return box


def test_other_errors_are_one_line_with_their_type_and_exit_1(capsys, fake_command):
    from cxr_max.errors import DataError

    fake_command["error"] = DataError("bad label\nsecond line", path="a.jsonl", row=7)
    code, _, err = run(capsys, "boom")
    assert (code, err) == (1, "error: a.jsonl, row 7: bad label; second line\n")
    fake_command["error"] = KeyError("teacher")
    code, _, err = run(capsys, "boom")
    assert (code, err) == (1, "error: KeyError: 'teacher'\n")
    code, _, err = run(capsys, "--debug", "boom")
    assert code == 1 and "Traceback" in err and "KeyError: 'teacher'" in err


# -- the training stages --------------------------------------------------------------------------------------


def test_a_stage_module_gets_its_config_and_flags_parsed_into_dataclasses(capsys, monkeypatch, tmp_path):
    """A stage written the TRL way (make_parser(subparsers=None), main(*dataclasses)) runs as `cxr-max <stage>`."""
    from trl import TrlParser

    @dataclasses.dataclass
    class ScriptArguments:
        dataset_config: str = "sft"
        flag: str = "default"

    @dataclasses.dataclass
    class TrainArguments:
        learning_rate: float = 1e-3
        report_to: str = "none"

    seen = []
    stages = types.ModuleType("cxr_max.stages")
    stages.__path__ = []
    module = types.ModuleType("cxr_max.stages.evaluate")

    def make_parser(subparsers=None):
        types_ = (ScriptArguments, TrainArguments)
        if subparsers is not None:
            return subparsers.add_parser("evaluate", help="Evaluate", dataclass_types=types_)
        return TrlParser(types_)

    module.make_parser = make_parser
    module.main = lambda script, train: seen.append((script, train)) or {"f1": 0.5}  # a stage returns its result
    monkeypatch.setitem(sys.modules, "cxr_max.stages", stages)
    monkeypatch.setitem(sys.modules, "cxr_max.stages.evaluate", module)
    cfg = tmp_path / "x.yaml"
    cfg.write_text("dataset_config: ms_cxr_t\nlearning_rate: 0.5\n")
    code, _, err = run(capsys, "evaluate", "--config", str(cfg), "--flag", "v", "--report-to", "tensorboard")
    assert code == 0, err
    assert seen == [(ScriptArguments("ms_cxr_t", "v"), TrainArguments(0.5, "tensorboard"))]
    code, out, _ = run(capsys, "evaluate", "--help")
    assert code == 0 and out.startswith("usage: cxr-max evaluate") and "--learning-rate" in out


def test_a_stage_missing_from_the_installation_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cxr_max.stages.critique", None)  # import raises ModuleNotFoundError
    code, _, err = run(capsys, "critique", "--help")
    assert code == 1 and err == "error: cxr-max critique: cxr_max.stages.critique is not in this installation\n"


@pytest.mark.skipif(not (REPO / "cxr_max" / "stages").is_dir(),
                    reason="cxr_max/stages/ is not in this tree yet: the six stage commands cannot run")
@pytest.mark.parametrize("stage", [c.name for c in STAGES])
def test_every_stage_module_is_present_with_its_parser(capsys, stage):
    code, out, _ = run(capsys, stage, "--help")
    assert code == 0 and out.startswith(f"usage: cxr-max {stage}")
    _, run_stage = command_parser(BY_NAME[stage])
    assert callable(run_stage)


# -- builders/: the CLI's own commands --------------------------------------------------------------------------


@pytest.mark.parametrize("script, prefix", [
    ("make_synthetic.py", ["synth"]),
    ("distill_teachers.py", ["distill", "--serve_sim"]),
    ("export_hub.py", ["export"]),
])
def test_builders_scripts_call_the_cli_command(monkeypatch, script, prefix):
    calls = []
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(sys, "argv", [script, "--out", "somewhere", "--seed", "3"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "builders" / script), run_name="__main__")
    assert e.value.code == 0
    assert calls == [[*prefix, "--out", "somewhere", "--seed", "3"]]


def test_a_builders_script_has_the_commands_flags():
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, str(REPO / "builders" / "make_synthetic.py"), "--help"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("usage: cxr-max synth") and "--n-patients" in res.stdout
    res = subprocess.run([sys.executable, str(REPO / "builders" / "make_synthetic.py"), "--pixels", "small"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "invalid choice" in res.stderr


# -- the commands on real-layout folders ----------------------------------------------------------------------


def test_distill_serve_sim_collects_from_an_in_process_server(capsys, synthetic_root, tmp_path):
    """`cxr-max distill --serve_sim` (what builders/distill_teachers.py runs): no server to start by hand."""
    from cxr_max.teachers import read_records

    code, out, err = run(capsys, "distill", "--serve_sim", "--sim_root", str(synthetic_root), "--out",
                         str(tmp_path / "out"), "--limit", "2", "--frontal-only", "--no-progress",
                         "--summary-json", str(tmp_path / "s.json"))
    assert code == 0, err
    assert len(read_records(tmp_path / "out")) == 2 * 7
    assert json.loads((tmp_path / "s.json").read_text())["ok"] == 2 * 7


def test_validate_clean_and_broken_copies(capsys, synthetic_root, tmp_path):
    code, out, err = run(capsys, "validate", str(synthetic_root / "mimic-cxr-jpg"), "--dicom-dir",
                         str(synthetic_root / "mimic-cxr"), "--trajectories", str(synthetic_root / "trajectories"))
    assert code == 0, out + err
    jpg = tmp_path / "jpg"
    shutil.copytree(synthetic_root / "mimic-cxr-jpg", jpg)
    next(jpg.rglob("*.jpg")).unlink()
    traj = tmp_path / "traj"
    shutil.copytree(synthetic_root / "trajectories", traj)
    f = next(traj.rglob("*.jsonl"))
    f.write_text(f.read_text() + '{"broken json\n')
    code, out, _ = run(capsys, "validate", str(jpg), "--trajectories", str(traj))
    assert code == 1
    assert "malformed JSON" in out


def test_info_counts_per_split_and_teacher(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    code, out, err = run(capsys, "info", "-c", "trajectories")
    assert code == 0, out + err
    assert "cxr_max / trajectories" in out and "sim-glm-4.5v=" in out


def test_validate_reports_each_real_copy_problem_with_a_count_and_an_example(capsys, tmp_path, monkeypatch):
    """A partial copy with a cut JPG, an empty JPG, reports as tar.gz, a JSON-array file and an unknown id."""
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
    monkeypatch.setenv("COLUMNS", "300")  # one line per issue in rich's table
    code, out, _ = run(capsys, "validate", str(jpg), "--dicom-dir", str(dcm), "--trajectories", str(traj),
                       "--verify-images")
    assert code == 1
    text = " ".join(out.split())
    for check in ("partial-copy", "truncated-image-files", "empty-image-files", "trajectory-unknown-ids",
                  "trajectory-json-not-read", "report-source", "no-radiologist-test-labels"):
        assert check in text, check
    assert str(path(cut))[-30:] in out.replace("\n", "") and "mimic-cxr-reports.tar.gz" in text
    assert "reports read from the tar" in text


def test_synth_with_real_copy_options(capsys, tmp_path):
    from PIL import Image

    code, out, err = run(capsys, "synth", "--out", str(tmp_path / "w"), "--n-patients", "4", "--pixels", "tiny",
                         "--no-teachers", "--image-shape", "40x32", "--jpg-style", "physionet",
                         "--broken", "missing=1,empty=1")
    assert code == 0, out + err
    broken = json.loads((tmp_path / "w" / "broken_files.json").read_text())
    assert len(broken["missing"]) == 1 and len(broken["empty"]) == 1
    jpgs = [p for p in (tmp_path / "w" / "mimic-cxr-jpg").rglob("*.jpg") if p.stat().st_size]
    with Image.open(jpgs[0]) as im:
        assert im.size == (32, 40)  # (columns, rows): non-square
        hist = im.histogram()
    assert sum(1 for h in hist if h) > 20  # equalised: the grey levels are spread
    code, _, err = run(capsys, "synth", "--out", str(tmp_path / "x"), "--broken", "gone=1", "--pixels", "tiny")
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1

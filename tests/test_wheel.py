"""A wheel install works without a checkout: the card templates and the stage configs ship inside it; export,
push dry runs and the learn, compare and critique stages run.

The wheel is built the way ``python -m build`` does it (an sdist first, then the wheel from the unpacked
sdist), offline: setuptools' PEP 517 hooks and ``pip wheel --no-build-isolation --no-index``. It is installed
with ``pip install --no-deps --target`` into a folder that is put first on ``PYTHONPATH``, and the commands run
from a folder outside the checkout, so nothing can come from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "build_hooks.py", "hub_cards", "recipes/configs", "cxr_max")


def _run(cmd, *, cwd, env=None, timeout=300):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _flat(text: str) -> str:
    """The printed text with runs of whitespace as one space (rich wraps table titles at any width)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    # the build runs offline without isolation, so it uses this environment's setuptools (torch requires one)
    needed = next(Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
                  ["requires"] if r.startswith("setuptools"))
    if version("setuptools") not in needed.specifier:
        pytest.skip(f"this environment's setuptools {version('setuptools')} does not meet the build requirement "
                    f"{needed}; the offline build cannot fetch another one")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"  # a copy of the project's sources: the build writes build/ and *.egg-info/ next to them
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():  # recipes/configs alone, without the rest of recipes/ (as the sdist has it)
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    sdist_dir = base / "sdist"
    _run([sys.executable, "-c", "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))",
          sdist_dir], cwd=src)
    (sdist,) = sdist_dir.glob("cxr_max-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(base / "unpacked", filter="data")
    (unpacked,) = (base / "unpacked").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", base / "dist", unpacked], cwd=base)
    (whl,) = (base / "dist").glob("cxr_max-*.whl")
    return whl


def test_the_wheel_carries_the_card_templates_and_every_module(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for template in sorted((ROOT / "hub_cards").glob("*.md")):
            assert z.read(f"cxr_max/hub/templates/{template.name}") == template.read_bytes()
        for config in sorted((ROOT / "recipes" / "configs").glob("*.yaml")):  # the repo's copy is the source
            assert z.read(f"cxr_max/stages/configs/{config.name}") == config.read_bytes()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "cxr_max").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules and modules <= names
    assert not any(n.startswith(("hub_cards/", "recipes/", "build_hooks", "tests/")) for n in names)  # nothing at top level


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("installed")
    target = base / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", target, wheel], cwd=base)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(base / "hf"),
           "COLUMNS": "200", "CXR_MAX_CACHE": str(base / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("HF_TOKEN", None)  # a dry run needs no token
    work = base / "work"  # outside the checkout: no hub_cards/ or cxr_max/ to find by accident
    work.mkdir()
    return {"target": target, "env": env, "work": work, "cli": target / "bin" / "cxr-max"}


@pytest.mark.slow
def test_installed_package_reads_its_own_templates(installed):
    out = _run([sys.executable, "-c", "import cxr_max, cxr_max.hub.cards as c, cxr_max.stages.apo as a; "
                "print(cxr_max.__file__); print(c.template_dir()); print(a.config_dir())"],
               cwd=installed["work"], env=installed["env"])
    package, templates, configs = out.strip().splitlines()[-3:]
    target = installed["target"].resolve()
    assert Path(package).resolve().is_relative_to(target)
    assert Path(templates).resolve() == target / "cxr_max" / "hub" / "templates"
    assert Path(configs).resolve() == target / "cxr_max" / "stages" / "configs"


@pytest.mark.slow
def test_export_and_push_dry_runs_from_the_installed_wheel(installed, tmp_path):
    env, work, cli = installed["env"], installed["work"], installed["cli"]
    export = tmp_path / "export"
    _run([cli, "export", "-c", "studies", "-o", export], cwd=work, env=env)
    manifest = json.loads((export / "cxr_max_export.json").read_text())
    assert manifest["source"] == "synthetic" and list(manifest["configs"]) == ["studies"]
    card = (export / "README.md").read_text()
    assert yaml.safe_load(card.split("---", 2)[1])["configs"][0]["config_name"] == "studies"
    shown = _flat(_run([cli, "push", export, "tester/cxr-demo", "--dry-run"], cwd=work, env=env))
    assert "dataset repo tester/cxr-demo (private)" in shown and "nothing was sent" in shown
    assert "data/studies/" in shown and "pretty_name:" in shown

    ck = tmp_path / "checkpoint"  # a checkpoint folder: its model card comes from the wheel's model_card.md
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model_type": "llava", "_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct"}))
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(ck / "model.safetensors"))
    (ck / "training_stages.json").write_text(json.dumps([{"name": "learn", "description": "SFT",
                                                          "hyperparameters": {"learning_rate": 1e-4}}]))
    (ck / "eval_results.json").write_text(json.dumps({"macro_f1": 0.5}))
    shown = _flat(_run([cli, "push", ck, "tester/student", "--dataset", "tester/cxr-demo", "--dry-run"], cwd=work,
                       env=env))
    assert "model repo tester/student (private)" in shown and "nothing was sent" in shown
    assert "base_model: Qwen/Qwen2.5-VL-3B-Instruct" in shown and "Stage 1: learn" in shown


@pytest.mark.slow
def test_learn_compare_critique_from_the_installed_wheel(installed, tmp_path):
    """The three stages as ``cxr-max`` commands, with the wheel's own tiny configs, on a small embedded world."""
    env, work, cli = installed["env"], installed["work"], installed["cli"]
    configs = installed["target"] / "cxr_max" / "stages" / "configs"
    tiny = ["--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--synthetic_patients", "12",
            "--tiny_image_size", "32", "--tiny_vocab_size", "400"]
    learn = tmp_path / "learn"
    _run([cli, "learn", "--config", configs / "learn_tiny.yaml", "--output_dir", learn, *tiny,
          "--tiny_vision_pretrained", "false"], cwd=work, env=env, timeout=600)
    assert (learn / "config.json").is_file()
    (world,) = (Path(env["CXR_MAX_CACHE"])).glob("synthetic-*-n12-*")  # the world learn built (and read)
    compare = tmp_path / "compare"
    _run([cli, "compare", "--data_dir", world / "mimic-cxr-jpg", "--trajectories", world / "trajectories",
          "--output_dir", compare], cwd=work, env=env, timeout=600)
    preferences = compare / "preferences.jsonl"
    assert preferences.is_file() and preferences.read_text().strip()
    critique = tmp_path / "critique"
    _run([cli, "critique", "--config", configs / "critique_tiny.yaml", "--model_name_or_path", learn,
          "--preferences", preferences, "--output_dir", critique, *tiny[:-4]], cwd=work, env=env, timeout=600)
    assert (critique / "config.json").is_file()

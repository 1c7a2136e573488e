"""Every stage parses the same way: TRL's make_parser(subparsers) pattern, --config YAML, typed choices; and a
pipeline's overrides give the same dataclasses as the same values on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
from trl import TrlParser

from cxr_max.stages import STAGES
from cxr_max.stages.config import from_config

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
MODULES = {name: importlib.import_module(f"cxr_max.stages.{name}") for name in STAGES}


def _cli():
    top = argparse.ArgumentParser(prog="cxr-max")
    sub = top.add_subparsers(dest="command", parser_class=TrlParser)
    return top, {name: module.make_parser(sub) for name, module in MODULES.items()}


def test_every_stage_registers_under_one_trl_parser_like_trl_scripts():
    top, parsers = _cli()
    for name, parser in parsers.items():
        module = MODULES[name]
        assert isinstance(parser, TrlParser) and parser.prog == f"cxr-max {name}"
        assert tuple(parser.dataclass_types) == module.DATACLASS_TYPES
        alone = module.make_parser()  # the recipe's own parser: the same dataclasses
        assert isinstance(alone, TrlParser) and tuple(alone.dataclass_types) == module.DATACLASS_TYPES
    assert top.parse_known_args(["compare", "--consensus", "vote"])[0].command == "compare"


@pytest.mark.parametrize("stage, config", [("learn", "learn_tiny"), ("critique", "critique_tiny"),
                                           ("dpo", "dpo_baseline_tiny")])
def test_subcommand_and_recipe_parse_a_yaml_config_identically(stage, config):
    _, parsers = _cli()
    argv = ["--config", str(CONFIGS / f"{config}.yaml"), "--max_steps", "3", "--dataset_name", "me/rows"]
    via_cli = parsers[stage].parse_args_and_config(argv)
    alone = MODULES[stage].make_parser().parse_args_and_config(argv)
    assert via_cli == alone
    script, args, _ = alone
    assert args.max_steps == 3 and script.dataset_name == "me/rows" and script.dataset_train_split == "train"


def test_compare_parses_like_the_others_and_refuses_a_typo_before_any_work(tmp_path):
    config = tmp_path / "compare.yaml"
    config.write_text("consensus: dawid_skene\noutput_dir: out/c\nreport_to: none\n")
    (args,) = MODULES["compare"].make_parser().parse_args_and_config(["--config", str(config),
                                                                     "--negative_weighting", "drift"])
    assert (args.consensus, args.negative_weighting, args.output_dir) == ("dawid_skene", "drift", "out/c")
    for bad in (["--consensus", "votes"], ["--negative_weighting", "drfit"], ["--detector", "x"]):
        with pytest.raises(SystemExit):
            MODULES["compare"].make_parser().parse_args_and_config(bad)
    with pytest.raises(SystemExit):
        MODULES["apo"].make_parser().parse_args_and_config(["--consensus", "votes"])
    (apo,) = MODULES["apo"].make_parser().parse_args_and_config(["--report_to", "trackio", "wandb"])
    assert apo.report_to == ["trackio", "wandb"]


@pytest.mark.parametrize("stage, config", [("learn", "learn_tiny"), ("critique", "critique_tiny"),
                                           ("dpo", "dpo_baseline_tiny"), ("learn", "learn_qwen25vl_7b")])
def test_overrides_equal_the_same_values_on_the_command_line(stage, config, tmp_path):
    cpu = [] if torch.cuda.is_available() or "tiny" in config else ["--use_cpu", "true"]
    values = {"output_dir": tmp_path / "out", "seed": 3, "max_steps": 5, "num_train_epochs": 2.0,
              "resume_from_checkpoint": "true", "data_dir": str(tmp_path), "report_to": ["none"],
              "learning_rate": 1e-5}
    argv = ["--config", str(CONFIGS / f"{config}.yaml"), *cpu]
    for k, v in values.items():
        argv += [f"--{k}", *map(str, v if isinstance(v, list) else [v])]
    expected = MODULES[stage].make_parser().parse_args_and_config(argv)
    got = from_config(MODULES[stage].DATACLASS_TYPES, CONFIGS / f"{config}.yaml",
                      **values, **({"use_cpu": True} if cpu else {}))
    for a, b in zip(expected, got):
        assert type(a) is type(b)
        diff = {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
                if getattr(a, f.name) != getattr(b, f.name)}
        assert not diff, diff
    assert got[1].output_dir == str(tmp_path / "out")  # a Path becomes the string the flag would give


def test_an_unknown_override_is_an_error_and_none_leaves_the_config_value(tmp_path):
    types = MODULES["learn"].DATACLASS_TYPES
    parsed = from_config(types, CONFIGS / "learn_tiny.yaml")
    with pytest.raises(TypeError, match="no stage option named learning_rte"):
        from_config(types, CONFIGS / "learn_tiny.yaml", learning_rte=1.0)
    same = from_config(types, CONFIGS / "learn_tiny.yaml", num_train_epochs=None, data_dir=None)
    assert same == parsed and same[1].num_train_epochs == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0\nnot_an_option: 2\n")
    with pytest.raises(ValueError, match="not_an_option"):
        from_config(types, bad)

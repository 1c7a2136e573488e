"""--eval_strategy steps: the training stages pass the test split (--dataset_test_split) to the trainer, which
evaluates on it (the flag used to fail: no eval dataset was given)."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from cxr_max.stages import critique, dpo, learn
from test_tiny_vlm import _sft_rows
from test_training_recipes import CONFIGS, LM_TEXTS, _lm_rows, _parse

EVAL = ["--eval_strategy", "steps", "--eval_steps", "1", "--max_steps", "2", "--save_strategy", "steps",
        "--save_steps", "2", "--logging_steps", "1"]


def _eval_losses(folder):
    state = json.loads((folder / "checkpoint-2" / "trainer_state.json").read_text())
    return [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]


@pytest.mark.slow
def test_learn_evaluates_on_the_validation_split_of_an_export(tmp_path):
    from cxr_max.hub.export import export_dataset

    rows = _sft_rows(14)
    splits = DatasetDict({"train": Dataset.from_list(rows[:10]), "validation": Dataset.from_list(rows[10:])})
    export_dataset({"sft": splits}, tmp_path / "export", source="synthetic", progress=False, shard_rows=4)
    out = tmp_path / "learn"
    script, args, model = _parse(learn, CONFIGS / "learn_tiny.yaml", "--dataset_name", str(tmp_path / "export"),
                                 "--output_dir", str(out), *EVAL, "--per_device_train_batch_size", "4",
                                 "--tiny_image_size", "32", "--tiny_vocab_size", "400",
                                 "--tiny_vision_pretrained", "false", "--align_epochs", "0")
    learn.main(script, args, model)
    assert len(_eval_losses(out)) == 2
    stages = json.loads((out / "training_stages.json").read_text())
    assert stages[-1]["data"] == {"source": "rows", "synthetic": None, "location": str(tmp_path / "export")}


@pytest.mark.slow
@pytest.mark.parametrize("module, config", [(critique, "critique_tiny"), (dpo, "dpo_baseline_tiny")])
def test_preference_stages_evaluate_on_the_test_split_given(tmp_path, module, config):
    from cxr_max.training.tiny import tiny_lm

    tiny_lm(LM_TEXTS, tmp_path / "lm", seed=0)
    rows = DatasetDict({"train": Dataset.from_list(_lm_rows(6)), "held": Dataset.from_list(_lm_rows(2))})
    out = tmp_path / "out"
    script, args, model = _parse(module, CONFIGS / f"{config}.yaml", "--model_name_or_path", str(tmp_path / "lm"),
                                 "--output_dir", str(out), *EVAL, "--per_device_train_batch_size", "2",
                                 "--per_device_eval_batch_size", "2", "--dataset_test_split", "held")
    module.main(script, args, model, dataset=rows)
    assert len(_eval_losses(out)) == 2

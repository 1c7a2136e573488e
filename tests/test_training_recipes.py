"""The learn / critique / DPO-baseline stages (cxr_max.stages, run by recipes/*.py): YAML configs, in-process runs,
resume, and 2-process DDP on CPU through the recipe script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from cxr_max.stages import critique, learn
from cxr_max.stages import dpo as dpo_baseline
from test_tiny_vlm import SMALL, _apo_rows, _sft_rows

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = ROOT / "recipes" / "configs"


def _parse(module, config, *extra):
    return module.make_parser().parse_args_and_config(["--config", str(config), *extra])


def test_paper_configs_reproduce_released_hyperparameters():
    # bf16 configs only parse on a machine without a GPU when use_cpu is set (transformers checks bf16 support)
    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    script, args, model = _parse(learn, CONFIGS / "learn_qwen25vl_7b.yaml", *cpu)
    assert args.bf16 and args.gradient_checkpointing
    assert model.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (model.use_peft, model.lora_r, model.lora_alpha, model.lora_target_modules) == (True, 8, 32, "all-linear")
    assert (args.learning_rate, args.warmup_steps, args.max_length) == (1e-4, 0.05, 2304)
    assert (args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps, args.num_train_epochs) == (32, 1)
    assert args.assistant_only_loss
    script, args, model = _parse(critique, CONFIGS / "critique_qwen25vl_7b.yaml", *cpu)
    assert (args.learning_rate, args.max_length, args.beta, args.max_negatives) == (5e-7, 4096, 0.1, 7)
    assert args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps == 32
    script, args, model = _parse(dpo_baseline, CONFIGS / "dpo_baseline_qwen25vl_7b.yaml", *cpu)
    assert (args.learning_rate, args.beta, args.loss_type) == (5e-7, 0.1, ["sigmoid"])
    for name in ("learn_tiny", "critique_tiny", "dpo_baseline_tiny"):
        module = {"learn": learn, "critique": critique, "dpo": dpo_baseline}[name.split("_")[0]]
        _, args, _ = _parse(module, CONFIGS / f"{name}.yaml", "--max_steps", "3")
        assert args.bf16 is False and args.use_cpu and args.max_steps == 3  # flags override the YAML


@pytest.mark.slow
def test_learn_then_critique_then_dpo_in_process_with_resume(tmp_path, capsys, caplog):
    sft = Dataset.from_list(_sft_rows(12))
    sft = sft.add_column("teacher", ["gpt"] * 12)
    refusal = _sft_rows(1)[0]
    refusal["messages"][1]["content"][0]["text"] = "As an AI, I cannot provide medical diagnoses."
    refusal["teacher"] = "claude"
    from datasets import concatenate_datasets
    sft = concatenate_datasets([sft, Dataset.from_list([refusal]).cast(sft.features)])
    out = tmp_path / "learn"
    script, args, model = _parse(learn, CONFIGS / "learn_tiny.yaml", "--output_dir", str(out), "--max_steps", "2",
                                 "--save_steps", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                                 "--tiny_image_size", "32", "--tiny_vocab_size", "400",
                                 "--tiny_vision_pretrained", "false")  # plumbing test: no tower pretraining
    learn.main(script, args, model, dataset=sft)
    printed = capsys.readouterr().out
    assert f"saved the student to {out}" in printed and "refusal" in printed
    assert (out / "config.json").is_file() and (out / "checkpoint-2").is_dir()
    # resume: two more steps from the last checkpoint
    script, args, model = _parse(learn, CONFIGS / "learn_tiny.yaml", "--output_dir", str(out), "--max_steps", "4",
                                 "--save_steps", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                                 "--resume_from_checkpoint", "last", "--tiny_vision_pretrained", "false")
    caplog.clear()
    learn.main(script, args, model, dataset=sft)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]
    # the resumed policy is loaded from the checkpoint itself (Trainer's own reload misses LLaVA's renamed keys)
    from cxr_max.training.recipe_utils import load_policy, policy_source

    assert policy_source(str(out / "student-init"), str(out / "checkpoint-4")) == str(out / "checkpoint-4")
    resumed, init = load_policy(str(out / "checkpoint-4")), load_policy(str(out / "student-init"))
    assert any(not torch.equal(a, b) for a, b in zip(resumed.parameters(), init.parameters()))

    apo = Dataset.from_list(_apo_rows(4))
    script, args, model = _parse(critique, CONFIGS / "critique_tiny.yaml", "--model_name_or_path", str(out),
                                 "--output_dir", str(tmp_path / "critique"), "--max_steps", "2")
    critique.main(script, args, model, dataset=apo)
    assert (tmp_path / "critique" / "ref_logps_train.parquet").is_file()
    assert f"saved the APO student to {tmp_path / 'critique'}" in capsys.readouterr().out
    script, args, model = _parse(dpo_baseline, CONFIGS / "dpo_baseline_tiny.yaml", "--model_name_or_path", str(out),
                                 "--output_dir", str(tmp_path / "dpo"), "--max_steps", "2")
    dpo_baseline.main(script, args, model, dataset=apo)
    assert (tmp_path / "dpo" / "config.json").is_file()


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path):
    script, args, model = _parse(learn, CONFIGS / "learn_tiny.yaml", "--output_dir", str(tmp_path / "x"),
                                 "--resume_from_checkpoint", "last")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        learn.main(script, args, model, dataset=Dataset.from_list(_sft_rows(2)))


@pytest.mark.slow
def test_critique_under_accelerate_two_cpu_processes(tmp_path):
    from cxr_max.training.tiny import tiny_lm

    texts = ["the heart is enlarged", "left pleural effusion", "no acute finding", "what is the disease"]
    tiny_lm(texts, tmp_path / "lm", seed=0)
    rows = [{"prompt": [{"role": "user", "content": f"what is the disease {i}?"}],
             "chosen": [{"role": "assistant", "content": texts[i % 3]}],
             "rejected": [[{"role": "assistant", "content": texts[(i + j) % 3] + f" {j}"}] for j in (1, 2)],
             "rejected_teachers": ["gpt", "grok"], "rejected_weights": [1.0, 2.0]} for i in range(8)]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes/accelerate/cpu_ddp.yaml"), "--num_processes", "2", str(ROOT / "recipes/critique.py"),
           "--config", str(CONFIGS / "critique_tiny.yaml"), "--model_name_or_path", str(tmp_path / "lm"),
           "--dataset_name", str(data), "--output_dir", str(tmp_path / "ddp"), "--max_steps", "2",
           "--logging_steps", "1", "--per_device_train_batch_size", "2", "--save_strategy", "no"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"saved the APO student to {tmp_path / 'ddp'}" in proc.stdout
    assert proc.stdout.count("saved the APO student") == 1  # printed by the main process only
    assert "'win_rate/grok'" in proc.stdout


@pytest.mark.slow
def test_tiny_student_reads_the_pixels(tmp_path):
    """The default learn recipe (alignment pass + vision learning rate) gives a student whose answers depend on
    the image: on unseen images its loss is lower with the true image than with another one or a black one."""
    from cxr_max.evaluation.predict import image_dependence

    rows = _sft_rows(96)  # effusion / cardiomegaly / nothing, visible in the pixels (test_tiny_vlm._image)
    out = tmp_path / "learn"
    script, args, model = _parse(learn, CONFIGS / "learn_tiny.yaml", "--output_dir", str(out), "--num_train_epochs", "4",
                                 "--tiny_image_size", "32", "--tiny_vocab_size", "400", "--save_strategy", "no",
                                 "--logging_steps", "100",
                                 # the from-scratch recipe this test is about (drawn images, not the synthetic
                                 # cohort the default's pretrained tower saw): random tower, 3 alignment epochs
                                 "--tiny_vision_pretrained", "false", "--align_epochs", "3")
    learn.main(script, args, model, dataset=Dataset.from_list(rows[:72]))
    assert (out / "align" / "config.json").is_file()
    stages = [s["name"] for s in json.loads((out / "training_stages.json").read_text())]
    assert stages == ["align", "learn"]
    fresh = rows[72:]  # new noise; the next row always shows another finding (shift=1)
    before = image_dependence(str(out / "student-init"), fresh)
    after = image_dependence(str(out), fresh)
    print(before, after)
    assert after["gap"] > 0.02 and after["black"] > after["true"] + 0.02, after
    assert after["gap"] > 5 * abs(before["gap"]), (before, after)


# ------------------------------------------------------------------ defects found by a review (issue 11)
LM_TEXTS = ["the heart is enlarged", "left pleural effusion", "no acute finding", "what is the disease"]


def _lm_rows(n=6):
    return [{"prompt": [{"role": "user", "content": f"what is the disease {i}?"}],
             "chosen": [{"role": "assistant", "content": LM_TEXTS[i % 3]}],
             "rejected": [[{"role": "assistant", "content": LM_TEXTS[(i + j) % 3] + f" {j}"}] for j in (1, 2)],
             "rejected_teachers": ["gpt", "grok"], "rejected_weights": [1.0, 2.0]} for i in range(n)]


def _critique_args(tmp_path, out, *extra):
    return _parse(critique, CONFIGS / "critique_tiny.yaml", "--model_name_or_path", str(tmp_path / "lm"),
                  "--output_dir", str(out), "--save_steps", "1", "--logging_steps", "1",
                  "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--save_total_limit", "5", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("precompute", ["false", "true"])
def test_resumed_critique_keeps_the_learn_model_as_reference(tmp_path, precompute):
    """Resuming a full fine-tune loads the policy from the checkpoint; DPOTrainer then copied its reference from
    the checkpoint too (and with precompute the cache check failed, its advice making the error silent)."""
    from cxr_max.training import APOTrainer
    from cxr_max.training.recipe_utils import load_policy, run_stage
    from cxr_max.training.tiny import tiny_lm

    tiny_lm(LM_TEXTS, tmp_path / "lm", seed=0)
    out = tmp_path / "critique"
    ds = Dataset.from_list(_lm_rows())
    script, args, model = _critique_args(tmp_path, out, "--max_steps", "2", "--precompute_ref_log_probs", precompute)
    _, first = run_stage(APOTrainer, ds, args, model, model_path=str(tmp_path / "lm"), stage="critique")
    script, args, model = _critique_args(tmp_path, out, "--max_steps", "3", "--precompute_ref_log_probs", precompute,
                                         "--resume_from_checkpoint", "last")
    _, resumed = run_stage(APOTrainer, ds, args, model, model_path=str(tmp_path / "lm"), stage="critique")
    learn_model, ckpt = load_policy(str(tmp_path / "lm")), load_policy(str(out / "checkpoint-2"))
    assert any(not torch.equal(a, b) for a, b in zip(learn_model.parameters(), ckpt.parameters()))
    if precompute == "true":  # the cached reference of the first run is reused as is
        assert resumed.ref_model is None
        assert resumed.train_dataset["ref_logps"] == first.train_dataset["ref_logps"]
    else:
        for a, b in zip(resumed.ref_model.parameters(), learn_model.parameters()):
            assert torch.equal(a, b)
    assert resumed.state.global_step == 3


def test_lora_leaves_the_vision_side_frozen_by_default(tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from cxr_max.training.multimodal import is_vision_parameter
    from cxr_max.training.recipe_utils import lora_config
    from cxr_max.training.tiny import tiny_vlm

    tiny_vlm(["a b c", "left pleural effusion"], tmp_path / "vlm", spec=SMALL)
    _, _, model_args = _parse(critique, CONFIGS / "critique_tiny.yaml", "--use_peft", "true",
                              "--lora_target_modules", "all-linear")

    def adapted(freeze_vit):
        m = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")
        peft = get_peft_model(m, lora_config(model_args, m, freeze_vit=freeze_vit))
        names = [n for n, p in peft.named_parameters() if "lora_" in n]
        return [n for n in names if is_vision_parameter(n)], [n for n in names if not is_vision_parameter(n)]

    vision, text = adapted(True)
    assert vision == [] and text
    vision, text = adapted(False)
    assert vision and text
    script, _, _ = _parse(critique, CONFIGS / "critique_tiny.yaml")
    assert script.freeze_vit is True


@pytest.mark.slow
def test_lora_merge_under_zero3_goes_through_the_saved_adapter(tmp_path, monkeypatch):
    """Under ZeRO-3 merge_and_unload would merge partitioned parameters: the adapter is saved and merged into the
    base checkpoint on the CPU instead. (ZeRO-3 is simulated: DeepSpeed does not run on this CPU machine.)"""
    from peft import LoraConfig

    from cxr_max.training import APOConfig, APOTrainer, recipe_utils
    from cxr_max.training.tiny import tiny_lm

    _, tok = tiny_lm(LM_TEXTS, tmp_path / "lm", seed=0)
    from transformers import AutoModelForCausalLM

    args = APOConfig(str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
                     use_cpu=True, bf16=False, report_to="none", save_strategy="no")
    trainer = APOTrainer(AutoModelForCausalLM.from_pretrained(tmp_path / "lm"), args=args,
                         train_dataset=Dataset.from_list(_lm_rows(2)), processing_class=tok,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
    trainer.train()
    import copy

    merged_in_memory = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    monkeypatch.setattr(recipe_utils, "_is_zero3", lambda t: True)
    out = recipe_utils.save_final(trainer, tok, str(tmp_path / "final"), source=str(tmp_path / "lm"), stage="critique")
    assert (Path(out) / "adapter" / "adapter_config.json").is_file() and (Path(out) / "config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for k, v in merged.items():
        assert torch.allclose(v, merged_in_memory[k], atol=1e-6), k
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").state_dict()
    assert any(not torch.equal(merged[k], base[k]) for k in base)


def test_embedded_default_is_loud_recorded_and_never_called_mimic(tmp_path, capsys):
    from cxr_max.training.recipe_utils import card_data_text, describe_data, require_data_location

    data = describe_data(stage="learn")
    assert data == {"source": "embedded synthetic", "synthetic": True, "location": None}
    assert "EMBEDDED SYNTHETIC" in capsys.readouterr().out
    world = tmp_path / "world"
    (world / "mimic-cxr-jpg").mkdir(parents=True)
    (world / "truth.jsonl").write_text("")
    assert describe_data(data_dir=str(world / "mimic-cxr-jpg"))["source"] == "embedded synthetic"
    (tmp_path / "real").mkdir()
    assert describe_data(data_dir=str(tmp_path / "real"))["source"] == "mimic-cxr-jpg"
    text, limits = card_data_text([{"name": "learn", "data": data}, {"name": "critique", "data": data}])
    assert "not on MIMIC-CXR" in text and limits
    text, _ = card_data_text([{"name": "learn", "data": {"source": "mimic-cxr-jpg"}}])
    assert text.startswith("Trained on MIMIC-CXR-JPG")
    text, _ = card_data_text([{"name": "learn", "data": {"source": "in-process"}}])
    assert "MIMIC" not in text
    with pytest.raises(SystemExit, match="requires a data location"):
        require_data_location(True, "learn", data_dir=None, dataset_name=None)
    require_data_location(True, "learn", data_dir="/data", dataset_name=None)


def test_qwen_configs_require_data_and_bound_images(tmp_path):
    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    for module, name in ((learn, "learn"), (critique, "critique"), (dpo_baseline, "dpo_baseline")):
        script, args, model = _parse(module, CONFIGS / f"{name}_qwen25vl_7b.yaml", *cpu)
        assert script.require_data and script.freeze_vit and script.max_pixels == 1003520
    script, args, model = _parse(learn, CONFIGS / "learn_qwen25vl_7b.yaml", *cpu, "--output_dir", str(tmp_path))
    with pytest.raises(SystemExit, match="requires a data location"):
        learn.main(script, args, model)  # stops before loading anything: no silent synthetic run of the 7B
    script, args, model = _parse(critique, CONFIGS / "critique_qwen25vl_7b.yaml", *cpu, "--output_dir", str(tmp_path))
    with pytest.raises(SystemExit, match="requires a data location"):
        critique.main(script, args, model)


@pytest.mark.slow
def test_stage_record_says_what_the_stage_trained_on(tmp_path):
    from cxr_max.training.tiny import tiny_lm

    tiny_lm(LM_TEXTS, tmp_path / "lm", seed=0)
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _lm_rows(4)))
    script, args, model = _critique_args(tmp_path, tmp_path / "c", "--max_steps", "1", "--dataset_name", str(data),
                                         "--save_strategy", "no")
    critique.main(script, args, model)
    stages = json.loads((tmp_path / "c" / "training_stages.json").read_text())
    assert stages[-1]["data"] == {"source": "rows", "synthetic": None, "location": str(data)}


def test_sft_truncation_never_cuts_image_tokens_and_counts_cut_answers(tmp_path):
    """TRL's vision collator lets the processor truncate the tokenized text: image tokens cut (the forward then
    fails) or answers cut without a word. The guard raises for the first and counts (then stops on) the second."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from cxr_max.errors import DataError
    from cxr_max.training.recipe_utils import guard_sft_truncation
    from cxr_max.training.tiny import tiny_vlm

    tiny_vlm(["a b c", "left pleural effusion", "the disease of this patient is"], tmp_path / "vlm", spec=SMALL)
    processor = AutoProcessor.from_pretrained(tmp_path / "vlm")

    def guarded(max_length, share=0.02):
        args = SFTConfig(str(tmp_path / "o"), use_cpu=True, bf16=False, report_to="none", max_length=max_length,
                         assistant_only_loss=True)
        trainer = SFTTrainer(AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm"), args=args,
                             train_dataset=Dataset.from_list(_sft_rows(60)), processing_class=processor)
        return trainer, guard_sft_truncation(trainer, share)

    trainer, guard = guarded(10)  # the 16 image tokens alone do not fit
    rows = [trainer.train_dataset[i] for i in range(4)]
    with pytest.raises(DataError, match="image tokens"):
        trainer.data_collator(rows)
    full = guarded(None)[0].data_collator([trainer.train_dataset[i] for i in range(4)])
    answer_start = int((full["labels"][0] != -100).float().argmax())
    trainer, guard = guarded(answer_start + 3, share=1.0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[1] == answer_start + 3 and guard.truncated == 4
    assert (batch["labels"][:, answer_start:] != -100).any()  # the start of each answer is still trained on
    trainer, guard = guarded(answer_start + 3)
    with pytest.raises(DataError, match=r"of 60 SFT rows exceeded max_length"):
        for start in range(0, 60, 20):
            trainer.data_collator([trainer.train_dataset[i] for i in range(start, start + 20)])

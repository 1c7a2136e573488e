"""The paper's student architecture through every stage: a tiny Qwen2.5-VL with the real classes
(``Qwen2_5_VLForConditionalGeneration``, ``Qwen2_5_VLProcessor``, ``Qwen2TokenizerFast``, the published chat
template) on a small synthetic world: learn (assistant-only loss) -> compare (vote, model consensus) -> critique
(live reference, precomputed reference, PEFT; resumed after a kill) -> evaluate.

``Qwen2_5_VLProcessor`` needs torchvision, which the main test environment (CPU torch 2.13.0) cannot import:
these tests skip there and ``make test`` runs them in ``.venv-qwen`` (``pytest -m qwen``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from cxr_max.errors import DataError
from cxr_max.training.tiny_qwen import qwen_available

pytestmark = [pytest.mark.qwen, pytest.mark.skipif(
    not qwen_available(), reason="needs torchvision (Qwen2_5_VLProcessor); make test runs it in .venv-qwen")]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"


def _parse(module, config, *extra):
    return module.make_parser().parse_args_and_config(["--config", str(config), *extra])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from cxr_max.synthetic import ensure_synthetic

    return Path(ensure_synthetic(tmp_path_factory.mktemp("qsynth") / "w", seed=0, n_patients=24, pixels="tiny"))


@pytest.fixture(scope="module")
def stages(tmp_path_factory, world):
    """learn -> compare (vote) on the world, once for the module: ``{name: folder}``."""
    from cxr_max.evaluation import runner
    from cxr_max.stages import compare, learn
    from cxr_max.training.tiny_qwen import tiny_qwen25vl

    base = tmp_path_factory.mktemp("qwen")
    texts = [json.loads(line)["raw"] or "" for f in sorted((world / "trajectories").rglob("*.jsonl"))
             for line in f.read_text().splitlines()[:40]]
    tiny_qwen25vl(texts + list(runner.PARAPHRASES), base / "init", seed=0)
    data = ["--data_dir", str(world / "mimic-cxr-jpg"), "--trajectories", str(world / "trajectories")]
    script, args, model = _parse(learn, CONFIGS / "learn_tiny.yaml", "--model_name_or_path", str(base / "init"),
                                 "--output_dir", str(base / "learn"), "--max_steps", "3", "--align_epochs", "0",
                                 "--vision_lr", "1e-4", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                                 "--max_length", "2048", "--save_strategy", "no", *data)
    learn.main(script, args, model)
    compare.main(compare.CompareArguments(trajectories=str(world / "trajectories"),
                                          data_dir=str(world / "mimic-cxr-jpg"), output_dir=str(base / "compare"),
                                          consensus="vote", report=False))
    return {"base": base, "init": base / "init", "learn": base / "learn", "compare": base / "compare"}


def test_factory_is_the_real_qwen25vl_with_bounded_images(tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration
    from trl.chat_template_utils import get_training_chat_template

    from cxr_max.training.tiny_qwen import QWEN25VL_CHAT_TEMPLATE, TinyQwenSpec, tiny_qwen25vl

    tiny_qwen25vl(["the heart is enlarged", "left pleural effusion", "no acute finding"], tmp_path / "q")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "q")
    processor = AutoProcessor.from_pretrained(tmp_path / "q")
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.tokenizer).__name__ in ("Qwen2Tokenizer", "Qwen2TokenizerFast")
    assert processor.chat_template == QWEN25VL_CHAT_TEMPLATE
    assert get_training_chat_template(processor) is not None  # TRL recognises the published template
    assert processor.tokenizer.eos_token == "<|im_end|>" and processor.tokenizer.pad_token == "<|endoftext|>"
    spec = TinyQwenSpec()
    for size in ((3000, 2500), (20, 20)):  # a full-size radiograph and a tiny crop: both inside the bound
        batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>x"], images=[Image.new("RGB", size)],
                          return_tensors="pt")
        n = int((batch["input_ids"] == model.config.image_token_id).sum())
        assert spec.min_pixels // 784 <= n <= spec.max_pixels // 784, (size, n)
        with torch.no_grad():
            assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]


def test_learn_uses_assistant_only_loss_and_records_the_synthetic_world(stages):
    from transformers import AutoProcessor
    from trl.chat_template_utils import get_training_chat_template

    recorded = json.loads((stages["learn"] / "training_stages.json").read_text())
    assert recorded[-1]["name"] == "learn"
    assert recorded[-1]["data"]["source"] == "embedded synthetic"  # a synthetic world, even passed as --data_dir
    processor = AutoProcessor.from_pretrained(stages["learn"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "left pleural effusion"}]}]
    out = processor.tokenizer.apply_chat_template(messages, chat_template=get_training_chat_template(processor),
                                                  return_assistant_tokens_mask=True, return_dict=True)
    ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert processor.tokenizer.decode(ids) == "left pleural effusion<|im_end|>\n"


def test_compare_with_vote_and_with_the_qwen_student_as_model_consensus(stages, world):
    from cxr_max.stages import compare

    rows = [json.loads(line) for line in (stages["compare"] / "preferences.jsonl").read_text().splitlines()]
    assert rows and all(r["consensus_method"] == "vote" for r in rows)
    processor_eos = json.loads((stages["learn"] / "generation_config.json").read_text())["eos_token_id"]
    args = compare.CompareArguments(trajectories=str(world / "trajectories"), data_dir=str(world / "mimic-cxr-jpg"),
                                    output_dir=str(stages["base"] / "compare_model"), consensus="model",
                                    model=str(stages["learn"]), report=False, batch_size=8, max_new_tokens=6)
    out = compare.main(args, forced_eos_token_id=processor_eos[0], progress=False)
    model_rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert model_rows and all(r["consensus_method"] == "model" and r["consensus_source"] == "model"
                              for r in model_rows)


def _critique(stages, out, *extra):
    from cxr_max.stages import critique

    script, args, model = _parse(critique, CONFIGS / "critique_tiny.yaml", "--model_name_or_path", str(stages["learn"]),
                                 "--preferences", str(stages["compare"]), "--data_dir", str(stages["world"]),
                                 "--output_dir", str(out), "--max_train_samples", "4", "--logging_steps", "1",
                                 "--max_length", "2048", "--per_device_train_batch_size", "2", *extra)
    return critique.main(script, args, model)


@pytest.fixture(scope="module")
def critiqued(stages, world):
    stages["world"] = world / "mimic-cxr-jpg"
    return stages


@pytest.mark.parametrize("mode", ["live", "precomputed", "peft"])
def test_critique_with_each_reference(critiqued, mode):
    from safetensors.torch import load_file

    extra = {"live": ["--precompute_ref_log_probs", "false"], "precomputed": [],
             "peft": ["--precompute_ref_log_probs", "false", "--use_peft", "true", "--lora_target_modules",
                      "all-linear", "--lora_r", "4", "--lora_alpha", "8"]}[mode]
    out = Path(_critique(critiqued, critiqued["base"] / f"critique_{mode}", "--max_steps", "2", "--save_strategy",
                         "no", "--max_pixels", str(56 * 56), *extra))
    logs = json.loads((out / "all_results.json").read_text())
    assert "train_loss" in logs and logs["train_loss"] == logs["train_loss"]  # trained, finite
    assert (out / "ref_logps_train.parquet").is_file() == (mode == "precomputed")
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["image_processor"]["size"]["longest_edge"] == 56 * 56  # the bound travels with the model
    if mode == "peft":
        merged = load_file(out / "model.safetensors")
        learned = load_file(critiqued["learn"] / "model.safetensors")
        changed = [k for k in learned if not torch.equal(learned[k], merged[k])]
        assert changed and not any(".visual." in k or k.startswith("model.visual") for k in changed), changed


def test_image_tokens_are_never_cut(critiqued):
    from transformers import AutoProcessor

    from cxr_max.training.collator import DataCollatorForAPO
    from test_tiny_vlm import _apo_rows

    processor = AutoProcessor.from_pretrained(critiqued["learn"])
    rows = _apo_rows(2)
    for i, r in enumerate(rows):
        r["apo_images"] = r.pop("images")
        r["apo_index"] = i
    with pytest.raises(DataError, match=r"row 0.*image tokens"):
        DataCollatorForAPO(processor, max_length=12)(rows)
    batch = DataCollatorForAPO(processor, max_length=2048)(rows)
    assert batch["pixel_values"].shape[0] > 0 and batch["mm_token_type_ids"].shape == batch["input_ids"].shape


def test_critique_resumes_after_a_kill(critiqued):
    """A critique run killed (SIGKILL) after its second checkpoint resumes from the last one: same reference
    cache (the learn model's), steps continue, the final model is saved."""
    out = critiqued["base"] / "critique_killed"
    cmd = [sys.executable, str(ROOT / "recipes" / "critique.py"), "--config", str(CONFIGS / "critique_tiny.yaml"),
           "--model_name_or_path", str(critiqued["learn"]), "--preferences", str(critiqued["compare"]),
           "--data_dir", str(critiqued["world"]), "--output_dir", str(out), "--max_train_samples", "4",
           "--per_device_train_batch_size", "2", "--max_steps", "400", "--save_steps", "1", "--save_total_limit",
           "2", "--logging_steps", "1", "--max_length", "2048"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint-2" / "trainer_state.json").is_file():
        if proc.poll() is not None:
            pytest.fail(f"critique exited early ({proc.returncode}): {proc.stderr.read().decode()[-3000:]}")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "config.json").is_file()
    cache = (out / "ref_logps_train.parquet").read_bytes()
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    _critique(critiqued, out, "--max_steps", str(last + 2), "--save_steps", "1", "--save_total_limit", "2",
              "--resume_from_checkpoint", "last")
    state = json.loads((out / f"checkpoint-{last + 2}" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == last + 2 and steps[-2:] == [last + 1, last + 2]
    assert (out / "ref_logps_train.parquet").read_bytes() == cache  # the learn model's reference, reused
    assert (out / "config.json").is_file()


def test_evaluate_the_qwen_student(critiqued, tmp_path):
    from cxr_max.stages import evaluate as evaluate_recipe

    student = critiqued["base"] / "critique_precomputed"
    if not (student / "config.json").is_file():
        _critique(critiqued, student, "--max_steps", "1", "--save_strategy", "no")
    a = evaluate_recipe.EvaluateArguments(model_name_or_path=str(student), data_dir=str(critiqued["world"]),
                                          output_dir=str(tmp_path / "eval"), limit=4, batch_size=4, max_new_tokens=6,
                                          n_boot=50, plots=False)
    metrics = evaluate_recipe.main(a)
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "label_f1" in metrics


def test_trainer_evaluate_on_qwen_image_rows(critiqued, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cxr_max.training import APOConfig, APOTrainer
    from test_tiny_vlm import _apo_rows

    args = APOConfig(str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                     use_cpu=True, bf16=False, report_to="none", save_strategy="no", max_length=2048)
    trainer = APOTrainer(AutoModelForImageTextToText.from_pretrained(critiqued["learn"]), args=args,
                         train_dataset=Dataset.from_list(_apo_rows(2)),
                         processing_class=AutoProcessor.from_pretrained(critiqued["learn"]))
    metrics = trainer.evaluate(eval_dataset=Dataset.from_list(_apo_rows(4)))
    assert metrics["eval_loss"] == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-3)  # policy == reference

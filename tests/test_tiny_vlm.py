"""The offline tiny VLM factory, APO on image rows, and SFT on the tiny student."""

import json

import pytest
import torch
from datasets import Dataset
from PIL import Image, ImageDraw

from cxr_max.training import APOConfig, APOTrainer
from cxr_max.training.tiny import IMAGE, TinyVLMSpec, tiny_vlm
from cxr_max.training.tiny_qwen import qwen_available

PROMPT = "This is a patient's chest DR image. Please help me determine the patient's disease."
FINDINGS = {"left": "<think> The left costophrenic angle is blunted. </think>The disease of this patient is pleural effusion.",
            "heart": "<think> The cardiac silhouette is enlarged. </think>The disease of this patient is cardiomegaly.",
            "none": "<think> Lungs are clear. </think>The disease of this patient is no finding."}
SMALL = TinyVLMSpec(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1,
                    text_intermediate=64, vocab_size=400)


def _image(kind, seed=0):
    """A synthetic 'chest X-ray' whose finding is visible: a bright blob at the left base, a wide heart, or none."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(64, 64, generator=g) * 40).to(torch.uint8).numpy()
    img = Image.fromarray(noise).convert("RGB")
    d = ImageDraw.Draw(img)
    if kind == "left":
        d.rectangle([0, 40, 28, 63], fill=(250, 250, 250))
    elif kind == "heart":
        d.ellipse([12, 20, 52, 56], fill=(220, 220, 220))
    return img


def _sft_rows(n):
    kinds = list(FINDINGS)
    return [{"images": [_image(kinds[i % 3], i)],
             "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
                          {"role": "assistant", "content": [{"type": "text", "text": FINDINGS[kinds[i % 3]]}]}]}
            for i in range(n)]


def _apo_rows(n, k=3):
    kinds = list(FINDINGS)
    rows = []
    for i in range(n):
        kind = kinds[i % 3]
        wrong = [FINDINGS[x] for x in kinds if x != kind][: k - 1] + ["As an AI, I cannot provide medical diagnoses."]
        rows.append({"images": [_image(kind, i)],
                     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
                     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": FINDINGS[kind]}]}],
                     "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in wrong[:k]],
                     "rejected_teachers": ["gpt", "claude", "grok"][:k], "rejected_weights": [1.0] * k})
    return rows


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vlm")
    tiny_vlm(list(FINDINGS.values()) + [PROMPT], folder, spec=SMALL, seed=0)
    return folder


def test_tiny_vlm_reloads_with_auto_classes_and_masks_assistant(vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    proc = AutoProcessor.from_pretrained(vlm_dir)
    msgs = _sft_rows(1)[0]["messages"]
    text = proc.apply_chat_template(msgs, tokenize=False)
    enc = proc(images=[_image("left")], text=[text], return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_index).sum()) == (32 // 8) ** 2
    out = model(**enc, labels=enc["input_ids"])
    assert torch.isfinite(out.loss)
    masked = proc.tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
    ids = [i for i, m in zip(masked["input_ids"], masked["assistant_masks"]) if m]
    assert FINDINGS["left"] in proc.tokenizer.decode(ids)
    assert PROMPT not in proc.tokenizer.decode(ids)


def test_tokenizer_covers_teacher_language_compactly(vlm_dir):
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(vlm_dir).tokenizer
    text = FINDINGS["heart"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # lossless
    assert len(ids) < len(text.split()) * 2  # words learned as (few) tokens, not bytes
    assert tok.decode(tok("Pneumothorax ±", add_special_tokens=False)["input_ids"]) == "Pneumothorax ±"  # byte fallback
    assert IMAGE in tok.get_vocab()


def test_tiny_vlm_is_deterministic(tmp_path):
    a, _ = tiny_vlm(["a b c"], spec=SMALL, seed=3)
    b, _ = tiny_vlm(["a b c"], spec=SMALL, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_apo_on_image_rows_with_precomputed_reference(vlm_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    args = APOConfig(str(tmp_path / "apo"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3,
                     bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none", logging_steps=1,
                     max_length=256, save_strategy="no", precompute_ref_log_probs=True)
    trainer = APOTrainer(AutoModelForImageTextToText.from_pretrained(vlm_dir), args=args,
                         train_dataset=Dataset.from_list(_apo_rows(4)),
                         processing_class=AutoProcessor.from_pretrained(vlm_dir))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    # shared-prefix APO (the default for LLaVA): one packed sequence and one image per row, 1 + 3 candidates each
    assert trainer.shared_prefix
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 2
    assert batch["candidate_index"].tolist() == [[0, 1, 2, 3]] * 2
    trainer.train()
    logs = trainer.state.log_history
    assert "win_rate/grok" in logs[0] and logs[1]["rewards/margins"] != 0


@pytest.mark.slow
def test_sft_on_tiny_student_drops_the_loss(vlm_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(str(tmp_path / "sft"), per_device_train_batch_size=8, num_train_epochs=10, learning_rate=3e-3,
                     bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none", logging_steps=1,
                     save_strategy="no", assistant_only_loss=True, max_length=None, seed=0, lr_scheduler_type="constant")
    trainer = SFTTrainer(AutoModelForImageTextToText.from_pretrained(vlm_dir), args=args,
                         train_dataset=Dataset.from_list(_sft_rows(48)),
                         processing_class=AutoProcessor.from_pretrained(vlm_dir))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
@pytest.mark.qwen
@pytest.mark.skipif(not qwen_available(),
                    reason="the script builds a real Qwen2_5_VLProcessor (torchvision); make test runs it in .venv-qwen")
def test_gpu_benchmark_script_tiny_smoke_mode(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_apo_qwen25vl.py"
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "",
                                                                            "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert result["tiny"] and set(result["lm_tokens_per_second"]) == {"apo", "apo_shared", "dpo_pairwise"}
    assert all(v > 0 for v in result["lm_tokens_per_second"].values())
    forwarded = result["policy_forward_per_prompt"]
    assert forwarded["apo_shared"]["images"] == 1 < forwarded["apo"]["images"] == 8 < forwarded["dpo_pairwise"]["images"]


@pytest.mark.slow
def test_pretrained_vision_tower_is_cached_documented_and_loads(tmp_path, monkeypatch):
    """The report-supervised tower: built once on another world seed, with a model card, and it drops in."""
    import torch
    from safetensors.torch import load_file

    from cxr_max.training.pretrain import PRETRAIN_WORLD_SEED, PretrainOptions, pretrained_tower_for
    from cxr_max.training.tiny import TinyVLMSpec, tiny_vlm

    monkeypatch.setenv("CXR_MAX_CACHE", str(tmp_path / "cache"))
    assert PRETRAIN_WORLD_SEED != 0  # never the benchmark's world
    spec = TinyVLMSpec()
    options = PretrainOptions(n_patients=16, epochs=1)
    folder = pretrained_tower_for(spec, options)
    card = (folder / "README.md").read_text()
    assert f"world seed {PRETRAIN_WORLD_SEED}" in card and "held out" in card
    facts = json.loads((folder / "pretraining.json").read_text())
    assert facts["n_images"] == facts["n_train_images"] + facts["n_held_out_images"] > 0
    stamp = (folder / "vision.safetensors").stat().st_mtime_ns
    assert pretrained_tower_for(spec, options) == folder  # cached: not rebuilt
    assert (folder / "vision.safetensors").stat().st_mtime_ns == stamp
    state = load_file(str(folder / "vision.safetensors"))
    model, _ = tiny_vlm(["a b c d"] * 4, spec=spec, vision_init=folder)
    key = next(k for k in state if k.endswith("patch_embedding.weight"))
    assert torch.equal(model.model.vision_tower.state_dict()[key], state[key])
    random_model, _ = tiny_vlm(["a b c d"] * 4, spec=spec)
    assert not torch.equal(random_model.model.vision_tower.state_dict()[key], state[key])

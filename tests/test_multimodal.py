"""The vision learning rate and the finding-caption alignment pass (cxr_max.training.multimodal)."""

import pytest
import torch
from datasets import Dataset

from cxr_max.training.multimodal import (
    VisionLROptimizer,
    finding_caption,
    finding_captions,
    is_projector_parameter,
    is_vision_parameter,
    vision_optimizer,
)
from cxr_max.training.tiny import tiny_lm, tiny_vlm
from test_tiny_vlm import FINDINGS, PROMPT, SMALL, _sft_rows


@pytest.mark.parametrize("name, vision", [
    ("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", True),  # LLaVA
    ("model.multi_modal_projector.linear_1.weight", True),
    ("model.visual.blocks.0.attn.qkv.weight", True),  # Qwen2.5-VL (its merger sits under visual)
    ("base_model.model.model.vision_tower.vision_model.post_layernorm.bias", True),  # PEFT-wrapped
    ("model.language_model.layers.0.self_attn.q_proj.weight", False),
    ("lm_head.weight", False),
    ("model.language_model.visualize_gate.weight", False),  # a fragment inside a name is not a module
])
def test_vision_parameters_by_module_name(name, vision):
    assert is_vision_parameter(name) is vision


def test_vision_optimizer_gives_the_vision_side_its_own_rate(tmp_path):
    from trl import SFTConfig

    model, _ = tiny_vlm(list(FINDINGS.values()) + [PROMPT], spec=SMALL)
    args = SFTConfig(str(tmp_path), learning_rate=3e-3, weight_decay=0.01, use_cpu=True, report_to="none")
    cls, kwargs = vision_optimizer(args, vision_lr=3e-4)
    opt = cls()(model, **kwargs)
    assert isinstance(opt, torch.optim.AdamW)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every trainable parameter, once
    assert lr_of[id(named["model.vision_tower.embeddings.patch_embedding.weight"])] == (3e-4, 0.01)
    assert lr_of[id(named["model.multi_modal_projector.linear_2.bias"])] == (3e-4, 0.0)  # no decay on biases
    assert lr_of[id(named["lm_head.weight"])] == (3e-3, 0.01)
    assert lr_of[id(named["model.language_model.norm.weight"])] == (3e-3, 0.0)


@pytest.mark.parametrize("name, projector", [
    ("model.multi_modal_projector.linear_1.weight", True),  # LLaVA
    ("model.visual.merger.mlp.0.weight", True),  # Qwen2.5-VL's merger sits under visual
    ("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", False),
    ("model.visual.blocks.0.attn.qkv.weight", False),
    ("lm_head.weight", False),
])
def test_projector_parameters_by_module_name(name, projector):
    assert is_projector_parameter(name) is projector


def test_vision_lr_zero_freezes_the_tower_and_the_projector_keeps_its_own_rate(tmp_path):
    from trl import SFTConfig

    model, _ = tiny_vlm(list(FINDINGS.values()) + [PROMPT], spec=SMALL)
    args = SFTConfig(str(tmp_path), learning_rate=3e-3, weight_decay=0.0, use_cpu=True, report_to="none")
    cls, kwargs = vision_optimizer(args, vision_lr=0.0, projector_lr=1e-3)
    opt = cls()(model, **kwargs)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    tower = [p for n, p in named.items() if "vision_tower" in n]
    assert tower and not any(p.requires_grad or id(p) in lr_of for p in tower)  # frozen, not in the optimizer
    assert lr_of[id(named["model.multi_modal_projector.linear_1.weight"])] == 1e-3
    assert lr_of[id(named["lm_head.weight"])] == 3e-3
    # projector_lr=None: the projector follows vision_lr (the earlier behaviour), so both freeze at 0
    model2, _ = tiny_vlm(list(FINDINGS.values()) + [PROMPT], spec=SMALL)
    cls()(model2, **vision_optimizer(args, vision_lr=0.0)[1])
    assert not any(p.requires_grad for n, p in model2.named_parameters() if is_vision_parameter(n))


def test_vision_lr_on_a_model_without_vision_is_an_error(tmp_path):
    model, _ = tiny_lm(["a few words of text"], hidden=16, layers=1, heads=2, vocab_size=300)
    with pytest.raises(ValueError, match="no trainable vision parameters"):
        VisionLROptimizer()(model, learning_rate=1e-3, vision_lr=1e-4)


def test_vision_lr_reaches_the_trainer(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    tiny_vlm(list(FINDINGS.values()) + [PROMPT], tmp_path / "m", spec=SMALL)
    args = SFTConfig(str(tmp_path / "o"), learning_rate=2e-3, max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", save_strategy="no", lr_scheduler_type="constant", gradient_checkpointing=False)
    trainer = SFTTrainer(AutoModelForImageTextToText.from_pretrained(tmp_path / "m"), args=args,
                         train_dataset=Dataset.from_list(_sft_rows(2)),
                         processing_class=AutoProcessor.from_pretrained(tmp_path / "m"),
                         optimizer_cls_and_kwargs=vision_optimizer(args, 1e-4))
    trainer.train()
    assert sorted({g["lr"] for g in trainer.optimizer.param_groups}) == [1e-4, 2e-3]


def test_finding_captions_come_from_the_teachers_text():
    assert finding_caption({"Cardiomegaly": 1.0, "Edema": 0.0, "Pleural Effusion": 1.0},
                           ["Pleural Effusion", "Edema", "Cardiomegaly"]) == "Findings: pleural effusion, cardiomegaly."
    assert finding_caption({"Edema": -1.0}, ["Edema"]) == "No acute findings."  # uncertain is not present
    rows = Dataset.from_list(_sft_rows(3))  # effusion, cardiomegaly, nothing
    captions = finding_captions(rows)
    got = [m[-1]["content"][0]["text"] for m in captions["messages"]]
    assert got == ["Findings: pleural effusion.", "Findings: cardiomegaly.", "No acute findings."]
    assert [m[0] for m in captions["messages"]] == [m[0] for m in rows["messages"]]  # user turn kept
    assert len(captions["images"]) == 3 and captions.num_rows == rows.num_rows


def test_one_row_per_image_skips_repeats_and_refusals():
    from cxr_max.evaluation.predict import one_row_per_image

    rows = _sft_rows(4)
    for r, d in zip(rows, ["a", "a", "b", "c"]):
        r["dicom_id"] = d
    rows[2]["messages"][1]["content"][0]["text"] = "As an AI, I cannot provide medical diagnoses."
    picked = one_row_per_image(Dataset.from_list(rows))
    assert [r["dicom_id"] for r in picked] == ["a", "c"]
    assert [r["dicom_id"] for r in one_row_per_image(Dataset.from_list(rows), limit=1)] == ["a"]

"""Shared-prefix APO: layout, mask and sums by hand; and the packed forward equals the per-candidate path
(per-candidate log-probs, the loss and every gradient, fp32, within 1e-4) for a tiny Llama, the tiny LLaVA and
the tiny Qwen2.5-VL (``-m qwen``, in ``.venv-qwen``)."""


import pytest
import torch
from datasets import Dataset


from cxr_max.training import APOConfig, APOTrainer, DataCollatorForAPO
from cxr_max.training.shared_prefix import (
    block_attention_mask,
    candidate_sums,
    pack_row,
    shared_prefix_support,
)
from cxr_max.training.tiny import tiny_lm
from cxr_max.training.tiny_qwen import qwen_available

TOL = 1e-4


# ------------------------------------------------------------------------------------------- pure functions
def test_pack_row_layout_by_hand():
    out = pack_row([10, 11, 12], [[20, 21], [30]], prefix_types=[0, 1, 0])
    assert out["input_ids"] == [10, 11, 12, 20, 21, 12, 30]
    assert out["segment_ids"] == [0, 0, 1, 1, 1, 2, 2]
    # each block continues from the prompt: the copied last prompt token keeps its position 2
    assert out["position_ids"] == [0, 1, 2, 3, 4, 2, 3]
    # the copy of the last prompt token predicts the first completion token; a block's last token nothing
    assert out["shift_labels"] == [-100, -100, 20, 21, -100, 30, -100]
    assert out["label_segment"] == [-1, -1, 0, 0, -1, 1, -1]
    assert out["types"] == [0, 1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="candidate 1"):
        pack_row([1, 2], [[3], []])


def test_block_mask_by_hand():
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    m = block_attention_mask(seg)[0, 0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # candidate 2 sees the prompt and itself, never candidate 1
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself (no empty softmax row)
    ]
    additive = block_attention_mask(seg, boolean=False)[0, 0]
    assert additive[4, 2] == torch.finfo(torch.float32).min and additive[4, 1] == 0


def test_candidate_sums_by_hand():
    per_token = torch.tensor([[0.0, -1.0, -2.0, 0.0, -4.0, 0.0]])
    label_segment = torch.tensor([[-1, 0, 0, -1, 2, -1]])
    sums, counts = candidate_sums(per_token, label_segment, 4)
    assert sums.tolist() == [[-3.0, 0.0, -4.0, 0.0]] and counts.tolist() == [[2, 0, 1, 0]]


def test_repeat_rows_by_hand():
    from cxr_max.training.collator import _repeat_rows

    # two rows with 2 and 1 images; row 0 has 2 candidates, row 1 has 1
    row_of_seq = torch.tensor([0, 0, 1])
    per_image = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "pixel_values": torch.tensor([[10.], [11.], [12.]])}
    out = _repeat_rows(per_image, [2, 1], row_of_seq)
    assert out["input_ids"].tolist() == [[1, 2], [1, 2], [3, 4]]
    assert out["pixel_values"].flatten().tolist() == [10, 11, 10, 11, 12]
    # Qwen-style: pixel_values per patch (t * h * w rows per image), image_grid_thw per image
    per_patch = {"input_ids": torch.tensor([[1], [2]]), "image_grid_thw": torch.tensor([[1, 1, 2], [1, 1, 1]]),
                 "pixel_values": torch.tensor([[0.], [1.], [2.]])}
    out = _repeat_rows(per_patch, [1, 1], torch.tensor([0, 1, 1]))
    assert out["pixel_values"].flatten().tolist() == [0, 1, 2, 2]
    assert out["image_grid_thw"].tolist() == [[1, 1, 2], [1, 1, 1], [1, 1, 1]]
    # a tensor in no known layout: the caller processes every sequence instead
    assert _repeat_rows({"input_ids": torch.zeros(2, 1), "odd": torch.zeros(5)}, [1, 1], row_of_seq) is None


def test_support_matrix():
    from transformers import GPT2Config, LlamaConfig

    assert shared_prefix_support(LlamaConfig(), "sdpa") is None
    assert shared_prefix_support(LlamaConfig(), "eager") is None
    assert "flash_attention_2" in shared_prefix_support(LlamaConfig(), "flash_attention_2")
    assert "gpt2" in shared_prefix_support(GPT2Config(), "sdpa")


# ------------------------------------------------------------------------------------------ exactness helpers
def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_paths(trainer, examples, per_candidate_collator, shared_collator):
    """Per-candidate log-probs (policy and live reference), loss and gradients of both layouts, same trainer."""
    model = trainer.model
    results = {}
    for name, collator in (("old", per_candidate_collator), ("shared", shared_collator)):
        batch = collator([dict(e) for e in examples])
        model.zero_grad(set_to_none=True)
        logps, counts = trainer._candidate_logps(model, batch)
        ref = trainer._reference_logps(batch)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results[name] = (logps.detach(), counts, ref.detach(), loss.detach(), _grads(model), batch)
    old, new = results["old"], results["shared"]
    assert "segment_ids" in new[5] and "segment_ids" not in old[5]
    torch.testing.assert_close(new[0], old[0], atol=TOL, rtol=0)
    assert torch.equal(new[1], old[1])
    torch.testing.assert_close(new[2], old[2], atol=TOL, rtol=0)
    torch.testing.assert_close(new[3], old[3], atol=TOL, rtol=0)
    assert set(new[4]) == set(old[4]) and len(old[4]) > 0
    for n in old[4]:
        torch.testing.assert_close(new[4][n], old[4][n], atol=TOL, rtol=0, msg=lambda m, n=n: f"{n}: {m}")
    # the loss is not trivially zero and the gradients are not all zero (the comparison can fail)
    assert old[3].abs() > 1e-3 and any(g.abs().max() > 0 for g in old[4].values())
    return old, new


def _perturb(model, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-3,
                bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none", logging_steps=1,
                max_length=512, save_strategy="no", seed=0)
    base.update(kw)
    return APOConfig(**base)


# ------------------------------------------------------------------------------------------------ tiny Llama
TEXTS = ["the heart is enlarged", "left pleural effusion", "right pleural effusion", "no acute finding",
         "what is the disease of this patient"]


def _text_rows(n=3, k=3):
    rows = []
    for i in range(n):
        kk = k if i != 1 else 1  # a row with fewer negatives: padding candidates take no part
        rows.append({"prompt": [{"role": "user", "content": TEXTS[4] + f" {i}?"}],
                     "chosen": [{"role": "assistant", "content": TEXTS[i % 4]}],
                     "rejected": [[{"role": "assistant", "content": TEXTS[(i + j + 1) % 4] + f" {j}"}]
                                  for j in range(kk)],
                     "rejected_teachers": ["gpt", "claude", "gemini"][:kk],
                     "rejected_weights": [1.0 + j for j in range(kk)]})
    return rows


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    _, tok = tiny_lm(TEXTS, folder, seed=0)
    return folder, tok


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_llama_shared_prefix_equals_per_candidate(lm, tmp_path, attn):
    from transformers import AutoModelForCausalLM

    folder, tok = lm
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn)
    ref = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn)
    rows = Dataset.from_list(_text_rows())
    trainer = APOTrainer(model, ref_model=ref, args=_args(tmp_path), train_dataset=rows, processing_class=tok)
    assert trainer.shared_prefix and trainer.data_collator.shared_prefix  # the default where supported
    _perturb(trainer.model)
    examples = [trainer.train_dataset[i] for i in range(3)]
    _compare_paths(trainer, examples, DataCollatorForAPO(tok, max_length=512),
                   DataCollatorForAPO(tok, max_length=512, shared_prefix=True))


def test_llama_lora_with_gradient_checkpointing_equals_per_candidate(lm, tmp_path):
    """PEFT policy (reference = adapter disabled) and gradient checkpointing: the same numbers on both paths."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    folder, tok = lm
    trainer = APOTrainer(AutoModelForCausalLM.from_pretrained(folder),
                         args=_args(tmp_path, gradient_checkpointing=True),
                         train_dataset=Dataset.from_list(_text_rows()), processing_class=tok,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    assert trainer.shared_prefix and trainer.ref_model is None
    # Trainer turns checkpointing on when training starts; here it is turned on as it would be
    trainer.model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert trainer.model.base_model.model.is_gradient_checkpointing
    with torch.no_grad():  # a non-zero adapter, so policy and reference differ
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    trainer.model.train()
    examples = [trainer.train_dataset[i] for i in range(3)]
    old, new = _compare_paths(trainer, examples, DataCollatorForAPO(tok, max_length=512),
                              DataCollatorForAPO(tok, max_length=512, shared_prefix=True))
    assert all("lora_" in n for n in new[4])
    assert (old[0] - old[2]).abs().max() > 1e-3  # policy != reference


def test_shared_prefix_forwards_fewer_tokens_and_cuts_like_the_old_path(lm):
    _, tok = lm
    rows = _text_rows()
    old = DataCollatorForAPO(tok)(rows)
    new = DataCollatorForAPO(tok, shared_prefix=True)(rows)
    assert new["input_ids"].shape[0] == 3 and old["input_ids"].shape[0] == 4 + 2 + 4
    assert int((new["segment_ids"] >= 0).sum()) < int(old["attention_mask"].sum())
    # the candidate map says which candidates exist (its values index the row's candidates, not sequences)
    assert new["candidate_index"].tolist() == [[0, 1, 2, 3], [0, 1, -1, -1], [0, 1, 2, 3]]
    assert torch.equal(new["negative_mask"], old["negative_mask"])
    # truncation: the same sequences are cut and counted, and each keeps max_length - prompt tokens
    lengths = old["attention_mask"].sum(1)
    max_len = int(lengths.float().median())
    cut_old = DataCollatorForAPO(tok, max_length=max_len, max_truncated_share=1.0)
    cut_new = DataCollatorForAPO(tok, max_length=max_len, max_truncated_share=1.0, shared_prefix=True)
    b_old, b_new = cut_old(rows), cut_new(rows)
    assert cut_new.truncated == cut_old.truncated > 0 and cut_new.sequences == cut_old.sequences
    idx = b_old["candidate_index"]
    per_seq = b_old["completion_mask"][:, 1:].sum(1)
    expected = torch.where(idx >= 0, per_seq[idx.clamp(min=0)], torch.zeros_like(idx))
    _, counts = candidate_sums(torch.zeros(b_new["label_segment"].shape), b_new["label_segment"], idx.shape[1])
    assert torch.equal(counts, expected)


def test_unsupported_model_runs_the_old_path_with_one_message(lm, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    folder, tok = lm
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    model.config.model_type = "gpt2"  # not verified: the per-candidate path runs, with a message saying why
    with caplog.at_level("WARNING", logger="cxr_max"):
        trainer = APOTrainer(model, args=_args(tmp_path), train_dataset=Dataset.from_list(_text_rows()),
                             processing_class=tok)
    assert not trainer.shared_prefix
    assert caplog.text.count("shared-prefix forward off") == 1 and "'gpt2'" in caplog.text
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert "segment_ids" not in batch
    with pytest.raises(ValueError, match="shared_prefix=True"):
        APOTrainer(model, args=_args(tmp_path, shared_prefix=True), train_dataset=Dataset.from_list(_text_rows()),
                   processing_class=tok)
    off = APOTrainer(AutoModelForCausalLM.from_pretrained(folder), args=_args(tmp_path, shared_prefix=False),
                     train_dataset=Dataset.from_list(_text_rows()), processing_class=tok)
    assert not off.shared_prefix and not off.data_collator.shared_prefix


def test_precomputed_reference_is_the_same_with_the_shared_prefix(lm, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, tok = lm
    ds = Dataset.from_list(_text_rows(4))
    values = {}
    for flag in (False, True):
        args = _args(tmp_path / str(flag), precompute_ref_log_probs=True, shared_prefix=flag)
        trainer = APOTrainer(AutoModelForCausalLM.from_pretrained(folder), args=args, train_dataset=ds,
                             processing_class=tok)
        values[flag] = trainer.train_dataset["ref_logps"]
    assert [len(r) for r in values[True]] == [len(r) for r in values[False]] == [4, 2, 4, 4]
    for a, b in zip(values[True], values[False]):
        assert a == pytest.approx(b, abs=TOL)


def test_prompt_ending_with_an_image_token_falls_back_to_one_sequence_per_candidate(lm, caplog):
    _, tok = lm
    collator = DataCollatorForAPO(tok, shared_prefix=True)
    rows = [{"prompt": "what is this <image>", "chosen": "effusion", "rejected": ["edema"], "apo_index": 7}]
    assert "segment_ids" in collator([dict(rows[0], prompt="what is this ")])
    tok.image_token_id = tok.convert_tokens_to_ids("<image>")
    try:
        with caplog.at_level("WARNING", logger="cxr_max"):
            batch = collator(rows)
    finally:
        del tok.image_token_id
    # every candidate block would start with a copy of the image token: this batch takes the per-candidate layout
    assert "segment_ids" not in batch and batch["input_ids"].shape[0] == 2 and collator.unshared_batches == 1
    assert "rows [7]" in caplog.text and "ends with an image token" in caplog.text


# ------------------------------------------------------------------------------------------------ tiny LLaVA
@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    from test_tiny_vlm import FINDINGS, PROMPT, SMALL

    from cxr_max.training.tiny import tiny_vlm

    folder = tmp_path_factory.mktemp("vlm")
    tiny_vlm(list(FINDINGS.values()) + [PROMPT], folder, spec=SMALL, seed=0)
    return folder


def test_llava_shared_prefix_equals_per_candidate(vlm, tmp_path):
    from test_tiny_vlm import _apo_rows
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(vlm)
    model = AutoModelForImageTextToText.from_pretrained(vlm)
    ref = AutoModelForImageTextToText.from_pretrained(vlm)
    rows = _apo_rows(3)
    rows[1]["rejected"] = rows[1]["rejected"][:2]
    rows[1]["rejected_teachers"] = rows[1]["rejected_teachers"][:2]
    rows[1]["rejected_weights"] = [1.0, 2.0]
    trainer = APOTrainer(model, ref_model=ref, args=_args(tmp_path), train_dataset=Dataset.from_list(rows),
                         processing_class=processor)
    assert trainer.shared_prefix
    _perturb(trainer.model, scale=0.05)
    examples = [trainer.train_dataset[i] for i in range(3)]
    old, new = _compare_paths(trainer, examples, DataCollatorForAPO(processor, max_length=512),
                              DataCollatorForAPO(processor, max_length=512, shared_prefix=True))
    # the image is encoded once per row, not once per candidate
    assert new[5]["pixel_values"].shape[0] == 3 and old[5]["pixel_values"].shape[0] == 4 + 3 + 4
    # gradients reach the vision tower through the shared image
    assert any(n.startswith("model.vision_tower") or "vision_tower" in n for n in new[4])


# ------------------------------------------------------------------------------------------- tiny Qwen2.5-VL
qwen = pytest.mark.qwen
needs_qwen = pytest.mark.skipif(not qwen_available(), reason="needs torchvision (Qwen2_5_VLProcessor); run in .venv-qwen")


@pytest.fixture(scope="module")
def qwen_student(tmp_path_factory):
    from test_tiny_vlm import FINDINGS, PROMPT

    from cxr_max.training.tiny_qwen import tiny_qwen25vl

    folder = tmp_path_factory.mktemp("qwen")
    tiny_qwen25vl(list(FINDINGS.values()) + [PROMPT], folder, seed=0)
    return folder


def _qwen_rows():
    from test_tiny_vlm import _apo_rows, _image

    rows = _apo_rows(3)
    # images of different sizes: different grids, so M-RoPE positions and prompt lengths differ between rows
    rows[1]["images"] = [_image("heart", 1).resize((112, 84))]
    rows[2]["images"] = [_image("none", 2).resize((56, 112))]
    rows[1]["rejected"] = rows[1]["rejected"][:2]
    rows[1]["rejected_teachers"] = rows[1]["rejected_teachers"][:2]
    rows[1]["rejected_weights"] = [1.0, 3.0]
    return rows


@qwen
@needs_qwen
def test_qwen_collator_processes_each_image_once_and_matches_per_sequence_processing(qwen_student, monkeypatch):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen_student)
    rows = [dict(r, apo_images=r.pop("images")) for r in _qwen_rows()]
    calls = []
    original = type(processor.image_processor).__call__

    def counting(self, images=None, *a, **kw):
        calls.append(len(images) if isinstance(images, list) else 1)
        return original(self, images, *a, **kw)

    monkeypatch.setattr(type(processor.image_processor), "__call__", counting)
    fast = DataCollatorForAPO(processor)(rows)
    assert sum(calls) == 3  # one image per row, processed once (not 1 + K times)
    # the reference: every sequence processed on its own, as before
    collator = DataCollatorForAPO(processor)
    monkeypatch.setattr("cxr_max.training.collator._repeat_rows", lambda *a: None)
    slow = collator(rows)
    assert set(fast) == set(slow)
    for key, value in fast.items():
        if torch.is_tensor(value):
            assert torch.equal(value, slow[key]), key


@qwen
@needs_qwen
def test_qwen_shared_prefix_equals_per_candidate(qwen_student, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen_student)
    model = AutoModelForImageTextToText.from_pretrained(qwen_student)
    ref = AutoModelForImageTextToText.from_pretrained(qwen_student)
    assert model.config.model_type == "qwen2_5_vl"
    trainer = APOTrainer(model, ref_model=ref, args=_args(tmp_path, per_device_train_batch_size=3),
                         train_dataset=Dataset.from_list(_qwen_rows()), processing_class=processor)
    assert trainer.shared_prefix
    _perturb(trainer.model, scale=0.05)
    examples = [trainer.train_dataset[i] for i in range(3)]
    old, new = _compare_paths(trainer, examples, DataCollatorForAPO(processor, max_length=512),
                              DataCollatorForAPO(processor, max_length=512, shared_prefix=True))
    grid = new[5]["image_grid_thw"]
    assert grid.shape[0] == 3 and old[5]["image_grid_thw"].shape[0] == 4 + 3 + 4
    assert len({tuple(g) for g in grid.tolist()}) > 1  # rows really have different grids
    assert any("visual" in n for n in new[4])

"""APOTrainer on text-only rows with a tiny Llama: one forward per candidate, metrics, references, bad input."""

import contextlib
import math

import pytest
import torch
from datasets import Dataset


from cxr_max.errors import DataError
from cxr_max.training import APOConfig, APOTrainer, DataCollatorForAPO
from cxr_max.training.tiny import tiny_lm

TEXTS = ["the heart is enlarged", "left pleural effusion", "right pleural effusion", "no acute finding",
         "what is the disease of this patient"]
TEACHERS = ["gpt", "claude", "gemini"]


def _rows(n=6, k=3, conversational=True):
    rows = []
    for i in range(n):
        chosen = TEXTS[i % 4]
        rejected = [TEXTS[(i + j + 1) % 4] + f" {j}" for j in range(k)]
        if conversational:
            rows.append({
                "prompt": [{"role": "user", "content": TEXTS[4] + f" {i}?"}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [[{"role": "assistant", "content": r}] for r in rejected],
                "rejected_teachers": TEACHERS[:k],
                "rejected_weights": [1.0 + j for j in range(k)],
            })
        else:
            rows.append({"prompt": TEXTS[4] + f" {i}? ", "chosen": chosen, "rejected": rejected,
                         "rejected_teachers": TEACHERS[:k]})
    return rows


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    model, tok = tiny_lm(TEXTS, folder, seed=0)
    return folder, tok


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3,
                bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none", logging_steps=1,
                max_length=128, save_strategy="no", seed=0)
    base.update(kw)
    return APOConfig(**base)


def _model(folder):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder)


def test_collator_forwards_each_candidate_once(lm):
    _, tok = lm
    rows = _rows(2, 3)
    rows[1]["rejected"] = rows[1]["rejected"][:1]
    rows[1]["rejected_teachers"] = ["gpt"]
    rows[1]["rejected_weights"] = [1.0]
    batch = DataCollatorForAPO(tok)(rows)
    assert batch["input_ids"].shape[0] == (1 + 3) + (1 + 1)  # not 2K sequences, no padding negatives
    assert batch["candidate_index"].tolist() == [[0, 1, 2, 3], [4, 5, -1, -1]]
    assert batch["negative_mask"].tolist() == [[True, True, True], [True, False, False]]
    # every sequence has completion tokens and the completion is the candidate's text
    assert (batch["completion_mask"].sum(1) > 0).all()
    text = tok.decode(batch["input_ids"][1][batch["completion_mask"][1].bool()])
    assert "left pleural effusion 0" in text or TEXTS[1] in text


def test_trains_with_ref_copy_and_logs_metrics(lm, tmp_path):
    folder, tok = lm
    trainer = APOTrainer(_model(folder), args=_args(tmp_path), train_dataset=Dataset.from_list(_rows()),
                         processing_class=tok)
    assert trainer.ref_model is not None  # copy of the starting checkpoint
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = trainer.state.log_history[0]
    for key in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "rewards/teacher/gpt", "win_rate/claude", "win_rate/gemini"]:
        assert key in logs, key
    # step 1: policy == reference, so every reward is 0 and the loss is log(1 + K)
    assert logs["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert logs["loss"] == pytest.approx(math.log(4), rel=1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.state.log_history[1]["rewards/margins"] != 0


@pytest.mark.parametrize("shared_prefix", [False, None])
def test_loss_matches_pure_function(lm, tmp_path, shared_prefix):
    folder, tok = lm
    from cxr_max.training.loss import apo_loss

    trainer = APOTrainer(_model(folder), ref_model=_model(folder), args=_args(tmp_path, shared_prefix=shared_prefix),
                         train_dataset=Dataset.from_list(_rows(2)), processing_class=tok)
    assert trainer.shared_prefix == (shared_prefix is None)  # default: on for Llama
    with torch.no_grad():  # perturb the policy so rewards are non-zero
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples = [trainer.train_dataset[i] for i in range(2)]
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
    batch = DataCollatorForAPO(tok, max_length=128)(examples)  # one sequence per candidate, for the expected loss
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref = trainer.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def seq(logits):
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (lp * batch["completion_mask"][:, 1:]).sum(1)

    idx = batch["candidate_index"]
    expected = apo_loss(seq(out)[idx], seq(ref)[idx], beta=0.1, negative_weights=batch["negative_weights"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_precomputed_reference_cached_and_checked(lm, tmp_path):
    folder, tok = lm
    ds = Dataset.from_list(_rows(4, conversational=False))
    args = _args(tmp_path, precompute_ref_log_probs=True, max_steps=1)
    trainer = APOTrainer(_model(folder), args=args, train_dataset=ds, processing_class=tok)
    assert trainer.ref_model is None
    cache = tmp_path / "out" / "ref_logps_train.parquet"
    assert cache.is_file()
    first = trainer.train_dataset["ref_logps"]
    assert len(first) == 4 and all(len(r) == 4 for r in first)
    trainer.train()
    # a second trainer with the same model and data reuses the cache
    again = APOTrainer(_model(folder), args=args, train_dataset=ds, processing_class=tok)
    assert again.train_dataset["ref_logps"] == first
    # another model with the same cache file: mismatched reference, clear error
    other, _ = tiny_lm(TEXTS, tmp_path / "other", seed=5)
    with pytest.raises(DataError, match="do not match"):
        APOTrainer(other, args=args, train_dataset=ds, processing_class=tok)


def test_peft_reference_is_adapter_disabled(lm, tmp_path):
    from peft import LoraConfig

    folder, tok = lm
    trainer = APOTrainer(_model(folder), args=_args(tmp_path, max_steps=1), train_dataset=Dataset.from_list(_rows()),
                         processing_class=tok, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None
    trainer.train()
    assert "rewards/chosen" in trainer.state.log_history[0]


def test_missing_or_mismatched_reference_checkpoint(lm, tmp_path):
    folder, tok = lm
    ds = Dataset.from_list(_rows(2))
    with pytest.raises(DataError, match="reference checkpoint not found"):
        APOTrainer(_model(folder), args=_args(tmp_path, ref_model_path=str(tmp_path / "nope")), train_dataset=ds,
                   processing_class=tok)
    tiny_lm(TEXTS + ["more words for a bigger vocabulary " * 3], tmp_path / "big", vocab_size=600, seed=3)
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(tmp_path / "big").vocab_size != AutoConfig.from_pretrained(folder).vocab_size
    with pytest.raises(DataError, match="vocabulary"):
        APOTrainer(_model(folder), args=_args(tmp_path, ref_model_path=str(tmp_path / "big")),
                   train_dataset=ds, processing_class=tok)


def _bad(kind):
    rows = _rows(3)
    r = rows[1]
    if kind == "no_negatives":
        r["rejected"], r["rejected_teachers"], r["rejected_weights"] = [], [], []
    elif kind == "empty":
        r["chosen"] = [{"role": "assistant", "content": "  "}]
    elif kind == "too_many":
        for row in rows:
            row["rejected"] = row["rejected"] * 3
            row["rejected_teachers"] = row["rejected_teachers"] * 3
            row["rejected_weights"] = row["rejected_weights"] * 3
    elif kind == "all_identical":
        r["rejected"] = [r["chosen"]] * 3
    return rows


@pytest.mark.parametrize("kind,match", [("no_negatives", "no negatives"), ("empty", "empty completion"),
                                        ("too_many", "more than max_negatives"),
                                        ("all_identical", "identical to the positive")])
def test_bad_rows_raise_naming_the_row(lm, tmp_path, kind, match):
    folder, tok = lm
    with pytest.raises(DataError, match=match) as err:
        APOTrainer(_model(folder), args=_args(tmp_path, max_negatives=7),
                   train_dataset=Dataset.from_list(_bad(kind)), processing_class=tok)
    assert "train dataset, row 1" in str(err.value) or "row 0" in str(err.value)


def test_skip_policy_counts_and_truncation(lm, tmp_path):
    folder, tok = lm
    rows = _bad("no_negatives")
    rows[0]["rejected"][0] = rows[0]["chosen"]  # one identical negative: dropped, counted
    trainer = APOTrainer(_model(folder), args=_args(tmp_path, on_error="skip"),
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    assert len(trainer.train_dataset) == 2
    assert trainer.skips.counts["row has no negatives (rejected is empty)"] == 1
    assert trainer.skips.counts["negative identical to the positive (negative dropped)"] == 1
    assert len(trainer.train_dataset[0]["rejected"]) == 2
    t2 = APOTrainer(_model(folder), args=_args(tmp_path, max_negatives=4, truncate_negatives=True),
                    train_dataset=Dataset.from_list(_bad("too_many")), processing_class=tok)
    assert all(len(r) == 4 for r in t2.train_dataset["rejected"])


def test_long_sequences_truncated_with_count_not_crash(lm, tmp_path):
    folder, tok = lm
    rows = _rows(2)
    rows[0]["rejected"][0] = [{"role": "assistant", "content": " ".join(TEXTS * 10)}]
    trainer = APOTrainer(_model(folder), args=_args(tmp_path, max_length=24, max_steps=1),
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    assert trainer.data_collator.truncated >= 1
    assert trainer.state.log_history[0]["truncated_sequences"] >= 1


def test_nan_loss_stops_with_step_and_rows(lm, tmp_path):
    folder, tok = lm
    trainer = APOTrainer(_model(folder), ref_model=_model(folder), args=_args(tmp_path),
                         train_dataset=Dataset.from_list(_rows(2)), processing_class=tok)
    with torch.no_grad():
        trainer.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"global step 0 .*rows \[\d, \d\]"):
        trainer.train()


# ------------------------------------------------------------------ defects found by a review (issue 11)
def test_full_ranking_zero_weight_negative_takes_no_part():
    """A zero-weight negative in the middle of a full ranking: no stage term (it was -log(0) ~ 1e30 with a
    gradient pushing that negative *up*), no share of any denominator, and zero gradient."""
    from cxr_max.training.loss import apo_loss

    policy = torch.tensor([[-2.0, -3.0, -1.0, -4.0]], requires_grad=True)
    ref = torch.zeros(1, 4)
    w = torch.tensor([[1.0, 0.0, 1.0]])  # normalised to mean 1 over the three negatives: 1.5, 0, 1.5
    loss = apo_loss(policy, ref, beta=1.0, negative_weights=w, ranking="full")
    loss.backward()
    assert policy.grad[0, 2].item() == 0.0
    # hand-computed: positive -2 over {-3, -4} (weights 1.5), then -3 over {-4}; the last stage is log 1 = 0
    e = math.exp
    expected = (math.log(e(-2) + 1.5 * e(-3) + 1.5 * e(-4)) + 2) + (math.log(e(-3) + e(-4)) + 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_full_ranking_orders_negatives_by_agreement_with_the_consensus(lm, tmp_path):
    folder, tok = lm
    rows = _rows(2, 3)
    for r in rows:
        r["rejected_agreement"] = [0.2, None, 0.9]
    ds = Dataset.from_list(rows)
    trainer = APOTrainer(_model(folder), args=_args(tmp_path, ranking="full", max_steps=1), train_dataset=ds,
                         processing_class=tok)
    row = trainer.train_dataset[0]
    assert row["rejected_teachers"] == ["gemini", "gpt", "claude"]  # 0.9, 0.2, unknown last
    assert row["rejected_weights"] == [3.0, 1.0, 2.0]
    trainer.train()
    given = APOTrainer(_model(folder), args=_args(tmp_path, ranking="full", full_ranking_by="given", max_steps=1),
                       train_dataset=Dataset.from_list(_rows(2, 3)), processing_class=tok)
    assert given.train_dataset[0]["rejected_teachers"] == TEACHERS
    with pytest.raises(DataError, match="rejected_agreement"):
        APOTrainer(_model(folder), args=_args(tmp_path, ranking="full"), train_dataset=Dataset.from_list(_rows(2, 3)),
                   processing_class=tok)


def test_reference_from_path_is_built_like_the_policy(lm, tmp_path, monkeypatch):
    """bf16 policy + ref_model_path: the reference loads in bf16 with the policy's attention and no device map, so
    the rewards are exactly zero at step 0 (an fp32 reference next to a bf16 policy gives non-zero rewards)."""
    from transformers import AutoModelForCausalLM

    from cxr_max.training import apo_trainer

    folder, tok = lm
    seen = {}
    real = apo_trainer.create_model_from_path
    monkeypatch.setattr(apo_trainer, "create_model_from_path", lambda path, **kw: seen.update(kw) or real(path, **kw))
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager")
    trainer = APOTrainer(policy, args=_args(tmp_path, ref_model_path=str(folder)),
                         train_dataset=Dataset.from_list(_rows(2)), processing_class=tok)
    assert trainer.ref_model.dtype == torch.bfloat16
    assert trainer.ref_model.config._attn_implementation == "eager"
    assert seen["device_map"] is None and seen["dtype"] == torch.bfloat16
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        _, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert out["rewards"].abs().max().item() == 0.0


def test_precompute_broadcasts_rank0_fingerprint(lm, tmp_path, monkeypatch):
    from cxr_max.training import apo_trainer

    folder, tok = lm
    calls = []

    def fake_broadcast(objects, from_process=0):  # what rank 0 would send to every rank
        calls.append((list(objects), from_process))
        objects[0] = "fingerprint-of-rank-0"
        return objects

    monkeypatch.setattr(apo_trainer, "broadcast_object_list", fake_broadcast)
    APOTrainer(_model(folder), args=_args(tmp_path, precompute_ref_log_probs=True), train_dataset=Dataset.from_list(
        _rows(2)), processing_class=tok)
    import pyarrow.parquet as pq

    meta = pq.read_schema(tmp_path / "out" / "ref_logps_train.parquet").metadata
    assert calls and calls[0][1] == 0 and meta[b"fingerprint"] == b"fingerprint-of-rank-0"


def test_precompute_runs_under_autocast(lm, tmp_path, monkeypatch):
    import accelerate

    folder, tok = lm
    entered = []
    real = accelerate.Accelerator.autocast

    @contextlib.contextmanager
    def recording(self, *a, **kw):
        entered.append(1)
        with real(self, *a, **kw):
            yield

    monkeypatch.setattr(accelerate.Accelerator, "autocast", recording)
    APOTrainer(_model(folder), args=_args(tmp_path, precompute_ref_log_probs=True, per_device_train_batch_size=2),
               train_dataset=Dataset.from_list(_rows(4)), processing_class=tok)
    assert len(entered) == 2  # one per precompute batch


def test_precompute_under_deepspeed_uses_one_inference_engine(lm, tmp_path, monkeypatch):
    """ZeRO-1/2 leave the policy on the CPU and ZeRO-3 shards it until Trainer prepares it: the precompute must go
    through a DeepSpeed inference engine (built once), as TRL's own precompute does."""
    from cxr_max.training import apo_trainer

    folder, tok = lm
    trainer = APOTrainer(_model(folder), args=_args(tmp_path, precompute_ref_log_probs=True),
                         train_dataset=Dataset.from_list(_rows(2)), processing_class=tok)
    built = []
    monkeypatch.setattr(apo_trainer, "prepare_deepspeed", lambda model, acc: built.append(model) or "engine")
    trainer.is_deepspeed_enabled = True
    trainer._precompute_engine = None
    assert trainer._precompute_model() == "engine" and trainer._precompute_model() == "engine"
    assert built == [trainer.model]
    trainer.is_deepspeed_enabled = False
    assert trainer._precompute_model() is trainer.model


def test_real_nan_in_reference_logps_is_an_error_naming_the_row(lm, tmp_path):
    """The cache used NaN as padding and dropped every NaN, so a reference that produced NaN trained silently on
    rows with missing reference values."""
    folder, tok = lm
    ref = _model(folder)
    with torch.no_grad():
        ref.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"train dataset row 0"):
        APOTrainer(_model(folder), ref_model=ref, args=_args(tmp_path, precompute_ref_log_probs=True),
                   train_dataset=Dataset.from_list(_rows(2)), processing_class=tok)


def test_prompt_longer_than_max_length_is_an_error_not_a_cut(lm):
    _, tok = lm
    rows = _rows(2)
    for i, r in enumerate(rows):
        r["apo_index"] = i
    rows[1]["prompt"] = [{"role": "user", "content": " ".join(TEXTS * 6)}]
    with pytest.raises(DataError, match=r"row 1.*prompt .*max_length=24"):
        DataCollatorForAPO(tok, max_length=24)(rows)


def test_cut_answers_past_the_threshold_stop_training(lm):
    _, tok = lm
    rows = _rows(16)
    for i, r in enumerate(rows):
        r["apo_index"] = i
        r["chosen"] = [{"role": "assistant", "content": " ".join(TEXTS * 4)}]
    collator = DataCollatorForAPO(tok, max_length=48, max_truncated_share=0.1)
    collator(rows[:8])  # 32 sequences, 8 cut: under 50 sequences, counted only
    assert collator.truncated == 8
    with pytest.raises(DataError, match=r"16 of 64 sequences .*max_truncated_share=0.1"):
        collator(rows[8:])
    relaxed = DataCollatorForAPO(tok, max_length=48, max_truncated_share=1.0)
    relaxed(rows[:8]), relaxed(rows[8:])
    assert relaxed.truncated == 16


@pytest.mark.slow
def test_evaluate_on_image_rows_and_compute_metrics(tmp_path):
    """trainer.evaluate(rows with images) and compute_metrics: the images column was not renamed for evaluate(), and
    TRL's prediction_step read `.logits` from the dict compute_loss returns."""
    import numpy as np
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from test_tiny_vlm import FINDINGS, PROMPT, SMALL, _apo_rows
    from cxr_max.training.tiny import tiny_vlm

    tiny_vlm(list(FINDINGS.values()) + [PROMPT], tmp_path / "vlm", spec=SMALL, seed=0)
    seen = {}

    def metrics(pred):
        r, present = pred.predictions, pred.label_ids
        seen["shape"] = r.shape
        best_negative = np.where(present == 1, r[:, 1:], -np.inf).max(axis=1)
        return {"positive_wins": float((r[:, 0] > best_negative).mean())}

    args = _args(tmp_path, max_length=256, per_device_eval_batch_size=2, max_steps=1)
    trainer = APOTrainer(AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm"), args=args,
                         train_dataset=Dataset.from_list(_apo_rows(2)), eval_dataset=Dataset.from_list(_apo_rows(4)),
                         processing_class=AutoProcessor.from_pretrained(tmp_path / "vlm"), compute_metrics=metrics)
    out = trainer.evaluate()
    assert seen["shape"] == (4, 4) and 0 <= out["eval_positive_wins"] <= 1 and "eval_rewards/chosen" in out
    extra = trainer.evaluate(eval_dataset=Dataset.from_list(_apo_rows(2, k=2)), metric_key_prefix="heldout")
    assert np.isfinite(extra["heldout_loss"]) and seen["shape"] == (2, 3)

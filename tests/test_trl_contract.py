"""Contract tests: the TRL (and transformers) internals ``APOTrainer`` relies on.

``trl`` is pinned to the tested minor release in pyproject.toml. When a new TRL is tried, these tests fail first,
each naming the internal that changed, instead of a trainer that silently trains against the wrong reference.
"""

import inspect

import pytest
import torch
from datasets import Dataset

import trl
from trl import DPOTrainer

TEXTS = ["the heart is enlarged", "left pleural effusion", "no acute finding", "what is the disease"]


def _source(obj) -> str:
    return inspect.getsource(obj)


def test_trl_is_the_tested_minor_release():
    major_minor = tuple(int(x) for x in trl.__version__.split(".")[:2])
    assert major_minor == (1, 16), (
        f"trl {trl.__version__} is not the tested 1.16.x: rerun tests/test_trl_contract.py and tests/test_apo_*.py, "
        "then move the pin in pyproject.toml")


def test_precompute_hook_is_called_by_dpotrainer_init():
    init = _source(DPOTrainer.__init__)
    assert "self._precompute_ref_logps(" in init, \
        "TRL internal `DPOTrainer._precompute_ref_logps` is no longer called by DPOTrainer.__init__ (APOTrainer " \
        "overrides it to cache the multi-negative reference log-probs)"
    params = list(inspect.signature(DPOTrainer._precompute_ref_logps).parameters)
    assert params == ["self", "dataset", "name", "batch_size"], \
        f"TRL internal `DPOTrainer._precompute_ref_logps` changed its signature: {params}"
    assert "self._precompute_model_hash" in init, \
        "TRL internal `DPOTrainer._precompute_model_hash` (hash of the reference, part of the cache fingerprint) is gone"
    assert "self._precompute_engine = None" in init, \
        "TRL internal `DPOTrainer._precompute_engine` (the DeepSpeed inference engine of the precompute) changed"
    # the hash is taken before the reference is sharded, and the precompute runs after it
    assert init.index("self._precompute_model_hash") < init.index("self._precompute_ref_logps("), \
        "TRL internal order changed: `_precompute_model_hash` must be set before `_precompute_ref_logps` runs"


def test_prepare_deepspeed_and_helpers_keep_their_signatures():
    from trl.models import prepare_deepspeed
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import create_model_from_path, get_config_model_id, use_adapter

    assert list(inspect.signature(prepare_deepspeed).parameters)[:2] == ["model", "accelerator"], \
        "TRL internal `trl.models.prepare_deepspeed(model, accelerator)` changed"
    assert list(inspect.signature(use_adapter).parameters)[:2] == ["model", "adapter_name"], \
        "TRL internal `trl.trainer.utils.use_adapter(model, adapter_name)` changed"
    assert "gradient_checkpointing_kwargs" in inspect.signature(disable_gradient_checkpointing).parameters, \
        "TRL internal `disable_gradient_checkpointing(model, gradient_checkpointing_kwargs)` changed"
    assert "model_id" in inspect.signature(create_model_from_path).parameters, \
        "TRL internal `create_model_from_path(model_id, **kwargs)` changed"
    assert callable(get_config_model_id), "TRL internal `get_config_model_id` is gone"


def test_loss_scaling_contract():
    from transformers import Trainer

    from cxr_max.training import APOTrainer

    assert APOTrainer.loss_is_scaled_for_ga is False
    assert "self.loss_is_scaled_for_ga" in _source(Trainer.training_step), \
        "transformers internal `Trainer.loss_is_scaled_for_ga` is no longer read by training_step: APOTrainer's " \
        "per-micro-batch mean loss may be scaled wrongly under gradient accumulation"


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from cxr_max.training import APOConfig, APOTrainer
    from cxr_max.training.tiny import tiny_lm

    folder = tmp_path_factory.mktemp("lm")
    from transformers import AutoModelForCausalLM

    _, tok = tiny_lm(TEXTS, folder, seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    rows = [{"prompt": [{"role": "user", "content": TEXTS[3]}], "chosen": [{"role": "assistant", "content": TEXTS[0]}],
             "rejected": [[{"role": "assistant", "content": TEXTS[1]}], [{"role": "assistant", "content": TEXTS[2]}]]}
            for _ in range(2)]
    args = APOConfig(str(folder / "out"), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", logging_steps=1)
    return APOTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def test_fused_lm_head_returns_per_token_log_probs(trainer):
    from cxr_max.training import DataCollatorForAPO

    # one sequence per candidate (the trainer's own collator packs a row's candidates under shared_prefix)
    batch = DataCollatorForAPO(trainer.processing_class)([trainer.train_dataset[i] for i in range(2)])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            fused_lm_head=True)
    assert hasattr(out, "log_probs"), "TRL internal fused LM head: `model(..., fused_lm_head=True).log_probs` is gone"
    assert out.log_probs.shape == (batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1), \
        f"TRL internal fused LM head: log_probs shaped {tuple(out.log_probs.shape)}, expected [S, T - 1]"
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].bool()
    assert torch.allclose(out.log_probs[mask], ref[mask], atol=1e-4), \
        "TRL internal fused LM head: log_probs are not the completion tokens' log-probabilities"


def test_fused_lm_head_scores_pre_shifted_labels(trainer):
    """The shared-prefix forward passes ``shift_labels`` (label at position i = the token hidden state i predicts)."""
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    shift = torch.tensor([[-100, 9, 5, -100, 8]])  # not the next tokens: scored as given, not shifted
    with torch.no_grad():
        out = trainer.model(input_ids=ids, shift_labels=shift, fused_lm_head=True)
        logits = trainer.model(input_ids=ids).logits
    assert out.log_probs.shape == (1, 5), \
        f"TRL internal fused LM head: log_probs with shift_labels shaped {tuple(out.log_probs.shape)}, expected [S, T]"
    ref = torch.log_softmax(logits.float(), -1).gather(-1, shift.clamp(min=0)[..., None])[..., 0]
    mask = shift != -100
    assert torch.allclose(out.log_probs[mask], ref[mask], atol=1e-4) and bool((out.log_probs[~mask] == 0).all()), \
        "TRL internal fused LM head: `shift_labels` are no longer scored unshifted at their own positions"


def test_metrics_store_is_averaged_by_log(trainer):
    m = trainer._metrics
    assert set(m) == {"train", "eval"} and all(isinstance(v, dict) for v in m.values()), \
        "TRL internal `DPOTrainer._metrics` is no longer {'train': defaultdict(list), 'eval': ...}"
    trainer.model.train()
    m["train"]["contract/probe"].extend([1.0, 3.0])
    logged = {}
    from transformers import Trainer

    real_log = Trainer.log

    def capture(self, logs, start_time=None):
        logged.update(logs)

    Trainer.log = capture
    try:
        trainer.log({"loss": 0.5})
    finally:
        Trainer.log = real_log
    assert logged.get("contract/probe") == 2.0, \
        f"TRL internal `DPOTrainer.log` no longer averages `_metrics` into the logs: {logged}"
    assert not m["train"], "TRL internal `DPOTrainer.log` no longer clears `_metrics` after logging"

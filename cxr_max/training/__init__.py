"""Training: the APO loss and trainer on TRL, its collator, and the offline tiny-model factory.

Heavy imports (trl, transformers) happen on first use of the names below, so ``import cxr_max.training`` is cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "apo_loss": "cxr_max.training.loss",
    "apo_loss_terms": "cxr_max.training.loss",
    "APOLossOutput": "cxr_max.training.loss",
    "normalise_negative_weights": "cxr_max.training.loss",
    "APOConfig": "cxr_max.training.apo_config",
    "APOTrainer": "cxr_max.training.apo_trainer",
    "validate_apo_rows": "cxr_max.training.apo_trainer",
    "DataCollatorForAPO": "cxr_max.training.collator",
    "expand_pairwise": "cxr_max.training.pairwise",
    "tiny_vlm": "cxr_max.training.tiny",
    "tiny_lm": "cxr_max.training.tiny",
    "train_tokenizer": "cxr_max.training.tiny",
    "TinyVLMSpec": "cxr_max.training.tiny",
    "tiny_qwen25vl": "cxr_max.training.tiny_qwen",
    "TinyQwenSpec": "cxr_max.training.tiny_qwen",
    "qwen_available": "cxr_max.training.tiny_qwen",
    "cpu_safe": "cxr_max.training.devices",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cxr_max.training' has no attribute {name!r}")

"""Batched generation with an image-text-to-text checkpoint on its device and in its dtype.

Shared by the model consensus (:mod:`cxr_max.drift.model_consensus`), the evaluation runner and
:func:`cxr_max.evaluation.predict.generate_answers`. On a GPU the model loads in bfloat16 (float16 where the GPU
has no bfloat16) on ``cuda``; on the CPU in float32. Inputs are moved to the model's device and their floating
tensors (``pixel_values``) cast to its dtype, so a bf16 model on a GPU gets bf16 pixels on the GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | str | None = None) -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that supports it (else float16), float32 on the CPU; or the dtype named."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dev = torch.device(device) if device is not None else default_device()
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be 'auto', 'bfloat16', 'float16' or 'float32', not {dtype!r}")
    return getattr(torch, dtype)


def load_generator(model_dir: str | Path, *, dtype: str | torch.dtype | None = "auto",
                   device: torch.device | str | None = None, trust_remote_code: bool = False):
    """``(model, processor)`` from a checkpoint folder, the model in eval mode on ``device`` in ``dtype`` and the
    tokenizer padding on the left (batched generation)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = torch.device(device) if device is not None else default_device()
    processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype, device),
                                                        device_map=None, trust_remote_code=trust_remote_code)
    model.to(device).eval()
    getattr(processor, "tokenizer", processor).padding_side = "left"
    return model, processor


def to_model(inputs: Mapping[str, Any], model) -> dict[str, Any]:
    """``inputs`` moved to ``model.device``; floating tensors (pixels) cast to ``model.dtype``."""
    out = {}
    for key, value in inputs.items():
        if torch.is_tensor(value):
            value = value.to(model.device)
            if value.is_floating_point():
                value = value.to(model.dtype)
        out[key] = value
    return out


def eos_ids(model, tokenizer) -> set[int]:
    """Token ids that end a generation: the generation config's EOS ids and the tokenizer's EOS."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generate_texts(model, processor, texts: Sequence[str], images: Sequence, *, max_new_tokens: int,
                   do_sample: bool = False, temperature: float | None = None,
                   **generate_kwargs: Any) -> tuple[list[str], list[bool]]:
    """One batch: ``(decoded new text per row, whether the row finished)``.

    A row *finished* when an EOS token appears among its new tokens; a row that ran into ``max_new_tokens``
    without one was cut, and callers decide what to do with it (the model consensus drops it).
    """
    tok = getattr(processor, "tokenizer", processor)
    batch = processor(text=list(texts), images=list(images), padding=True, return_tensors="pt")
    batch = to_model(batch, model)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id)
    if do_sample:
        kwargs["temperature"] = temperature if temperature is not None else 1.0
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    kwargs.update(generate_kwargs)
    with torch.no_grad():
        out = model.generate(**batch, **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    stop = eos_ids(model, tok)
    finished = [bool(stop) and any(int(t) in stop for t in row) for row in new.tolist()]
    return tok.batch_decode(new, skip_special_tokens=True), finished

"""Shared-prefix APO: the prompt (and its image) of a row is forwarded once, for all its ``1 + K`` candidates.

Layout of one row (``P`` prompt tokens ``p_0 .. p_{P-1}``, candidates ``c_0`` = the positive, ``c_1 .. c_K``)::

    [ p_0 .. p_{P-2} | p_{P-1} c_0 | p_{P-1} c_1 | ... | p_{P-1} c_K ]   (then right padding)
      segment 0        segment 1     segment 2           segment K + 1

Every candidate block starts with its own copy of the prompt's last token, so the next-token prediction of the
first completion token sits inside the block (one extra token per candidate, instead of ``P`` today). The block
mask lets each token see the shared prompt and the earlier tokens of its own block only; the positions of every
block continue from the prompt (``P - 1`` for the copied token), exactly the positions the token has in the
ordinary ``prompt + candidate`` sequence. So each candidate's log-probabilities are those of the separate
sequence (up to float rounding), while the language model reads ``P + sum_j (1 + |c_j|)`` tokens per row instead
of ``(1 + K) P + sum_j |c_j|``, and the vision tower encodes each image once.

Everything here is pure tensor code: :func:`pack_row` (token layout), :func:`block_attention_mask` (the 4-D
mask), :func:`mrope_positions` (Qwen2.5-VL's 3-D positions for a packed row), :func:`candidate_sums` (summed
log-probs per candidate) and :func:`shared_prefix_support` (which models and attention backends accept it).
"""

from __future__ import annotations

from typing import Any

import torch

#: ``model_type`` of the models whose forward was verified (tests/test_shared_prefix*.py) to take a custom 4-D mask
#: and custom position ids and give the separate-sequence log-probs: Llama, LLaVA (Llama text model) and
#: Qwen2.5-VL (M-RoPE positions computed by the model's own ``get_rope_index`` on the prompt).
SUPPORTED_MODEL_TYPES = {"llama": None, "llava": {"llama"}, "qwen2_5_vl": {"qwen2_5_vl_text", "qwen2_5_vl"}}
#: Attention implementations that take an arbitrary 4-D mask (boolean for SDPA, additive float for eager).
SUPPORTED_ATTENTION = ("sdpa", "eager")


def shared_prefix_support(config: Any, attn_implementation: str | None = None) -> str | None:
    """``None`` when a model with this config (and attention implementation) runs the shared-prefix forward, else
    the reason it cannot (one sentence, for the message the trainer prints)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (f"model type {model_type!r} is not among the verified ones "
                f"({', '.join(sorted(SUPPORTED_MODEL_TYPES))})")
    text_types = SUPPORTED_MODEL_TYPES[model_type]
    if text_types is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else None
        text_type = getattr(text, "model_type", None)
        if text_type not in text_types:
            return f"{model_type} with a {text_type!r} language model is not verified (only {sorted(text_types)})"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    attn = attn_implementation or getattr(text, "_attn_implementation", None) or \
        getattr(config, "_attn_implementation", None) or "sdpa"
    if attn not in SUPPORTED_ATTENTION:
        return (f"attention implementation {attn!r} takes no custom 4-D mask (use 'sdpa' or 'eager'; varlen / "
                "FlexAttention kernels are not wired in yet)")
    return None


def pack_row(prefix: list[int], completions: list[list[int]], prefix_types: list[int] | None = None) -> dict:
    """The packed token layout of one row (lists, unpadded).

    Args:
        prefix: the prompt's token ids (``P >= 1``), image placeholder tokens included.
        completions: the ``1 + K`` candidates' completion token ids (each non-empty).
        prefix_types: per-token modality of the prompt (Qwen2.5-VL's ``mm_token_type_ids``), if any.

    Returns:
        ``input_ids``, ``segment_ids`` (0 = shared prompt, ``j + 1`` = candidate ``j``), ``position_ids`` (text
        positions: the prompt ``0 .. P - 2``, each block ``P - 1 ..``), ``shift_labels`` (the token each position
        predicts, ``-100`` where nothing is scored), ``label_segment`` (the candidate a scored position belongs
        to, ``-1`` elsewhere) and ``types`` (modality per token, 0 for candidate blocks) -- all of one length.
    """
    if not prefix:
        raise ValueError("pack_row needs a non-empty prompt")
    last = prefix[-1]
    ids, seg, pos, lab, lseg = list(prefix[:-1]), [0] * (len(prefix) - 1), list(range(len(prefix) - 1)), [], []
    lab = [-100] * len(ids)
    lseg = [-1] * len(ids)
    types = list(prefix_types[:-1]) if prefix_types is not None else [0] * len(ids)
    start = len(prefix) - 1
    for j, comp in enumerate(completions):
        if not comp:
            raise ValueError(f"candidate {j} has no completion token")
        block = [last, *comp]
        ids.extend(block)
        seg.extend([j + 1] * len(block))
        pos.extend(range(start, start + len(block)))
        lab.extend([*comp, -100])  # the block's last token predicts nothing
        lseg.extend([j] * len(comp) + [-1])
        types.extend([0] * len(block))
    return {"input_ids": ids, "segment_ids": seg, "position_ids": pos, "shift_labels": lab, "label_segment": lseg,
            "types": types}


def pad_packed(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the :func:`pack_row` outputs of a batch into ``[B, L]`` tensors (padding: segment ``-1``)."""
    length = max(len(r["input_ids"]) for r in rows)
    fills = {"input_ids": pad_token_id, "segment_ids": -1, "position_ids": 0, "shift_labels": -100,
             "label_segment": -1, "types": 0}
    out = {}
    for key, fill in fills.items():
        out[key] = torch.tensor([r[key] + [fill] * (length - len(r[key])) for r in rows], dtype=torch.long)
    return out


def block_attention_mask(segment_ids: torch.Tensor, boolean: bool = True,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[B, 1, L, L]`` mask of a packed batch: query ``q`` sees key ``k <= q`` when ``k`` is in the shared
    prompt (segment 0) or in ``q``'s own segment. Padding (segment ``-1``) sees only itself, so no softmax row is
    empty (an all-masked row would give NaN gradients).

    ``boolean=True``: ``True`` = attend (what SDPA takes). ``False``: additive ``0`` / ``finfo(dtype).min`` (what
    eager attention adds to its scores).
    """
    seg = segment_ids
    length = seg.shape[1]
    idx = torch.arange(length, device=seg.device)
    causal = idx[None, :] <= idx[:, None]  # [q, k]
    same = seg[:, :, None] == seg[:, None, :]
    to_prefix = (seg[:, None, :] == 0) & (seg[:, :, None] >= 0)
    allowed = causal[None] & (same | to_prefix) & (seg[:, None, :] >= 0)
    pad = seg < 0
    allowed = allowed | (pad[:, :, None] & torch.eye(length, dtype=torch.bool, device=seg.device)[None])
    allowed = allowed[:, None]
    if boolean:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


def mrope_positions(get_rope_index, input_ids: torch.Tensor, segment_ids: torch.Tensor, text_positions: torch.Tensor,
                    mm_token_type_ids: torch.Tensor, image_grid_thw: torch.Tensor | None,
                    video_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen2.5-VL's ``[3, B, L]`` M-RoPE positions of a packed batch.

    The shared prompt gets the model's own positions (``get_rope_index`` run on the prompt tokens only, image grid
    included); every candidate block continues as text from the prompt: ``text position + the row's rope delta``,
    which is the position its token has in the separate ``prompt + candidate`` sequence.
    """
    prefix = segment_ids == 0
    kwargs = {"image_grid_thw": image_grid_thw, "attention_mask": prefix.long()}
    if video_grid_thw is not None:
        kwargs["video_grid_thw"] = video_grid_thw
    positions, deltas = get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids, **kwargs)
    positions = positions.to(text_positions.device)
    rest = (text_positions + deltas.to(text_positions.device).view(-1, 1)).unsqueeze(0).expand_as(positions)
    return torch.where(prefix.to(positions.device).unsqueeze(0), positions, rest.to(positions.dtype))


def candidate_sums(per_token: torch.Tensor, label_segment: torch.Tensor, n_candidates: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs ``[B, n_candidates]`` and scored-token counts per candidate from per-position values
    ``[B, L]`` and the candidate each position scores (``label_segment``, ``-1`` = none)."""
    valid = label_segment >= 0
    index = label_segment.clamp(min=0).to(per_token.device)
    values = torch.where(valid.to(per_token.device), per_token, torch.zeros_like(per_token))
    sums = per_token.new_zeros(per_token.shape[0], n_candidates).scatter_add(1, index, values)
    counts = torch.zeros(per_token.shape[0], n_candidates, dtype=torch.long, device=per_token.device)
    counts = counts.scatter_add(1, index, valid.long().to(per_token.device))
    return sums, counts


def find_rope_index(model: torch.nn.Module):
    """The ``get_rope_index`` method of ``model`` or of a module inside it (PEFT/DDP/DeepSpeed wrappers), or
    ``None`` for models with plain 1-D positions."""
    for module in model.modules():
        fn = getattr(type(module), "get_rope_index", None)
        if fn is not None:
            return getattr(module, "get_rope_index")
    return None

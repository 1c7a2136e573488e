"""A tiny Qwen2.5-VL built offline: the paper's student architecture at toy size, for CPU tests of every stage.

:func:`tiny_qwen25vl` builds a ``Qwen2_5_VLForConditionalGeneration`` from a small ``Qwen2_5_VLConfig`` (random
weights, the real window-attention ViT with 14-pixel patches and 2x2 spatial merge, the real M-RoPE text model)
and a real ``Qwen2_5_VLProcessor``:

- the tokenizer is a ``Qwen2TokenizerFast`` (Qwen2's byte-level BPE with its pre-tokenizer) trained with
  ``tokenizers`` on the texts you pass, plus Qwen2.5-VL's special tokens (``<|im_start|>``, ``<|im_end|>``,
  ``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>``, ``<|endoftext|>``);
- the chat template is the one Qwen2.5-VL-7B-Instruct publishes (:data:`QWEN25VL_CHAT_TEMPLATE`), so TRL
  recognises it and swaps in its ``{% generation %}`` training variant for ``assistant_only_loss=True``
  exactly as it does for the real model;
- the image processor is ``Qwen2VLImageProcessorPil`` with bounded ``min_pixels``/``max_pixels`` (the real
  model's default admits ~12.8M pixels, i.e. thousands of visual tokens per chest X-ray).

``Qwen2_5_VLProcessor`` refuses to construct unless torchvision imports (its video processor). The project's
main test environment has the CPU torch without torchvision; ``make test`` runs the Qwen2.5-VL tests in a second
environment (``.venv-qwen``, torch 2.14.1 + torchvision 0.29.1). :func:`qwen_available` says whether this
environment can build it.

Everything is saved to a folder and reloads with ``AutoModelForImageTextToText`` / ``AutoProcessor``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
QWEN_SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

# The chat template of Qwen2.5-VL-7B-Instruct as published with the model (a fact of the model: TRL's
# get_training_chat_template matches it byte for byte to pick its assistant-masking training variant).
QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# The bound the authors' earlier CPO scripts use for Qwen2.5-VL (MAX_PIXELS=1003520 = 1280 * 28 * 28): at most
# 1280 visual tokens per image. The recipes' Qwen YAMLs set it.
PAPER_MAX_PIXELS = 1003520


@dataclasses.dataclass
class TinyQwenSpec:
    """Sizes of the tiny Qwen2.5-VL (text ~0.2M parameters plus embeddings, vision ~0.05M).

    ``min_pixels``/``max_pixels`` bound the resized image: with 14-pixel patches and 2x2 merge one visual token
    covers 28x28 pixels, so the defaults give 4 to 16 visual tokens per image.
    """

    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vision_depth: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    vision_intermediate: int = 64
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    vocab_size: int = 1024
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    max_position_embeddings: int = 4096


def qwen_available() -> bool:
    """Whether ``Qwen2_5_VLProcessor`` can be built here (it needs torchvision for its video processor)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken torchvision (wrong torch build) fails with various errors
        return False
    return True


def train_qwen_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A ``Qwen2TokenizerFast`` (Qwen2's pre-tokenizer and byte-level BPE) trained on ``texts``.

    EOS is ``<|im_end|>`` and padding ``<|endoftext|>``, as in Qwen2.5-VL-Instruct; the chat template is set.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_qwen_tokenizer needs at least one non-empty text")
    empty = Qwen2TokenizerFast()  # carries Qwen2's pre-tokenizer (regex split + byte level)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = empty.backend_tokenizer.pre_tokenizer
    bpe.normalizer = empty.backend_tokenizer.normalizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    import json

    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2TokenizerFast(vocab=model["vocab"], merges=merges, unk_token=None, eos_token=IM_END,
                             pad_token=ENDOFTEXT, additional_special_tokens=QWEN_SPECIAL_TOKENS[1:])
    tok.chat_template = QWEN25VL_CHAT_TEMPLATE
    return tok


def tiny_qwen25vl(texts: Iterable[str], output_dir: str | Path | None = None, spec: TinyQwenSpec | None = None,
                  seed: int = 0):
    """Build the tiny Qwen2.5-VL, its tokenizer and processor (random weights, nothing downloaded).

    Args:
        texts: corpus for the tokenizer (the teachers' trajectories and the prompts).
        output_dir: when given, model + processor are saved there (reload with ``AutoModelForImageTextToText`` /
            ``AutoProcessor``, or pass the folder to the recipes as ``--model_name_or_path``).
        spec: sizes and the image bound; :class:`TinyQwenSpec` defaults.
        seed: weight-initialisation seed.

    Returns:
        ``(model, processor)``.

    Raises:
        ImportError: torchvision is missing (``Qwen2_5_VLProcessor`` needs it; see :func:`qwen_available`).
    """
    if not qwen_available():
        raise ImportError("the tiny Qwen2.5-VL needs torchvision (Qwen2_5_VLProcessor's video processor); "
                          "`make test` builds .venv-qwen with torch 2.14.1 + torchvision 0.29.1 for it")
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    spec = spec or TinyQwenSpec()
    head_dim = spec.text_hidden // spec.text_heads
    if head_dim % 2:
        raise ValueError(f"text_hidden / text_heads = {head_dim} must be even (M-RoPE)")
    half = head_dim // 2  # mrope_section (temporal, height, width) must sum to head_dim / 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    tokenizer = train_qwen_tokenizer(texts, vocab_size=spec.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
                num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
                num_key_value_heads=spec.text_kv_heads, max_position_embeddings=spec.max_position_embeddings,
                bos_token_id=None, eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT],
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope})
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                  num_heads=spec.vision_heads, out_hidden_size=spec.text_hidden, patch_size=spec.patch_size,
                  spatial_merge_size=spec.spatial_merge_size, temporal_patch_size=spec.temporal_patch_size,
                  window_size=spec.patch_size * spec.spatial_merge_size * 4,
                  fullatt_block_indexes=[spec.vision_depth - 1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids[IMAGE_PAD],
                              video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
                              vision_end_token_id=ids[VISION_END], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids[ENDOFTEXT]
    model.generation_config.eos_token_id = [ids[IM_END], ids[ENDOFTEXT]]
    image_processor = Qwen2VLImageProcessorPil(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
                                               patch_size=spec.patch_size, merge_size=spec.spatial_merge_size,
                                               temporal_patch_size=spec.temporal_patch_size)
    video_processor = Qwen2VLVideoProcessor(patch_size=spec.patch_size, merge_size=spec.spatial_merge_size,
                                            temporal_patch_size=spec.temporal_patch_size)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=QWEN25VL_CHAT_TEMPLATE)
    if output_dir is not None:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor

"""Offline tiny models: a tokenizer trained on the project's own texts, a tiny Llama and a tiny LLaVA.

Nothing here downloads anything. :func:`tiny_vlm` builds the embedded default student: a
``LlavaForConditionalGeneration`` (CLIP vision tower + Llama text model, random weights) with a byte-level BPE
tokenizer trained with ``tokenizers`` on the texts you pass (the recipes pass the teachers' trajectories), a
``LlavaProcessor`` (PIL-only CLIP image processor, so no torchvision) and a chat template whose assistant turns
are wrapped in ``{% generation %}`` blocks, so TRL's ``assistant_only_loss=True`` works. Everything is saved to
a folder and reloads with ``AutoModelForImageTextToText`` / ``AutoProcessor``, like any Hub VLM.

Why LLaVA: the Qwen2-VL / SmolVLM processors need torchvision, which cannot be installed next to the CPU torch
here; LLaVA's processor and model build from configs with PIL only (docs/libraries.md, "transformers").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
IMAGE = "<image>"
USER, ASSISTANT, SYSTEM, END = "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IMAGE, USER, ASSISTANT, SYSTEM, END]

# Content may be a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
# Assistant turns sit in {% generation %} blocks so `return_assistant_tokens_mask` (assistant_only_loss) works.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT + "' -}}"
    "{%- generation -%}"
    "{%- for part in parts -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}"
    "{{- '" + END + "' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'image' -%}{{- '" + IMAGE + "' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '" + END + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
)


@dataclasses.dataclass
class TinyVLMSpec:
    """Sizes of the tiny student (defaults: about 0.54M parameters plus 2 x 96 x vocab for embeddings and LM head)."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 96
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    vocab_size: int = 1024
    max_position_embeddings: int = 2048


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Byte-level means any text encodes (no unknown tokens); the merges learned from the corpus make the
    teachers' vocabulary cheap. The chat template and special tokens of this module are set.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IMAGE, USER, ASSISTANT, SYSTEM, END],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def tiny_lm(texts: Iterable[str], output_dir: str | Path | None = None, *, hidden: int = 64, layers: int = 2,
            heads: int = 4, vocab_size: int = 512, seed: int = 0):
    """A tiny text-only ``LlamaForCausalLM`` and its tokenizer (for text-only rows and fast tests).

    Returns ``(model, tokenizer)``; when ``output_dir`` is given both are saved there.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    _seed(seed)
    model = LlamaForCausalLM(config)
    if output_dir is not None:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    return model, tokenizer


def vision_config(spec: TinyVLMSpec):
    """The ``CLIPVisionConfig`` of the tiny student's vision tower (also what :mod:`.pretrain` trains)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        num_channels=3,
        projection_dim=spec.vision_hidden,
    )


def tiny_image_processor(spec: TinyVLMSpec):
    """The PIL-only CLIP image processor of the tiny student (resize + centre crop to ``image_size``)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )


def load_into(model, folder: str | Path) -> None:
    """Copy a pretrained tower (``folder/vision.safetensors``, written by
    :func:`cxr_max.training.pretrain.pretrained_vision`) into a LLaVA model's vision tower (in place)."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / "vision.safetensors"))
    tower = model.model.vision_tower if hasattr(model, "model") and hasattr(model.model, "vision_tower") \
        else model.vision_tower
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"pretrained tower in {folder} does not fit this student: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def tiny_vlm(texts: Iterable[str], output_dir: str | Path | None = None, spec: TinyVLMSpec | None = None,
             seed: int = 0, vision_init: str | Path | None = None):
    """Build the tiny LLaVA student, its tokenizer and processor.

    Args:
        texts: corpus for the tokenizer (pass the teachers' trajectories and the prompts).
        output_dir: when given, model + processor are saved there, so ``AutoModelForImageTextToText`` /
            ``AutoProcessor.from_pretrained(output_dir)`` (and TRL given the path) reload them.
        spec: sizes; :class:`TinyVLMSpec` defaults.
        seed: weight-initialisation seed (deterministic).
        vision_init: a pretrained tower folder (:func:`cxr_max.training.pretrain.pretrained_vision`) whose
            weights replace the random vision tower; the projector and the language model stay random.

    Returns:
        ``(model, processor)``. An image takes ``(image_size // patch_size) ** 2`` ``<image>`` tokens.
    """
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    spec = spec or TinyVLMSpec()
    if spec.image_size % spec.patch_size:
        raise ValueError(f"image_size {spec.image_size} must be a multiple of patch_size {spec.patch_size}")
    tokenizer = train_tokenizer(texts, vocab_size=spec.vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    n_image_tokens = (spec.image_size // spec.patch_size) ** 2
    vision = vision_config(spec)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=n_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    _seed(seed)
    model = LlavaForConditionalGeneration(config)
    if vision_init is not None:
        load_into(model, vision_init)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END)]
    image_processor = tiny_image_processor(spec)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=1,
    )
    if output_dir is not None:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor

"""Batching APO rows: one prompt, one positive and up to K negatives, each candidate forwarded once.

The pairwise expansion of DPO would forward ``2K`` sequences per prompt (the positive once per pair); here a row
becomes ``1 + K_row`` sequences (``prompt + candidate``), and padding negatives of short rows are not forwarded at
all: ``candidate_index`` maps ``[row, candidate]`` to the sequence that holds it (``-1`` for none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import ProcessorMixin

from cxr_max.errors import DataError
from transformers.data.data_collator import DataCollatorMixin
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
from trl.trainer.utils import flush_left, pad

logger = logging.getLogger("cxr_max")

IMAGES_COLUMN = "apo_images"  # the trainer renames "images"/"image" to this (see APOTrainer)
INDEX_COLUMN = "apo_index"  # the row's position in the dataset, for error messages and the reference cache


@dataclass
class DataCollatorForAPO(DataCollatorMixin):
    """Collate APO rows (text-only or with images) into one batch of ``sum_b (1 + K_b)`` sequences.

    Each example has ``prompt``, ``chosen`` (a completion), ``rejected`` (a list of completions), optionally
    ``rejected_weights``, ``rejected_teachers``, ``ref_logps`` (``1 + K_b`` floats), ``apo_images`` and
    ``apo_index``. Conversational rows go through the processing class's chat template; standard (string) rows
    get the EOS token appended to each completion.

    Output keys: ``input_ids``, ``attention_mask``, ``completion_mask`` (plus the processor's image tensors,
    repeated once per candidate), ``candidate_index`` ``[B, 1 + K]`` (``-1`` = no candidate),
    ``negative_mask`` ``[B, K]``, ``negative_weights`` ``[B, K]``, ``apo_index`` ``[B]``,
    ``rejected_teachers`` (list of lists of names) and ``ref_logps`` ``[B, 1 + K]`` when the rows carry them.

    Truncation to ``max_length`` never cuts a prompt: a prompt (with its image tokens) that leaves no room for a
    completion token is a :class:`~cxr_max.errors.DataError` naming the row (bound the image size with the
    processor's ``max_pixels``, or raise ``max_length``). Longer sequences lose the end of their completion --
    where the final answer is -- so each cut is counted in ``truncated`` (a warning with the running count is
    logged), and once more than ``max_truncated_share`` of the sequences seen so far (from the 50th on) were cut,
    the collator raises ``DataError`` naming the rows instead of training on answers it cannot see.
    """

    processing_class: Any
    max_length: int | None = None
    return_tensors: str = "pt"
    max_truncated_share: float = 0.02
    truncated: int = field(default=0, init=False)
    sequences: int = field(default=0, init=False)
    truncated_rows: list = field(default_factory=list, init=False)

    @property
    def tokenizer(self):
        """The tokenizer inside the processing class."""
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    def _render(self, example: dict, completion: Any, images: list) -> tuple[str, str]:
        if is_conversational({"prompt": example["prompt"]}):
            prompt = example["prompt"]
            if isinstance(self.processing_class, ProcessorMixin):
                prompt = prepare_multimodal_messages(prompt, images=images)
                completion = prepare_multimodal_messages(completion)
            out = apply_chat_template({"prompt": prompt, "completion": completion}, self.processing_class)
            return out["prompt"], out["completion"]
        eos = self.tokenizer.eos_token or ""
        text = completion if completion.endswith(eos) else completion + eos
        return example["prompt"], text

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts, completions, images, owners = [], [], [], []
        k_max = max(len(ex["rejected"]) for ex in examples)
        for b, ex in enumerate(examples):
            row_images = ex.get(IMAGES_COLUMN) or []
            for j, cand in enumerate([ex["chosen"], *ex["rejected"]]):
                p, c = self._render(ex, cand, row_images)
                prompts.append(p)
                completions.append(c)
                images.append(row_images)
                owners.append((b, j))
        has_images = any(len(im) for im in images)

        kwargs = dict(padding=True, return_tensors=self.return_tensors, add_special_tokens=False)
        is_processor = isinstance(self.processing_class, ProcessorMixin)
        # Fast path: every row has the same prompt for all its candidates, so the prompt (and its image) is
        # processed once per row and repeated per candidate. Only when each row has exactly one image or all rows
        # none, so that per-image tensors line up with rows whatever the processor's layout.
        n_images = {len(ex.get(IMAGES_COLUMN) or []) for ex in examples}
        row_of_seq = torch.tensor([b for b, _ in owners])
        first_seq = [owners.index((b, 0)) for b in range(len(examples))]
        processed = None
        if n_images in ({0}, {1}):
            row_prompts = [prompts[i] for i in first_seq]
            row_images = [images[i] for i in first_seq] if has_images else None
            call = dict(text=row_prompts, padding_side="left", **kwargs)
            if is_processor:
                call["images"] = row_images
            once = self.processing_class(**call)
            if all(v.shape[0] == len(examples) for v in once.values() if torch.is_tensor(v)):
                processed = {k: v.index_select(0, row_of_seq) if torch.is_tensor(v) else v for k, v in once.items()}
        if processed is None:
            call = dict(text=prompts, padding_side="left", **kwargs)
            if is_processor:
                call["images"] = images if has_images else None
            processed = self.processing_class(**call)
        done = self.processing_class(text=completions, padding_side="right", **kwargs)

        prompt_ids, prompt_mask = processed["input_ids"], processed["attention_mask"]
        comp_ids, comp_mask = done["input_ids"], done["attention_mask"]
        input_ids = torch.cat((prompt_ids, comp_ids), dim=1)
        attention_mask = torch.cat((prompt_mask, comp_mask), dim=1)
        completion_mask = torch.cat((torch.zeros_like(prompt_mask), comp_mask), dim=1)
        extra = {}
        if "mm_token_type_ids" in processed:  # Qwen2.5-VL in transformers 5
            extra["mm_token_type_ids"] = torch.cat(
                (processed["mm_token_type_ids"], torch.zeros_like(comp_ids)), dim=1
            )
        if "token_type_ids" in processed and "token_type_ids" in done:
            extra["token_type_ids"] = torch.cat((processed["token_type_ids"], done["token_type_ids"]), dim=1)
        names = list(extra)
        shifted = flush_left(attention_mask, input_ids, completion_mask, *extra.values())
        attention_mask, input_ids, completion_mask, *rest = shifted
        extra = dict(zip(names, rest))

        lengths = attention_mask.sum(dim=1)
        self.sequences += len(lengths)
        rows_of = [int(examples[b].get(INDEX_COLUMN, b)) for b, _ in owners]
        if self.max_length is not None:
            prompt_lengths = prompt_mask.sum(dim=1)
            too_long = torch.nonzero(prompt_lengths >= self.max_length).flatten().tolist()
            if too_long:
                s = too_long[0]
                raise DataError(
                    f"the prompt (with its image tokens) is {int(prompt_lengths[s])} tokens, leaving no room for the "
                    f"completion within max_length={self.max_length}; truncating would cut image tokens or the whole "
                    "answer. Bound the image size (the processor's max_pixels) or raise max_length",
                    path="APO batch", row=rows_of[s])
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            cut = torch.nonzero(lengths > self.max_length).flatten().tolist()
            n_cut = len(cut)
            self.truncated += n_cut
            self.truncated_rows.extend(sorted({rows_of[s] for s in cut}))
            lost = int((lengths - self.max_length).clamp(min=0).sum())
            logger.warning(
                "APO collator: %d sequence(s) in this batch exceed max_length=%d and lost the end of their completion "
                "(%d tokens; %d of %d sequences so far)", n_cut, self.max_length, lost, self.truncated, self.sequences,
            )
            if self.sequences >= 50 and self.truncated > self.max_truncated_share * self.sequences:
                raise DataError(
                    f"{self.truncated} of {self.sequences} sequences exceeded max_length={self.max_length} and lost the "
                    f"end of their completion (the final answer, where the candidates differ): more than "
                    f"max_truncated_share={self.max_truncated_share}. Raise max_length, bound the image size, or set "
                    f"max_truncated_share=1.0 to train on cut answers anyway", path="APO rows",
                    row=sorted(set(self.truncated_rows))[:20])
            input_ids = input_ids[:, : self.max_length]
            attention_mask = attention_mask[:, : self.max_length]
            completion_mask = completion_mask[:, : self.max_length]
            extra = {k: v[:, : self.max_length] for k, v in extra.items()}

        batch = {k: v for k, v in processed.items() if k not in ("input_ids", "attention_mask")}
        batch.update(extra)
        batch.update(input_ids=input_ids, attention_mask=attention_mask, completion_mask=completion_mask)

        n = len(examples)
        candidate_index = torch.full((n, 1 + k_max), -1, dtype=torch.long)
        for s, (b, j) in enumerate(owners):
            candidate_index[b, j] = s
        batch["candidate_index"] = candidate_index
        batch["negative_mask"] = candidate_index[:, 1:] >= 0
        weights = torch.ones(n, k_max)
        for b, ex in enumerate(examples):
            w = ex.get("rejected_weights")
            if w is not None and len(w):
                weights[b, : len(w)] = torch.tensor([float(x) for x in w])
        batch["negative_weights"] = weights
        batch["rejected_teachers"] = [
            list(ex.get("rejected_teachers") or [f"negative_{i}" for i in range(len(ex["rejected"]))])
            for ex in examples
        ]
        batch[INDEX_COLUMN] = torch.tensor([int(ex.get(INDEX_COLUMN, -1)) for ex in examples], dtype=torch.long)
        if "ref_logps" in examples[0]:
            ref = torch.zeros(n, 1 + k_max)
            for b, ex in enumerate(examples):
                vals = torch.tensor([float(x) for x in ex["ref_logps"]])
                ref[b, : len(vals)] = vals
            batch["ref_logps"] = ref
        return batch


def pad_candidates(values: list[torch.Tensor], fill: float = 0.0) -> torch.Tensor:
    """Stack 1-D tensors of different lengths into ``[n, max_len]`` filled with ``fill``."""
    return pad(values, padding_value=fill, padding_side="right")


@dataclass
class SFTTruncationGuard:
    """Truncation for the SFT (learn) stage on image rows that never cuts image tokens and never silently cuts
    answers.

    Wraps TRL's ``DataCollatorForVisionLanguageModeling`` run *without* truncation (the processor would cut the
    tokenized text, image tokens included -- the forward then fails, or the row's answer is lost unnoticed), then
    cuts each batch to ``max_length`` itself: a row whose image tokens (or, with assistant-only loss, whose
    prompt) do not fit is a :class:`~cxr_max.errors.DataError` naming the row; longer rows lose the end of their
    answer, each one is counted, and past ``max_truncated_share`` of the rows seen (from the 50th on) the guard
    raises. See :func:`cxr_max.training.recipe_utils.guard_sft_truncation`.
    """

    collator: Any
    max_length: int
    max_truncated_share: float = 0.02
    image_token_id: int | None = None
    truncated: int = field(default=0, init=False)
    sequences: int = field(default=0, init=False)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        mask = batch["attention_mask"]
        lengths = mask.sum(dim=1)
        self.sequences += len(lengths)
        if batch["input_ids"].shape[1] <= self.max_length:
            return batch
        ids = batch["input_ids"]
        image = batch["mm_token_type_ids"] != 0 if "mm_token_type_ids" in batch else (
            ids == self.image_token_id if self.image_token_id is not None else torch.zeros_like(ids, dtype=torch.bool))
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        last_image = torch.where(image, positions, torch.full_like(positions, -1)).max(dim=1).values
        supervised = batch["labels"] != -100
        first_answer = torch.where(supervised.any(dim=1), supervised.float().argmax(dim=1), lengths)
        for b in range(len(lengths)):
            if last_image[b] >= self.max_length or (bool(supervised[b].any()) and first_answer[b] >= self.max_length
                                                    and not bool(supervised[b, 0])):
                raise DataError(
                    f"row needs {int(max(last_image[b] + 1, first_answer[b] + 1))} tokens before its answer starts "
                    f"(image tokens included), more than max_length={self.max_length}: truncating would cut image "
                    "tokens or the whole answer. Bound the image size (the processor's max_pixels) or raise "
                    "max_length", path="SFT batch", row=b)
        n_cut = int((lengths > self.max_length).sum())
        self.truncated += n_cut
        logger.warning("SFT: %d row(s) in this batch exceed max_length=%d and lost the end of their answer "
                       "(%d of %d so far)", n_cut, self.max_length, self.truncated, self.sequences)
        if self.sequences >= 50 and self.truncated > self.max_truncated_share * self.sequences:
            raise DataError(
                f"{self.truncated} of {self.sequences} SFT rows exceeded max_length={self.max_length} and lost the end "
                f"of their answer: more than max_truncated_share={self.max_truncated_share}. Raise max_length, bound "
                "the image size, or set --max_truncated_share 1.0 to train on cut answers anyway", path="SFT rows")
        seq_len = ids.shape[1]
        for key, value in list(batch.items()):
            if torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == seq_len:
                batch[key] = value[:, : self.max_length]
        return batch

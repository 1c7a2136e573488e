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

from cxr_max.training.shared_prefix import pack_row, pad_packed

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

    ``shared_prefix=True`` (what :class:`~cxr_max.training.APOTrainer` sets where the model supports it) collates
    each row into one packed sequence instead (see :mod:`cxr_max.training.shared_prefix`): output keys
    ``input_ids``, ``segment_ids``, ``position_ids``, ``shift_labels``, ``label_segment`` ``[B, L]``, the image
    tensors once per row, and the same per-row keys (``candidate_index`` then holds the candidate's number, ``-1``
    for none). A batch that cannot take it (rows with and without images, a prompt ending with an image token) is
    collated one sequence per candidate, with a warning, and counted in ``unshared_batches``.

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
    shared_prefix: bool = False
    truncated: int = field(default=0, init=False)
    sequences: int = field(default=0, init=False)
    truncated_rows: list = field(default_factory=list, init=False)
    unshared_batches: int = field(default=0, init=False)

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

    def _process_rows(self, row_prompts: list[str], row_images: list[list], kwargs: dict) -> dict | None:
        """The processor's output for each row's prompt (and images), one call for the batch; ``None`` when rows
        mix image and text-only prompts (the caller then processes every sequence)."""
        counts = {len(im) for im in row_images}
        has_images = any(counts)
        if has_images and 0 in counts:
            return None
        call = dict(text=row_prompts, padding_side="left", **kwargs)
        if isinstance(self.processing_class, ProcessorMixin):
            call["images"] = row_images if has_images else None
        return dict(self.processing_class(**call))

    def _check_prompt_fits(self, prompt_lengths: torch.Tensor, rows_of: list[int]) -> None:
        if self.max_length is None:
            return
        too_long = torch.nonzero(prompt_lengths >= self.max_length).flatten().tolist()
        if too_long:
            s = too_long[0]
            raise DataError(
                f"the prompt (with its image tokens) is {int(prompt_lengths[s])} tokens, leaving no room for the "
                f"completion within max_length={self.max_length}; truncating would cut image tokens or the whole "
                "answer. Bound the image size (the processor's max_pixels) or raise max_length",
                path="APO batch", row=rows_of[s])

    def _count_cuts(self, lengths: torch.Tensor, rows_of: list[int]) -> None:
        """Count the sequences longer than ``max_length`` (they lose the end of their completion); warn, and stop
        past ``max_truncated_share``."""
        cut = torch.nonzero(lengths > self.max_length).flatten().tolist()
        if not cut:
            return
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

    def _unshareable(self, examples: list[dict], once: dict) -> str | None:
        """Why this batch cannot take the shared-prefix layout (``None`` when it can): a prompt that ends with an
        image token (every candidate block starts with a copy of the prompt's last token, which must be text)."""
        mask = once["attention_mask"].bool()
        last = torch.stack([once["input_ids"][b][mask[b]][-1] for b in range(len(examples))])
        image = torch.zeros_like(last, dtype=torch.bool)
        if "mm_token_type_ids" in once:
            image |= torch.stack([once["mm_token_type_ids"][b][mask[b]][-1] for b in range(len(examples))]) != 0
        image_token = getattr(self.processing_class, "image_token_id", None)
        if image_token is not None:
            image |= last == image_token
        if bool(image.any()):
            return "a prompt ends with an image token"
        return None

    def _shared_batch(self, examples: list[dict], once: dict, done: dict, owners: list[tuple[int, int]],
                      k_max: int) -> dict:
        """The shared-prefix layout (see :mod:`cxr_max.training.shared_prefix`): one packed sequence per row."""
        n = len(examples)
        rows_of_row = [int(ex.get(INDEX_COLUMN, b)) for b, ex in enumerate(examples)]
        p_mask = once["attention_mask"].bool()
        prefixes = [once["input_ids"][b][p_mask[b]].tolist() for b in range(n)]
        types = once.get("mm_token_type_ids")
        prefix_types = [types[b][p_mask[b]].tolist() for b in range(n)] if types is not None else [None] * n
        prompt_lengths = p_mask.sum(dim=1)
        self._check_prompt_fits(prompt_lengths, rows_of_row)
        c_mask = done["attention_mask"].bool()
        comps = [done["input_ids"][s][c_mask[s]].tolist() for s in range(len(owners))]
        rows_of = [rows_of_row[b] for b, _ in owners]
        lengths = torch.tensor([int(prompt_lengths[b]) + len(c) for (b, _), c in zip(owners, comps)])
        self.sequences += len(owners)
        if self.max_length is not None:
            self._count_cuts(lengths, rows_of)
            comps = [c[: self.max_length - int(prompt_lengths[b])] for (b, _), c in zip(owners, comps)]
        per_row: list[list[list[int]]] = [[] for _ in range(n)]
        for (b, _), c in zip(owners, comps):
            per_row[b].append(c)
        packed = [pack_row(prefixes[b], per_row[b], prefix_types[b]) for b in range(n)]
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        tensors = pad_packed(packed, pad_id)
        batch = {k: v for k, v in once.items() if k not in _TEXT_KEYS}
        batch.update(input_ids=tensors["input_ids"], segment_ids=tensors["segment_ids"],
                     position_ids=tensors["position_ids"], shift_labels=tensors["shift_labels"],
                     label_segment=tensors["label_segment"])
        if types is not None:
            batch["mm_token_type_ids"] = tensors["types"]
        candidate_index = torch.full((n, 1 + k_max), -1, dtype=torch.long)
        for b, j in owners:
            candidate_index[b, j] = j
        return self._row_fields(examples, batch, candidate_index)

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
        row_of_seq = torch.tensor([b for b, _ in owners])
        first_seq = [owners.index((b, 0)) for b in range(len(examples))]
        # Every row has the same prompt for all its candidates, so the prompt and its images are processed once
        # per row (one image-processor call per image, not 1 + K) and, on the per-candidate path, repeated.
        once = self._process_rows([prompts[i] for i in first_seq], [images[i] for i in first_seq], kwargs)
        done = self.processing_class(text=completions, padding_side="right", **kwargs)
        if self.shared_prefix:
            reason = "rows with and without images" if once is None else self._unshareable(examples, once)
            if reason is None:
                return self._shared_batch(examples, once, done, owners, k_max)
            self.unshared_batches += 1
            logger.warning("APO collator: batch of rows %s collated one sequence per candidate, not with the shared "
                           "prefix (%s; %d such batch(es) so far)",
                           [int(ex.get(INDEX_COLUMN, b)) for b, ex in enumerate(examples)], reason,
                           self.unshared_batches)
        processed = None
        if once is not None:
            n_per_row = [len(images[i]) for i in first_seq]
            processed = _repeat_rows(once, n_per_row, row_of_seq)
        if processed is None:
            call = dict(text=prompts, padding_side="left", **kwargs)
            if is_processor:
                call["images"] = images if has_images else None
            processed = self.processing_class(**call)

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
        self._check_prompt_fits(prompt_mask.sum(dim=1), rows_of)
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            self._count_cuts(lengths, rows_of)
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
        return self._row_fields(examples, batch, candidate_index)

    def _row_fields(self, examples: list[dict], batch: dict, candidate_index: torch.Tensor) -> dict:
        """The per-row keys of both layouts: candidate map, negative mask and weights, teachers, index, ref."""
        n, k_max = candidate_index.shape[0], candidate_index.shape[1] - 1
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


_TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def _repeat_rows(once: dict, images_per_row: list[int], row_of_seq: torch.Tensor) -> dict | None:
    """Per-row processor outputs repeated for every candidate sequence of their row.

    Text tensors are ``[rows, ...]``; image tensors are per image (``[n_images, ...]``, e.g. LLaVA's
    ``pixel_values``) or, with an ``image_grid_thw``, per patch (Qwen2-VL-style ``pixel_values``, ``t * h * w``
    rows per image). ``None`` when a tensor fits none of these layouts (the caller processes every sequence).
    """
    n_rows = len(images_per_row)
    starts = [sum(images_per_row[:b]) for b in range(n_rows)]
    image_of_seq = torch.tensor([i for b in row_of_seq.tolist() for i in range(starts[b], starts[b] + images_per_row[b])],
                                dtype=torch.long)
    n_images = sum(images_per_row)
    grid = once.get("image_grid_thw")
    out = {}
    for key, value in once.items():
        if not torch.is_tensor(value):
            out[key] = value
        elif key in _TEXT_KEYS:
            if value.shape[0] != n_rows:
                return None
            out[key] = value.index_select(0, row_of_seq)
        elif grid is not None and key == "pixel_values":
            patches = grid.prod(dim=-1).tolist()
            if sum(patches) != value.shape[0]:
                return None
            chunks = value.split(patches)
            out[key] = torch.cat([chunks[i] for i in image_of_seq.tolist()]) if len(image_of_seq) else value[:0]
        elif value.shape[0] == n_images:
            out[key] = value.index_select(0, image_of_seq)
        elif value.shape[0] == n_rows:
            out[key] = value.index_select(0, row_of_seq)
        else:
            return None
    return out


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

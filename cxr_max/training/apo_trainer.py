"""``APOTrainer``: multi-negative Plackett-Luce preference optimisation on top of ``trl.DPOTrainer``.

trl 1.16 has no listwise loss, and its ``DPOTrainer._compute_loss`` is pairwise; the supported extension point
is to subclass, override ``compute_loss`` and bring a collator (docs/libraries.md, "trl"). This trainer keeps
everything else of ``DPOTrainer``: model loading, PEFT (reference = adapter disabled), the frozen reference
copy, DeepSpeed/FSDP preparation, the fused LM head (per-token log-probs without materialising the logits),
metrics logging and checkpointing.

Rows (``datasets.Dataset``), text-only or with images::

    {"images": [PIL.Image] (optional), "prompt": [messages] or str, "chosen": [messages] or str,
     "rejected": [[messages], ...] or [str, ...], "rejected_teachers": [str, ...] (optional),
     "rejected_weights": [float, ...] (optional)}

Reference model, in order of precedence: ``ref_model`` passed in or ``APOConfig.ref_model_path`` (frozen copy,
loaded in the policy's dtype and attention implementation, no device map); ``precompute_ref_log_probs=True``
(log-probs computed once by the starting policy -- or by the given reference -- and cached to parquet, so the
critique stage holds one model); a PEFT policy (adapter disabled); otherwise a copy of the policy's checkpoint.
A resumed full fine-tune must pass the *learn* model as ``ref_model``/``ref_model_path`` (the recipes do: see
``cxr_max.training.recipe_utils.run_stage``), or the copy would be the checkpoint being resumed.

TRL internals this subclass relies on (``trl`` is pinned to the tested minor release; ``tests/test_trl_contract.py``
fails naming the internal when a new TRL changes one): ``DPOTrainer._precompute_ref_logps`` (overridden, called
by ``DPOTrainer.__init__``), ``_precompute_model_hash`` and ``_precompute_engine`` (set by ``__init__``),
``_metrics`` (``{"train"|"eval": defaultdict(list)}``, averaged by ``log``), the fused LM head
(``model(..., labels=, fused_lm_head=True).log_probs``; with ``shift_labels=`` for the shared-prefix layout),
``trl.models.prepare_deepspeed`` and ``loss_is_scaled_for_ga = False`` (the loss is per micro-batch; ``Trainer``
scales it for gradient accumulation).

Shared prefix (``APOConfig.shared_prefix``, default on where supported): each row's prompt and image are forwarded
once for all its candidates, in one packed sequence with a block mask (:mod:`cxr_max.training.shared_prefix`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate.utils import broadcast_object_list, is_peft_model
from datasets import Dataset, IterableDataset
from datasets.fingerprint import Hasher
from rich.progress import Progress
from torch.utils.data import DataLoader
from transformers import AutoProcessor, PreTrainedModel
from trl import DPOTrainer
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import create_model_from_path, get_config_model_id, use_adapter

from cxr_max.errors import DataError, SkipLog, logger
from cxr_max.training.apo_config import APOConfig
from cxr_max.training.collator import IMAGES_COLUMN, INDEX_COLUMN, DataCollatorForAPO
from cxr_max.training.loss import apo_loss_terms
from cxr_max.training.shared_prefix import (
    block_attention_mask,
    candidate_sums,
    find_rope_index,
    mrope_positions,
    shared_prefix_support,
)

_NON_MODEL_KEYS = {
    "completion_mask", "candidate_index", "negative_mask", "negative_weights", "rejected_teachers",
    "ref_logps", INDEX_COLUMN, "segment_ids", "label_segment", "shift_labels", "position_ids",
}


def _completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the text parts of a list of messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "".join(parts)


def _agreement_order(agreement: list | None, keep: list[int]) -> list[int]:
    """``keep`` sorted by agreement with the consensus, highest first (``None`` = unknown, last; stable)."""
    def key(i):
        a = agreement[i] if agreement is not None and i < len(agreement) else None
        return -float("inf") if a is None or a != a else float(a)

    return sorted(keep, key=key, reverse=True)


def validate_apo_rows(dataset: Dataset | IterableDataset, args: APOConfig, name: str = "train",
                      skips: SkipLog | None = None) -> Dataset | IterableDataset:
    """Check and normalise APO rows; returns the dataset with ``apo_index`` and complete teacher/weight columns.

    With ``ranking="full"`` and ``full_ranking_by="rejected_agreement"`` each row's negatives are reordered by
    their agreement with the consensus (the compare stage's ``rejected_agreement``), highest first, so the full
    Plackett-Luce likelihood trains positive > closest teacher > ... > farthest teacher; rows without that column
    are an error (``full_ranking_by="given"`` trusts the rows' own order).

    Bad rows (no negatives, an empty completion, more than ``max_negatives`` negatives without
    ``truncate_negatives``, teacher/weight lists of the wrong length, every negative identical to the positive)
    raise :class:`~cxr_max.errors.DataError` naming the dataset and row, or under ``on_error="skip"`` are
    dropped and counted in ``skips``. Negatives identical to the positive are removed from their row and counted.
    """
    skips = skips if skips is not None else SkipLog()
    where = f"{name} dataset"

    def fix(row: dict, idx: int) -> dict:
        rejected = row.get("rejected")
        out = {INDEX_COLUMN: idx, "apo_drop": False}
        k = len(rejected) if isinstance(rejected, list) else 0
        teachers = list(row.get("rejected_teachers") or [f"negative_{i}" for i in range(k)])
        weights = row.get("rejected_weights")
        weights = [1.0] * k if weights is None or (len(weights) == 0 and k) else [float(w) for w in weights]
        problem = None
        if not isinstance(rejected, list) or k == 0:
            problem = "row has no negatives (rejected is empty)"
        elif len(teachers) != k or len(weights) != k:
            problem = f"rejected has {k} negatives but {len(teachers)} teachers and {len(weights)} weights"
        elif not _completion_text(row.get("chosen")).strip():
            problem = "empty completion: chosen"
        else:
            empty = [i for i, r in enumerate(rejected) if not _completion_text(r).strip()]
            if empty:
                problem = f"empty completion: rejected[{empty[0]}]"
        if problem is None:
            chosen_text = _completion_text(row["chosen"]).strip()
            keep = [i for i, r in enumerate(rejected) if _completion_text(r).strip() != chosen_text]
            if len(keep) < k:
                skips.add("negative identical to the positive (negative dropped)", f"{where}:{idx}")
            if not keep:
                problem = "every negative is identical to the positive"
            elif order_by_agreement and all(a is None or a != a for a in (row.get("rejected_agreement") or [])):
                problem = ("ranking='full' orders negatives by rejected_agreement, but this row has none "
                           "(set full_ranking_by='given' if the negatives are already ordered)")
            elif len(keep) > args.max_negatives and not args.truncate_negatives:
                problem = (f"row has {len(keep)} negatives, more than max_negatives={args.max_negatives} "
                           "(set truncate_negatives=True to keep the first max_negatives)")
            else:
                if order_by_agreement:
                    keep = _agreement_order(row.get("rejected_agreement"), keep)
                if len(keep) > args.max_negatives:
                    skips.add(f"negatives truncated to max_negatives={args.max_negatives}", f"{where}:{idx}")
                    keep = keep[: args.max_negatives]
                out.update(rejected=[rejected[i] for i in keep], rejected_teachers=[teachers[i] for i in keep],
                           rejected_weights=[weights[i] for i in keep])
                return out
        if args.on_error == "raise":
            raise DataError(problem, path=where, row=idx)
        skips.add(problem, f"{where}:{idx}")
        out.update(apo_drop=True, rejected=rejected if k else [], rejected_teachers=teachers[:k] if k else [],
                   rejected_weights=weights[:k] if k else [])
        if len(out["rejected_teachers"]) != len(out["rejected"]):  # keep the columns' lengths consistent
            out["rejected_teachers"] = [f"negative_{i}" for i in range(k)]
            out["rejected_weights"] = [1.0] * k
        return out

    order_by_agreement = args.ranking == "full" and args.full_ranking_by == "rejected_agreement"
    columns = [c for c in ("prompt", "chosen", "rejected", "rejected_teachers", "rejected_weights",
                           *(("rejected_agreement",) if order_by_agreement else ()))
               if c in (dataset.column_names or [])]
    if "rejected" not in columns or "chosen" not in columns or "prompt" not in columns:
        raise DataError(f"APO rows need prompt, chosen and rejected columns; got {dataset.column_names}", path=where)
    if order_by_agreement and "rejected_agreement" not in columns:
        raise DataError("ranking='full' orders each row's negatives by their agreement with the consensus, but the "
                        "rows have no rejected_agreement column (the compare stage's preferences.jsonl has it); set "
                        "full_ranking_by='given' if the negatives are already ordered best to worst", path=where)
    kwargs = {}
    if isinstance(dataset, Dataset):
        # the fingerprint (part of the reference cache's) depends on the data and the options that change rows,
        # not on the whole config: a resumed run (other max_steps, resume_from_checkpoint) reuses its cache
        options = (args.max_negatives, args.truncate_negatives, args.on_error, args.ranking, args.full_ranking_by)
        kwargs = {"desc": f"Validating {name} APO rows",
                  "new_fingerprint": Hasher.hash((dataset._fingerprint, options, "validate_apo_rows/1"))}

    def fix_input(*values_and_idx):
        *values, idx = values_and_idx
        return fix(dict(zip(columns, values)), idx)

    dataset = dataset.map(fix_input, input_columns=columns, with_indices=True, **kwargs)
    dataset = dataset.filter(lambda drop: not drop, input_columns=["apo_drop"]).remove_columns("apo_drop")
    if skips.total:
        logger.warning("APO %s: %s", where, skips.summary())
    return dataset


class APOTrainer(DPOTrainer):
    """Trainer for APO (multi-negative Plackett-Luce preference optimisation), a ``trl.DPOTrainer`` subclass.

    Args are those of ``trl.DPOTrainer`` with an :class:`APOConfig`. ``data_collator`` defaults to
    :class:`~cxr_max.training.collator.DataCollatorForAPO`. ``skips`` (a :class:`SkipLog`) collects the
    counted bad rows and dropped negatives of all datasets; see ``APOConfig.on_error``.

    Logged metrics: ``loss``, ``rewards/chosen``, ``rewards/rejected`` (mean over negatives),
    ``rewards/margins``, ``rewards/accuracies`` (positive beats every negative), ``rewards/teacher/<name>`` and
    ``win_rate/<name>`` (positive beats that teacher's negative), ``logps/chosen``, ``logps/rejected``,
    ``truncated_sequences``.
    """

    _tag_names = ["trl", "apo", "cxr_max"]
    _name = "APO"
    # compute_loss returns the mean over the micro-batch's prompts: Trainer divides it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, model, ref_model=None, args: APOConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = APOConfig(f"{str(name).rstrip('/').split('/')[-1]}-APO")
        if not isinstance(args, APOConfig):
            raise TypeError(f"APOTrainer needs an APOConfig, got {type(args).__name__}")
        self.skips = SkipLog()
        if ref_model is None and args.ref_model_path:
            ref_model = self._load_reference(args.ref_model_path, args, None if isinstance(model, str) else model)
        # DPOTrainer treats datasets with an "images" column as vision datasets and refuses precomputed reference
        # log-probs for them; our collator handles images itself, so the column travels under another name.
        train_dataset = self._rename_images(train_dataset)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._rename_images(v) for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._rename_images(eval_dataset)
        if processing_class is None:
            source = model if isinstance(model, str) else get_config_model_id(model.config)
            processing_class = AutoProcessor.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        tok = getattr(processing_class, "tokenizer", processing_class)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.shared_prefix = self._resolve_shared_prefix(model, ref_model, args)
        if data_collator is None:
            data_collator = DataCollatorForAPO(processing_class, max_length=args.max_length,
                                               max_truncated_share=args.max_truncated_share,
                                               shared_prefix=self.shared_prefix)
        elif isinstance(data_collator, DataCollatorForAPO):
            data_collator.shared_prefix = self.shared_prefix
        self._teacher_metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        super().__init__(model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        if ref_model is not None and ref_model.config.get_text_config().vocab_size != \
                self.model.config.get_text_config().vocab_size:
            raise DataError(
                f"reference vocabulary ({ref_model.config.get_text_config().vocab_size}) does not match the "
                f"policy's ({self.model.config.get_text_config().vocab_size})",
                path=args.ref_model_path or "ref_model",
            )
        if args.precompute_ref_log_probs and self.ref_model is not None and not self.is_fsdp_enabled:
            # every reference log-prob is cached in the datasets: the frozen copy is not needed for training
            self.ref_model = None
        if self.skips.total:
            print(f"APO data: {self.skips.summary()}")

    # ----------------------------------------------------------------- setup
    @staticmethod
    def _resolve_shared_prefix(model, ref_model, args: APOConfig) -> bool:
        """Whether the shared-prefix forward runs: ``APOConfig.shared_prefix`` (``None`` = wherever supported)
        checked against the policy's (and a given reference's) model type and attention implementation."""
        if args.shared_prefix is False:
            return False
        if isinstance(model, str):
            from transformers import AutoConfig

            kwargs = dict(args.model_init_kwargs or {})
            config = AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code)
            reason = shared_prefix_support(config, kwargs.get("attn_implementation") or "sdpa")
        else:
            reason = shared_prefix_support(model.config)
        if reason is None and ref_model is not None:
            reason = shared_prefix_support(ref_model.config)
            reason = None if reason is None else f"reference model: {reason}"
        if reason is None:
            return True
        if args.shared_prefix:
            raise ValueError(f"APOConfig(shared_prefix=True) cannot run: {reason}")
        message = (f"APO: shared-prefix forward off ({reason}); every candidate forwards its own copy of the prompt "
                   "and image")
        logger.warning(message)
        return False

    @staticmethod
    def _rename_images(dataset):
        if dataset is None:
            return None
        cols = dataset.column_names or []
        for col in ("images", "image"):
            if col in cols:
                dataset = dataset.rename_column(col, IMAGES_COLUMN)
                if col == "image":
                    dataset = dataset.map(lambda im: {IMAGES_COLUMN: [im]}, input_columns=[IMAGES_COLUMN])
        return dataset

    @staticmethod
    def _load_reference(path: str, args: APOConfig, policy: PreTrainedModel | None = None) -> PreTrainedModel:
        """The frozen reference from ``path``, built like the policy (TRL's rule for its own copy): the policy's
        dtype and attention implementation, and no device map (``device_map="auto"`` would spread a copy over all
        GPUs on every rank; the trainer places the reference itself)."""
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise DataError("reference checkpoint not found (no config.json); pass the learn-stage output folder",
                            path=path)
        kwargs = dict(args.model_init_kwargs or {})
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        if policy is not None:
            kwargs["dtype"] = policy.dtype
            kwargs["attn_implementation"] = policy.config._attn_implementation
        kwargs.setdefault("dtype", "auto")
        kwargs["device_map"] = None
        return create_model_from_path(str(folder), **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if INDEX_COLUMN in (dataset.column_names or []):
            return dataset
        return validate_apo_rows(dataset, args, dataset_name, self.skips)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "chosen", "rejected", "rejected_teachers", "rejected_weights",
                                       IMAGES_COLUMN, "ref_logps", INDEX_COLUMN]

    # ------------------------------------------------------------ log-probs
    def _sequence_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs per sequence ``[S]`` and completion-token counts ``[S]``."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.shape[1] - 1
        per_token = outputs.log_probs[:, -seq_len:]
        return per_token.sum(dim=1), completion_mask[:, 1:].sum(dim=1)

    def _shared_prefix_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs ``[B, 1 + K]`` and token counts of a shared-prefix batch: one packed sequence
        per row, block mask, positions continuing from the prompt (M-RoPE for Qwen2.5-VL), image encoded once."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        segments = inputs["segment_ids"]
        config = next((m.config for m in model.modules() if isinstance(m, PreTrainedModel)), None)
        text_config = config.get_text_config() if config is not None else None
        attn = getattr(text_config, "_attn_implementation", None) or "sdpa"
        model_kwargs["attention_mask"] = block_attention_mask(segments, boolean=attn != "eager")
        rope_index = find_rope_index(model) if "image_grid_thw" in inputs else None
        if rope_index is not None and "mm_token_type_ids" in inputs:
            model_kwargs["position_ids"] = mrope_positions(
                rope_index, inputs["input_ids"], segments, inputs["position_ids"], inputs["mm_token_type_ids"],
                inputs["image_grid_thw"], inputs.get("video_grid_thw"))
        else:
            model_kwargs["position_ids"] = inputs["position_ids"]
        model_kwargs["use_cache"] = False
        outputs = model(**model_kwargs, shift_labels=inputs["shift_labels"], fused_lm_head=True)
        return candidate_sums(outputs.log_probs, inputs["label_segment"], inputs["candidate_index"].shape[1])

    def _candidate_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs ``[B, 1 + K]`` and completion-token counts (0 where a row has no such
        candidate), through the shared-prefix forward when the batch has that layout."""
        if "segment_ids" in inputs:
            return self._shared_prefix_logps(model, inputs)
        logps, counts = self._sequence_logps(model, inputs)
        cand = inputs["candidate_index"]
        return self._by_candidate(logps, cand), self._by_candidate(counts, cand)

    @staticmethod
    def _by_candidate(values: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
        """Scatter per-sequence values ``[S]`` into ``[B, 1 + K]`` (0 where a row has no such candidate)."""
        idx = candidate_index.to(values.device)
        gathered = values[idx.clamp(min=0)]
        return torch.where(idx >= 0, gathered, torch.zeros_like(gathered))

    def _reference_context(self):
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        return contextlib.nullcontext()

    def _reference_logps(self, inputs: dict) -> torch.Tensor:
        if "ref_logps" in inputs:
            return inputs["ref_logps"].to(self.accelerator.device)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self.ref_model is not None:
                logps, _ = self._candidate_logps(self.ref_model, inputs)
            elif is_peft_model(self.model):
                with self._reference_context():
                    logps, _ = self._candidate_logps(self.model, inputs)
            else:
                raise RuntimeError("APOTrainer has no reference: pass ref_model, ref_model_path, a PEFT policy, "
                                   "or precompute_ref_log_probs=True")
        return logps

    # -------------------------------------------------- precomputed reference
    def _ref_cache_path(self, name: str) -> Path:
        if self.args.ref_logps_path:
            p = Path(self.args.ref_logps_path)
            return p if name == "train" else p.with_name(f"{p.stem}_{name}{p.suffix or '.parquet'}")
        return Path(self.args.output_dir) / f"ref_logps_{name}.parquet"

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """Reference log-probs of every candidate, computed once by the starting model and cached to parquet.

        Keeps TRL's safeguards: rank 0's cache fingerprint is broadcast (under ZeRO-3 every rank hashes its own
        shard), the forwards run under ``accelerator.autocast()``, and under DeepSpeed through one inference engine
        (:meth:`_precompute_model`).
        """
        if isinstance(dataset, IterableDataset):
            raise ValueError("precompute_ref_log_probs=True needs a map-style Dataset, not an IterableDataset")
        fingerprint = [Hasher.hash((dataset._fingerprint, self._precompute_model_hash))]
        broadcast_object_list(fingerprint, from_process=0)
        fingerprint = fingerprint[0]
        path = self._ref_cache_path(name)
        if not path.is_file():
            self._write_ref_cache(dataset, name, batch_size, path, fingerprint)
        self.accelerator.wait_for_everyone()
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        stored = meta.get(b"fingerprint", b"").decode()
        if stored != fingerprint or table.num_rows != len(dataset):
            raise DataError(
                f"cached reference log-probs do not match this model and dataset (fingerprint {stored or 'none'} "
                f"vs {fingerprint}, {table.num_rows} vs {len(dataset)} rows); delete the file or set ref_logps_path",
                path=str(path),
            )
        by_index = dict(zip(table.column(INDEX_COLUMN).to_pylist(), table.column("ref_logps").to_pylist()))
        missing = [i for i in dataset[INDEX_COLUMN] if i not in by_index]
        if missing:
            raise DataError(f"cached reference log-probs lack row {missing[0]}", path=str(path))
        values = [by_index[i] for i in dataset[INDEX_COLUMN]]
        if "ref_logps" in dataset.column_names:
            dataset = dataset.remove_columns("ref_logps")
        return dataset.add_column("ref_logps", values)

    def _precompute_model(self):
        """The model the reference forwards of the precompute run through.

        The frozen reference when there is one, else the policy. The precompute runs before ``Trainer`` prepares
        the policy, so under DeepSpeed its parameters are still on the CPU (ZeRO-1/2) or sharded (ZeRO-3): then
        the policy is wrapped once in a DeepSpeed inference engine (``trl.models.prepare_deepspeed``, as TRL's own
        precompute does) and the engine is reused by every later precompute pass.
        """
        if self.ref_model is None and self.is_deepspeed_enabled:
            if getattr(self, "_precompute_engine", None) is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            return self._precompute_engine
        return self.ref_model or self.model

    def _write_ref_cache(self, dataset, name, batch_size, path: Path, fingerprint: str) -> None:
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False,
                            num_workers=self.args.dataloader_num_workers)
        loader = self.accelerator.prepare(loader)
        model = self._precompute_model()
        width = 1 + self.args.max_negatives
        indices, counts, rows = [], [], []
        with Progress(disable=not self.accelerator.is_main_process) as progress:
            task = progress.add_task(f"Reference log-probs ({name})", total=len(loader))
            for batch in loader:
                with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), \
                        self._reference_context(), self.accelerator.autocast():
                    logps, _ = self._candidate_logps(model, batch)
                cand = batch["candidate_index"].to(logps.device)
                ref = torch.where(cand >= 0, logps.float(), torch.zeros_like(logps, dtype=torch.float))
                padded = torch.zeros((ref.shape[0], width), device=ref.device)  # explicit counts, no sentinel
                padded[:, : ref.shape[1]] = ref
                n = (cand >= 0).sum(dim=1)
                idx, n, padded = self.accelerator.gather_for_metrics((batch[INDEX_COLUMN].to(ref.device), n, padded))
                indices.extend(idx.cpu().tolist())
                counts.extend(n.cpu().tolist())
                rows.extend(padded.cpu().tolist())
                progress.advance(task)
        values = [row[:n] for row, n in zip(rows, counts)]
        for i, row in zip(indices, values):
            bad = [j for j, v in enumerate(row) if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(
                    f"reference log-prob of candidate {bad[0]} (0 = chosen) is {row[bad[0]]} in {name} dataset row "
                    f"{i}: the reference model produces non-finite values on this row; check the row and the model")
        if self.accelerator.is_main_process:
            table = pa.table({INDEX_COLUMN: pa.array(indices, pa.int64()),
                              "ref_logps": pa.array(values, pa.list_(pa.float32()))})
            table = table.replace_schema_metadata({"fingerprint": fingerprint})
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, path)

    # ------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """``DPOTrainer.evaluate`` for APO rows, including rows with images (``images``/``image`` columns are
        renamed as for the datasets given at construction)."""
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._rename_images(v) for k, v in eval_dataset.items()}
        elif eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._rename_images(eval_dataset)
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                metric_key_prefix=metric_key_prefix)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation step: ``(loss, rewards, negative_mask)``.

        With ``compute_metrics`` the ``EvalPrediction`` holds ``predictions`` = the implicit rewards ``[N, 1 + K]``
        (column 0 the positive) and ``label_ids`` = which negatives exist (``1``/``0``; ``-100`` where batches of
        different ``K`` were padded together), e.g. ``(pred[:, :1] > np.where(labels == 1, pred[:, 1:], -inf))``.
        """
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, outputs["rewards"].detach(), inputs["negative_mask"].long()

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One forward over all ``sum_b (1 + K_b)`` candidates (one packed sequence per row with the shared prefix),
        then the APO loss (see ``loss.py``)."""
        mode = "train" if self.model.training else "eval"
        policy, counts = self._candidate_logps(model, inputs)
        cand = inputs["candidate_index"]
        reference = self._reference_logps(inputs)
        mask = inputs["negative_mask"].to(policy.device)
        reference = torch.where(cand.to(policy.device) >= 0, reference.to(policy.dtype), torch.zeros_like(policy))
        weights = inputs["negative_weights"] if self.args.use_negative_weights else None
        pos_counts = counts[:, 0]
        out = apo_loss_terms(policy, reference, beta=self.beta, negative_weights=weights, negative_mask=mask,
                             ranking=self.args.ranking, nll_weight=self.args.nll_weight,
                             positive_token_counts=pos_counts)
        loss = out.loss
        if not torch.isfinite(loss):
            rows = inputs[INDEX_COLUMN].tolist()
            raise FloatingPointError(
                f"APO loss is {loss.item()} at global step {self.state.global_step} ({mode}), batch of dataset "
                f"rows {rows}; policy log-probs {policy.detach().tolist()}, reference {reference.tolist()}. "
                "Lower the learning rate or check these rows."
            )
        self._log_apo_metrics(mode, out, policy.detach(), mask, inputs["rejected_teachers"])
        if return_outputs:
            return loss, {"rewards": out.rewards}
        return loss

    def _log_apo_metrics(self, mode, out, policy, mask, teachers) -> None:
        acc = self.accelerator
        r = out.rewards
        chosen = r[:, 0]
        neg = r[:, 1:]
        n_valid = mask.sum(dim=1).clamp(min=1)
        mean_neg = torch.where(mask, neg, torch.zeros_like(neg)).sum(1) / n_valid
        max_neg = torch.where(mask, neg, torch.full_like(neg, float("-inf"))).max(1).values
        stats = torch.stack([chosen, mean_neg, chosen - mean_neg, (chosen > max_neg).float(), policy[:, 0],
                             torch.where(mask, policy[:, 1:], torch.zeros_like(neg)).sum(1) / n_valid], dim=1)
        stats = acc.gather_for_metrics(stats)
        names = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                 "logps/rejected"]
        for i, key in enumerate(names):
            self._metrics[mode][key].extend(stats[:, i].tolist())
        if "nll" in out.metrics:
            self._metrics[mode]["nll"].append(out.metrics["nll"])
        per_teacher = []
        for b, names_b in enumerate(teachers):
            for j, teacher in enumerate(names_b):
                if mask[b, j]:
                    per_teacher.append((teacher, float(neg[b, j]), float(chosen[b] > neg[b, j])))
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            per_teacher = gather_object(per_teacher)
        for teacher, reward, win in per_teacher:
            self._metrics[mode][f"rewards/teacher/{teacher}"].append(reward)
            self._metrics[mode][f"win_rate/{teacher}"].append(win)
        collator = self.data_collator
        if isinstance(collator, DataCollatorForAPO) and collator.sequences:
            self._metrics[mode]["truncated_sequences"] = [float(collator.truncated)]

"""Small helpers shared by the learn / critique / DPO-baseline recipes (kept here so the scripts stay thin)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cxr_max.errors import SkipLog

logger = logging.getLogger("cxr_max")


def load_rows(dataset_path: str | None, config: str, split: str, **builder_kwargs):
    """Rows for a recipe: a local JSON/JSONL/parquet file (or folder) of ready rows, else the cxr_max builder.

    ``builder_kwargs`` with value ``None`` are dropped, so the builder's own defaults apply.
    """
    from datasets import load_dataset as hf_load

    if dataset_path:
        p = Path(dataset_path)
        if not p.exists():
            raise FileNotFoundError(f"dataset_path {dataset_path} does not exist")
        files = sorted(str(f) for f in p.rglob("*") if f.suffix in (".json", ".jsonl", ".parquet")) if p.is_dir() \
            else [str(p)]
        if not files:
            raise FileNotFoundError(f"no .json/.jsonl/.parquet files under {dataset_path}")
        kind = "parquet" if files[0].endswith(".parquet") else "json"
        return hf_load(kind, data_files=files, split="train")
    import cxr_max

    kwargs = {k: v for k, v in builder_kwargs.items() if v is not None}
    return cxr_max.load_dataset(config, split=split, **kwargs)


def trajectory_texts(dataset, columns=("messages", "prompt", "chosen", "rejected")) -> list[str]:
    """Every text in the rows' message columns (the tokenizer corpus for the tiny student)."""
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            if isinstance(value.get("content"), (str, list)):
                walk(value["content"])
            elif value.get("type") == "text":
                texts.append(value.get("text") or "")
        elif isinstance(value, list):
            for v in value:
                walk(v)

    present = [c for c in columns if c in dataset.column_names]
    for row in dataset.select_columns(present):
        walk(list(row.values()))
    return texts


def drop_refusals(dataset, skips: SkipLog | None = None):
    """Remove SFT rows whose assistant turn is a refusal (``is_refusal``); the count goes to ``skips``."""
    from cxr_max.trajectories.parse import assistant_text, is_refusal

    keep = [not is_refusal(assistant_text(m)) for m in dataset["messages"]]
    n = len(keep) - sum(keep)
    if n and skips is not None:
        skips.counts["refusal, excluded (include_refusals=False)"] += n
    return dataset.select([i for i, k in enumerate(keep) if k]) if n else dataset


def load_policy(path: str, model_args=None, training_args=None):
    """Load a model folder or Hub id model-agnostically: a VLM through ``AutoModelForImageTextToText``, a text
    model through ``AutoModelForCausalLM``. ``model_args`` (trl ``ModelConfig``) supplies dtype and attention."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"trust_remote_code": bool(getattr(training_args, "trust_remote_code", False))}
    if model_args is not None:
        if model_args.attn_implementation:
            kwargs["attn_implementation"] = model_args.attn_implementation
        dtype = model_args.dtype
        if dtype not in (None, "auto"):
            kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if training_args is not None and getattr(training_args, "use_cpu", False):
        kwargs["dtype"] = torch.float32
    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
    is_vlm = config.get_text_config() is not config
    cls = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    return cls.from_pretrained(path, **kwargs)


def load_processing(path: str, trust_remote_code: bool = False):
    """The processor (VLM) or tokenizer (text model) saved with a model."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if config.get_text_config() is not config:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def resolve_resume(training_args) -> str | bool | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``true``/``last`` for the newest one in output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        return None
    if value is True or str(value).lower() in ("true", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in "
                                    f"{training_args.output_dir}")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return str(value)


def policy_source(model_path: str, resume: str | None) -> str:
    """Where to load the policy from: the resumed checkpoint when it holds a full model, else ``model_path``.

    transformers 5 saves some VLMs (LLaVA) in their original key layout, and ``Trainer``'s resume reloads the
    state dict without converting it back (every key is reported missing, the weights stay as loaded). Loading
    the policy from the checkpoint with ``from_pretrained`` (which converts) makes the resume exact; the
    optimizer, scheduler and RNG states are still restored by ``Trainer``.
    """
    if resume and (Path(resume) / "config.json").is_file():
        return str(resume)
    return model_path


STAGES_FILE = "training_stages.json"
STAGE_DESCRIPTIONS = {
    "align": "Feature alignment: SFT on captions of the findings each teacher reported (vision side from scratch).",
    "learn": "Supervised bootstrapping: SFT on the union of all teachers' trajectories (refusals excluded).",
    "critique": "APO: Plackett-Luce preference optimisation, consensus positive against every teacher's trajectory.",
    "dpo": "The authors' released recipe: pairwise DPO on (consensus, teacher) pairs.",
}
_STAGE_HPARAMS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "warmup_steps", "lr_scheduler_type", "max_length", "beta",
                  "loss_type", "ranking", "max_negatives", "use_negative_weights", "seed", "bf16")


def save_final(trainer, processing_class, output_dir: str, merge_lora: bool = True, *, stage: str | None = None,
               source: str | None = None) -> str:
    """Save the trained model (LoRA merged into the base when ``merge_lora``) and its processor; return the path.

    With ``stage``, also record the training lineage the model card needs: ``training_stages.json`` (the
    stages of ``source``, the folder this stage started from, plus this one, with its hyperparameters
    and the base model) and ``all_results.json`` (this stage's final training metrics).
    """
    import json

    from accelerate.utils import is_peft_model

    model = trainer.accelerator.unwrap_model(trainer.model)
    if merge_lora and is_peft_model(model):
        model = model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            model.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        processing_class.save_pretrained(output_dir)
        if stage is not None:
            previous = Path(source or "") / STAGES_FILE
            stages = json.loads(previous.read_text()) if source and previous.is_file() else []
            args = trainer.args
            hp = {k: getattr(args, k) for k in _STAGE_HPARAMS if getattr(args, k, None) is not None}
            hp["model_name_or_path"] = source
            optimizer = getattr(trainer, "optimizer_cls_and_kwargs", None)
            if optimizer and "vision_lr" in optimizer[1]:
                hp["vision_lr"] = optimizer[1]["vision_lr"]
            stages.append({"name": stage, "description": STAGE_DESCRIPTIONS.get(stage, stage), "hyperparameters": hp})
            (Path(output_dir) / STAGES_FILE).write_text(json.dumps(stages, indent=2, default=str))
            final = next((h for h in reversed(trainer.state.log_history) if "train_loss" in h), {})
            trainer.save_metrics("train", {k: v for k, v in final.items() if isinstance(v, (int, float))}, combined=True)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def take_hub_push(training_args) -> dict | None:
    """Take ``--push_to_hub`` away from ``Trainer`` and return what to push at the end instead.

    Trainer would push every checkpoint with a card whose base model is ``None``; cxr_max pushes the
    final model once, private by default, with its own card (:func:`cxr_max.hub.push_checkpoint`).
    """
    if not getattr(training_args, "push_to_hub", False):
        return None
    request = {
        "repo_id": training_args.hub_model_id or Path(training_args.output_dir).name,
        "private": training_args.hub_private_repo is not False,
    }
    training_args.push_to_hub = False
    return request


def push_if_requested(request: dict | None, folder: str, *, datasets=("cxr_max-synthetic",), endpoint: str | None = None):
    """Push ``folder`` with :func:`cxr_max.hub.push_checkpoint` when :func:`take_hub_push` asked for it.

    The base model is the first stage's starting checkpoint (a Hub id such as
    ``Qwen/Qwen2.5-VL-7B-Instruct``); a student built offline has none, and the push says so.
    """
    if request is None:
        return
    import json

    from cxr_max.hub import push_checkpoint

    stages = json.loads((Path(folder) / STAGES_FILE).read_text())
    base = stages[0]["hyperparameters"].get("model_name_or_path") if stages else None
    plan = push_checkpoint(folder, request["repo_id"], private=request["private"], base_model=base,
                           datasets=list(datasets), endpoint=endpoint)
    print(f"pushed {folder} to {request['repo_id']} ({'private' if request['private'] else 'public'})")
    return plan


def run_stage(trainer_cls, dataset, training_args, model_args, *, model_path: str, stage: str, **trainer_kwargs):
    """The part every training recipe shares: load, train (resuming if asked), save with lineage, push.

    Returns ``(output_dir, trainer)``. ``model_path`` is the checkpoint the stage starts from.
    """
    from trl import get_peft_config

    push = take_hub_push(training_args)  # one private push of the final model, with cxr_max's card
    resume = resolve_resume(training_args)
    model = load_policy(policy_source(model_path, resume), model_args, training_args)
    processing_class = load_processing(model_path, training_args.trust_remote_code)
    trainer = trainer_cls(model, args=training_args, train_dataset=dataset, processing_class=processing_class,
                          peft_config=get_peft_config(model_args), **trainer_kwargs)
    trainer.train(resume_from_checkpoint=resume)
    out = save_final(trainer, processing_class, training_args.output_dir, stage=stage, source=model_path)
    push_if_requested(push, out)
    return out, trainer

"""Critique: APO (multi-negative Plackett-Luce preference optimisation) from the learn checkpoint (stage 3).

    python recipes/critique.py --config recipes/configs/critique_tiny.yaml \
        --model_name_or_path outputs/learn --preferences outputs/compare
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/critique.py \
        --config recipes/configs/critique_qwen25vl_7b.yaml --model_name_or_path outputs/learn

Rows: ``--dataset_name`` (:mod:`cxr_max.stages.data`), by default the cxr_max builder's ``apo`` config (prompt,
chosen = consensus, rejected = the teachers' trajectories, their names and drift-aware weights), or an export
folder, rows file (``<compare output>/preferences.jsonl``) or Hub dataset. The reference is the learn
checkpoint itself: with ``--precompute_ref_log_probs`` (the tiny default) its log-probs are computed once and
cached, so only one model is held; with ``--use_peft`` the adapter is disabled for the reference; otherwise a
frozen copy is loaded. Resuming a full fine-tune (``--resume_from_checkpoint``) keeps the learn checkpoint as
the reference. A builder run without ``--data_dir`` reads the embedded synthetic world (a banner says so, and
``training_stages.json`` records it); the Qwen YAMLs set ``require_data: true``. ``--ranking full`` orders each
row's negatives by their agreement with the consensus (``rejected_agreement``) unless ``--full_ranking_by given``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from cxr_max.stages.data import TrainingStageArguments, train_and_eval, uses_builder
from cxr_max.training.apo_config import APOConfig

NAME = "critique"
HELP = "APO: Plackett-Luce preference optimisation, consensus positive against every teacher (from learn)"


@dataclass
class CritiqueArguments(TrainingStageArguments):
    """Data options of the preference stages (critique, and the pairwise-DPO baseline)."""

    dataset_config: str | None = field(default="apo", metadata={"help": "Dataset configuration (the builder's: apo)."})
    preferences: str | None = field(default=None, metadata={"help": "cxr_max builder: compare-stage preference rows "
                                    "(file or folder)."})


DATACLASS_TYPES = (CritiqueArguments, APOConfig, ModelConfig)
APO_COLUMNS = ("images", "prompt", "chosen", "rejected", "rejected_teachers", "rejected_weights", "rejected_agreement")


def main(script_args: CritiqueArguments, training_args: APOConfig, model_args: ModelConfig, dataset=None) -> str:
    """Run APO from ``model_args.model_name_or_path`` (the learn output); returns the saved folder.

    ``dataset`` (in process) replaces ``--dataset_name``: a ``Dataset`` of APO rows, or a ``DatasetDict``."""
    from cxr_max.training.apo_trainer import APOTrainer
    from cxr_max.training.devices import cpu_safe
    from cxr_max.training.recipe_utils import run_stage

    cpu_safe(training_args)
    if not model_args.model_name_or_path:
        raise ValueError("critique needs --model_name_or_path: the learn stage's output folder")
    options = stage_options(script_args, NAME, in_process=dataset is not None, training_args=training_args)
    train, evaluation = preference_rows(script_args, training_args, dataset)
    out, trainer = run_stage(APOTrainer, train, training_args, model_args, model_path=model_args.model_name_or_path,
                             stage=NAME, eval_dataset=evaluation, **options)
    if trainer.accelerator.is_main_process:
        print(f"critique: saved the APO student to {out}")
    return out


def stage_options(script_args: CritiqueArguments, stage: str, in_process: bool, training_args=None) -> dict:
    """``run_stage`` keywords shared by critique and the DPO baseline: the data record (after the
    ``require_data`` check), the LoRA scope, the image bound and the vision side's own learning rate
    (``cxr_max.training.multimodal.vision_optimizer``, when ``--vision_lr`` is set)."""
    from cxr_max.training.recipe_utils import describe_data, require_data_location

    if not in_process:
        require_data_location(script_args.require_data, stage, data_dir=script_args.data_dir,
                              dataset_name=None if uses_builder(script_args.dataset_name) else script_args.dataset_name)
    data = describe_data(dataset_name=script_args.dataset_name, data_dir=script_args.data_dir,
                         in_process=in_process, stage=stage)
    options = dict(data=data, freeze_vit=script_args.freeze_vit, min_pixels=script_args.min_pixels,
                   max_pixels=script_args.max_pixels, hub_dataset_id=script_args.hub_dataset_id)
    if script_args.vision_lr is not None:
        from cxr_max.training.multimodal import vision_optimizer

        options["optimizer_cls_and_kwargs"] = vision_optimizer(training_args, script_args.vision_lr,
                                                               script_args.projector_lr)
    return options


def preference_rows(script_args: CritiqueArguments, training_args, dataset=None):
    """``(train, eval)`` APO rows (``eval`` None unless evaluation is asked for), capped, with only the columns
    training uses."""
    train, evaluation = train_and_eval(script_args, training_args, dataset, preferences=script_args.preferences,
                                       synthetic_patients=script_args.synthetic_patients)

    def trim(rows, limit):
        if limit:
            rows = rows.select(range(min(limit, len(rows))))
        return rows.select_columns([c for c in APO_COLUMNS if c in rows.column_names])

    return trim(train, script_args.max_train_samples), \
        None if evaluation is None else trim(evaluation, script_args.max_eval_samples)


def make_parser(subparsers=None, prog: str | None = None):
    """``(CritiqueArguments, APOConfig, ModelConfig)``; every flag also works from ``--config file.yaml``."""
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, dataclass_types=DATACLASS_TYPES)
    return TrlParser(DATACLASS_TYPES, prog=prog)

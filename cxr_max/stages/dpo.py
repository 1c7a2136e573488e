"""The authors' released preference recipe, as a baseline: pairwise DPO with stock ``trl.DPOTrainer``.

Each APO row (one consensus positive, K teacher negatives) becomes K rows ``(prompt, chosen, rejected_k)``
(:func:`cxr_max.training.pairwise.expand_pairwise`); the loss is TRL's ``sigmoid`` DPO loss. Same data, model
and flags as :mod:`cxr_max.stages.critique`:

    python recipes/dpo_baseline.py --config recipes/configs/dpo_baseline_tiny.yaml --model_name_or_path outputs/learn
"""

from __future__ import annotations

from trl import DPOConfig, ModelConfig, TrlParser

from cxr_max.stages.critique import CritiqueArguments, preference_rows, stage_options

NAME = "dpo"
HELP = "The released recipe's baseline: pairwise DPO on (consensus, teacher) pairs (from learn)"
DATACLASS_TYPES = (CritiqueArguments, DPOConfig, ModelConfig)


def main(script_args: CritiqueArguments, training_args: DPOConfig, model_args: ModelConfig, dataset=None) -> str:
    """Run pairwise DPO from the learn checkpoint; returns the saved folder."""
    from trl import DPOTrainer

    from cxr_max.training.devices import cpu_safe
    from cxr_max.training.recipe_utils import run_stage

    cpu_safe(training_args)
    if not model_args.model_name_or_path:
        raise ValueError("dpo needs --model_name_or_path: the learn stage's output folder")
    options = stage_options(script_args, NAME, in_process=dataset is not None, training_args=training_args)
    train, evaluation = preference_rows(script_args, training_args, dataset)
    out, trainer = run_stage(DPOTrainer, pairs(train), training_args, model_args,
                             model_path=model_args.model_name_or_path, stage=NAME,
                             eval_dataset=None if evaluation is None else pairs(evaluation), **options)
    if trainer.accelerator.is_main_process:
        print(f"dpo_baseline: saved the pairwise-DPO student to {out}")
    return out


def pairs(rows):
    """APO rows -> DPO pairs with only the columns ``DPOTrainer`` reads."""
    from cxr_max.training.pairwise import expand_pairwise

    out = expand_pairwise(rows).remove_columns("rejected_teacher")
    return out.remove_columns([c for c in ("rejected_agreement",) if c in out.column_names])


def make_parser(subparsers=None, prog: str | None = None):
    """``(CritiqueArguments, DPOConfig, ModelConfig)``; every flag also works from ``--config file.yaml``."""
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, dataclass_types=DATACLASS_TYPES)
    return TrlParser(DATACLASS_TYPES, prog=prog)

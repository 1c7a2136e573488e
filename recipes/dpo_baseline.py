"""The authors' released preference recipe, as a baseline: pairwise DPO with stock ``trl.DPOTrainer``.

Each APO row (one consensus positive, K teacher negatives) becomes K rows ``(prompt, chosen, rejected_k)``;
the loss is TRL's ``sigmoid`` DPO loss. Same data, model and flags as ``recipes/critique.py``:

    python recipes/dpo_baseline.py --config recipes/configs/dpo_baseline_tiny.yaml --model_name_or_path outputs/learn
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trl import DPOConfig, DPOTrainer, ModelConfig, TrlParser  # noqa: E402

from cxr_max.training.devices import cpu_safe  # noqa: E402
from cxr_max.training.pairwise import expand_pairwise  # noqa: E402
from cxr_max.training.recipe_utils import run_stage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from critique import CritiqueArguments, preference_rows, stage_options  # noqa: E402


def main(script_args: CritiqueArguments, training_args: DPOConfig, model_args: ModelConfig, dataset=None) -> str:
    """Run pairwise DPO from the learn checkpoint; returns the saved folder."""
    cpu_safe(training_args)
    if not model_args.model_name_or_path:
        raise ValueError("dpo_baseline needs --model_name_or_path: the learn stage's output folder")
    options = stage_options(script_args, "dpo", in_process=dataset is not None, training_args=training_args)
    dataset = preference_rows(script_args, dataset)
    pairs = expand_pairwise(dataset).remove_columns("rejected_teacher")
    pairs = pairs.remove_columns([c for c in ("rejected_agreement",) if c in pairs.column_names])

    out, trainer = run_stage(DPOTrainer, pairs, training_args, model_args, model_path=model_args.model_name_or_path,
                             stage="dpo", **options)
    if trainer.accelerator.is_main_process:
        print(f"dpo_baseline: saved the pairwise-DPO student to {out}")
    return out


def make_parser() -> TrlParser:
    """``(CritiqueArguments, DPOConfig, ModelConfig)`` parser; every flag also works from ``--config file.yaml``."""
    return TrlParser((CritiqueArguments, DPOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())

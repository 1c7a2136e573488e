"""Critique: APO (multi-negative Plackett-Luce preference optimisation) from the learn checkpoint (stage 3).

    python recipes/critique.py --config recipes/configs/critique_tiny.yaml \
        --model_name_or_path outputs/learn --preferences outputs/compare
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/critique.py \
        --config recipes/configs/critique_qwen25vl_7b.yaml --model_name_or_path outputs/learn

Rows: the cxr_max builder's ``apo`` config (prompt, chosen = consensus, rejected = the teachers' trajectories,
their names and drift-aware weights), or ``--dataset_path``. The reference is the learn checkpoint itself:
with ``--precompute_ref_log_probs`` (the tiny default) its log-probs are computed once and cached, so only one
model is held; with ``--use_peft`` the adapter is disabled for the reference; otherwise a frozen copy is loaded.
Resuming a full fine-tune (``--resume_from_checkpoint``) keeps the learn checkpoint as the reference.
Without ``--data_dir``/``--dataset_path`` the rows come from the embedded synthetic world (a banner says so, and
``training_stages.json`` records it); the Qwen YAMLs set ``require_data: true``. ``--ranking full`` orders each
row's negatives by their agreement with the consensus (``rejected_agreement``) unless ``--full_ranking_by given``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trl import ModelConfig, TrlParser  # noqa: E402

from cxr_max.training.apo_config import APOConfig  # noqa: E402
from cxr_max.training.apo_trainer import APOTrainer  # noqa: E402
from cxr_max.training.devices import cpu_safe  # noqa: E402
from cxr_max.training.recipe_utils import describe_data, load_rows, require_data_location, run_stage  # noqa: E402


@dataclass
class CritiqueArguments:
    """Data options of the critique stage."""

    dataset_config: str = field(default="apo", metadata={"help": "cxr_max builder config with APO rows."})
    dataset_path: str | None = field(default=None, metadata={"help": "JSON/JSONL/parquet APO rows instead of the builder."})
    split: str = field(default="train", metadata={"help": "Split to train on."})
    data_dir: str | None = field(default=None, metadata={"help": "MIMIC-CXR-JPG root (None: embedded synthetic)."})
    preferences: str | None = field(default=None, metadata={"help": "Compare-stage preference rows (file or folder)."})
    synthetic_patients: int | None = field(default=None, metadata={"help": "Size of the embedded synthetic data."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "With --push_to_hub: the training data's Hub "
                                       "dataset id(s) for the model card (namespace/name, comma-separated)."})
    require_data: bool = field(default=False, metadata={"help": "Stop unless --data_dir or --dataset_path is given "
                               "(the Qwen YAMLs set it: no silent training on the embedded synthetic world)."})
    freeze_vit: bool = field(default=True, metadata={"help": "With --use_peft, leave the vision encoder and merger "
                             "out of LoRA (the released recipe's setting); false adapts them too."})
    min_pixels: int | None = field(default=None, metadata={"help": "Qwen-VL processors: fewest pixels per image."})
    max_pixels: int | None = field(default=None, metadata={"help": "Qwen-VL processors: most pixels per image "
                                   "(1003520 in the Qwen YAMLs; None: the processor's own)."})
    vision_lr: float | None = field(default=None, metadata={"help": "Learning rate of the vision encoder (None: "
                                    "--learning_rate for everything; 0 freezes it)."})
    projector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the projector (None: "
                                       "--vision_lr)."})


APO_COLUMNS = ("images", "prompt", "chosen", "rejected", "rejected_teachers", "rejected_weights", "rejected_agreement")


def stage_options(script_args: CritiqueArguments, stage: str, in_process: bool, training_args=None) -> dict:
    """``run_stage`` keywords shared by critique and the DPO baseline: the data record (after the
    ``require_data`` check), the LoRA scope, the image bound and the vision side's own learning rate
    (``cxr_max.training.multimodal.vision_optimizer``, when ``--vision_lr`` is set)."""
    if not in_process:
        require_data_location(script_args.require_data, stage, data_dir=script_args.data_dir,
                              dataset_path=script_args.dataset_path)
    data = describe_data(data_dir=script_args.data_dir, dataset_path=script_args.dataset_path,
                         in_process=in_process, stage=stage)
    options = dict(data=data, freeze_vit=script_args.freeze_vit, min_pixels=script_args.min_pixels,
                   max_pixels=script_args.max_pixels, hub_dataset_id=script_args.hub_dataset_id)
    if script_args.vision_lr is not None:
        from cxr_max.training.multimodal import vision_optimizer

        options["optimizer_cls_and_kwargs"] = vision_optimizer(training_args, script_args.vision_lr,
                                                               script_args.projector_lr)
    return options


def preference_rows(script_args: CritiqueArguments, dataset=None):
    """The APO rows (builder ``apo`` config or ``--dataset_path``), capped, with only the columns training uses."""
    if dataset is None:
        dataset = load_rows(script_args.dataset_path, script_args.dataset_config, script_args.split,
                            data_dir=script_args.data_dir, preferences=script_args.preferences,
                            synthetic_patients=script_args.synthetic_patients)
    if script_args.max_train_samples:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    return dataset.select_columns([c for c in APO_COLUMNS if c in dataset.column_names])


def main(script_args: CritiqueArguments, training_args: APOConfig, model_args: ModelConfig, dataset=None) -> str:
    """Run APO from ``model_args.model_name_or_path`` (the learn output); returns the saved folder."""
    cpu_safe(training_args)
    if not model_args.model_name_or_path:
        raise ValueError("critique needs --model_name_or_path: the learn stage's output folder")
    options = stage_options(script_args, "critique", in_process=dataset is not None, training_args=training_args)
    dataset = preference_rows(script_args, dataset)

    out, trainer = run_stage(APOTrainer, dataset, training_args, model_args, model_path=model_args.model_name_or_path,
                             stage="critique", **options)
    if trainer.accelerator.is_main_process:
        print(f"critique: saved the APO student to {out}")
    return out


def make_parser() -> TrlParser:
    """``(CritiqueArguments, APOConfig, ModelConfig)`` parser; every flag also works from ``--config file.yaml``."""
    return TrlParser((CritiqueArguments, APOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())

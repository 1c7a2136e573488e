"""Learn: supervised bootstrapping of the student on the union of all teachers' trajectories (stage 1 of APO).

    python recipes/learn.py --config recipes/configs/learn_tiny.yaml            # embedded default, CPU
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/learn.py \
        --config recipes/configs/learn_qwen25vl_7b.yaml --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct

Rows come from ``--dataset_name`` (:mod:`cxr_max.stages.data`): by default the cxr_max builder's ``sft``
config (refusals excluded by default), or an export folder, rows file or Hub dataset. Without
``--model_name_or_path`` the embedded tiny LLaVA student is built offline, its tokenizer trained on these
trajectories. LoRA (``--use_peft``) is merged into the base at the end so the critique stage starts from one
full model, which is also its reference. With ``--eval_strategy steps`` (or ``epoch``) the trainer evaluates on
``--dataset_test_split`` (``validation`` by default).

A run of the builder without ``--data_dir`` trains on the embedded synthetic world whatever the model: it says
so in a banner and records it in ``training_stages.json`` and the model card (the Qwen YAMLs set
``require_data: true``, so there it is an error instead). ``--max_pixels`` bounds Qwen-VL images (the YAMLs use
1003520, 1280 visual tokens); with ``--use_peft`` LoRA leaves the vision encoder and merger frozen unless
``--freeze_vit false``.

Two options exist for students whose vision side starts untrained (the tiny default sets both in its YAML;
see ``cxr_max.training.multimodal``): ``--vision_lr`` trains the vision encoder and projector at their own
learning rate, and ``--align_epochs`` first runs a short feature-alignment pass on captions of the findings
each teacher reported (LLaVA's stage 1; saved under ``<output_dir>/align``), then the SFT starts from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, SFTConfig, TrlParser

from cxr_max.stages.data import TrainingStageArguments, train_and_eval, uses_builder

NAME = "learn"
HELP = "Supervised bootstrapping: SFT of the student on every teacher's trajectories"


@dataclass
class LearnArguments(TrainingStageArguments):
    """Data and student options of the learn stage."""

    dataset_config: str | None = field(default="sft", metadata={"help": "Dataset configuration (the builder's: sft)."})
    trajectories: str | None = field(default=None, metadata={"help": "cxr_max builder: teacher trajectories file "
                                     "or folder."})
    include_refusals: bool = field(default=False, metadata={"help": "Keep refusals in the SFT data."})
    tiny_image_size: int = field(default=64, metadata={"help": "Tiny student: image side (pixels)."})
    tiny_patch_size: int = field(default=16, metadata={"help": "Tiny student: patch side (pixels)."})
    tiny_vocab_size: int = field(default=1024, metadata={"help": "Tiny student: tokenizer vocabulary size."})
    tiny_vision_pretrained: bool = field(default=False, metadata={"help": "Tiny student: start from a vision tower "
                                         "pretrained on a separate synthetic cohort (cxr_max.training.pretrain; "
                                         "built once, cached)."})
    tiny_pretrain_patients: int = field(default=1500, metadata={"help": "Tiny student: patients of that cohort."})
    tiny_pretrain_epochs: int = field(default=40, metadata={"help": "Tiny student: epochs of that pretraining."})
    tiny_vision_hidden: int = field(default=96, metadata={"help": "Tiny student: vision tower width."})
    tiny_vision_layers: int = field(default=3, metadata={"help": "Tiny student: vision tower depth."})
    tiny_text_hidden: int = field(default=96, metadata={"help": "Tiny student: language model width."})
    tiny_text_layers: int = field(default=2, metadata={"help": "Tiny student: language model depth."})
    align_epochs: float = field(default=0.0, metadata={"help": "Feature-alignment epochs on teacher-derived finding "
                                "captions before the SFT (0: none; for students whose vision side starts random)."})
    align_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of the alignment pass."})
    max_truncated_share: float = field(default=0.02, metadata={"help": "Image rows longer than max_length lose the "
                                       "end of their answer (counted); stop past this share of rows (1.0: never). "
                                       "Image tokens are never cut: a row whose image does not fit is an error."})


DATACLASS_TYPES = (LearnArguments, SFTConfig, ModelConfig)
SFT_COLUMNS = ("messages", "images", "prompt", "completion")


def main(script_args: LearnArguments, training_args: SFTConfig, model_args: ModelConfig, dataset=None) -> str:
    """Run SFT; returns the folder of the trained student (also printed).

    ``dataset`` (in process) replaces ``--dataset_name``: a ``Dataset`` of SFT rows, or a ``DatasetDict``."""
    from trl import SFTTrainer

    from cxr_max.errors import SkipLog
    from cxr_max.training.devices import cpu_safe
    from cxr_max.training.multimodal import vision_optimizer
    from cxr_max.training.recipe_utils import describe_data, require_data_location, resolve_resume, run_stage

    cpu_safe(training_args)
    resolve_resume(training_args)  # a missing checkpoint stops here, before any student is built or pretrained
    skips = SkipLog()
    if dataset is None:
        require_data_location(script_args.require_data, NAME, data_dir=script_args.data_dir,
                              dataset_name=None if uses_builder(script_args.dataset_name) else script_args.dataset_name)
    data = describe_data(dataset_name=script_args.dataset_name, data_dir=script_args.data_dir,
                         in_process=dataset is not None, stage=NAME)
    builder = uses_builder(script_args.dataset_name)
    train, evaluation = train_and_eval(script_args, training_args, dataset, trajectories=script_args.trajectories,
                                       synthetic_patients=script_args.synthetic_patients,
                                       include_refusals=True if script_args.include_refusals and builder else None)
    train = sft_rows(train, script_args, skips, script_args.max_train_samples)
    if evaluation is not None:
        evaluation = sft_rows(evaluation, script_args, None, script_args.max_eval_samples)

    model_path = model_args.model_name_or_path
    if model_path is None:  # the embedded default student, built offline
        from cxr_max.training.recipe_utils import trajectory_texts
        from cxr_max.training.tiny import tiny_vlm

        model_path = str(Path(training_args.output_dir) / "student-init")
        if not (Path(model_path) / "config.json").is_file():
            tiny_vlm(trajectory_texts(train), model_path, spec=tiny_spec(script_args), seed=training_args.seed,
                     vision_init=tiny_vision_init(script_args))
    if script_args.align_epochs > 0:
        model_path = align(train, script_args, training_args, model_args, model_path, data)
    extra = {"optimizer_cls_and_kwargs": vision_optimizer(training_args, script_args.vision_lr,
                                                          script_args.projector_lr)} \
        if script_args.vision_lr is not None else {}
    out, trainer = run_stage(SFTTrainer, train, training_args, model_args, model_path=model_path, stage=NAME,
                             data=data, eval_dataset=evaluation, freeze_vit=script_args.freeze_vit,
                             min_pixels=script_args.min_pixels, max_pixels=script_args.max_pixels,
                             max_truncated_share=script_args.max_truncated_share,
                             hub_dataset_id=script_args.hub_dataset_id, **extra)
    if trainer.accelerator.is_main_process:
        if skips.total:
            print(skips.summary())
        print(f"learn: saved the student to {out}")
    return out


def sft_rows(dataset, script_args: LearnArguments, skips, limit: int | None):
    """SFT rows as the trainer takes them: refusals dropped (unless ``--include_refusals``), the first ``limit``,
    only the columns SFT reads."""
    from cxr_max.training.recipe_utils import drop_refusals

    if not script_args.include_refusals and "messages" in dataset.column_names:
        dataset = drop_refusals(dataset, skips)
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.select_columns([c for c in SFT_COLUMNS if c in dataset.column_names])


def tiny_spec(script_args: LearnArguments):
    """The embedded student's sizes (:class:`cxr_max.training.tiny.TinyVLMSpec`) from the ``--tiny_*`` flags."""
    from cxr_max.training.tiny import TinyVLMSpec

    return TinyVLMSpec(image_size=script_args.tiny_image_size, patch_size=script_args.tiny_patch_size,
                       vocab_size=script_args.tiny_vocab_size, vision_hidden=script_args.tiny_vision_hidden,
                       vision_layers=script_args.tiny_vision_layers, text_hidden=script_args.tiny_text_hidden,
                       text_layers=script_args.tiny_text_layers)


def tiny_vision_init(script_args: LearnArguments):
    """The cached pretrained tower the embedded student starts from (built now when missing), or None."""
    if not script_args.tiny_vision_pretrained:
        return None
    from cxr_max.training.pretrain import PretrainOptions, pretrained_tower_for

    return pretrained_tower_for(tiny_spec(script_args), PretrainOptions(n_patients=script_args.tiny_pretrain_patients,
                                                                        epochs=script_args.tiny_pretrain_epochs))


def align(dataset, script_args: LearnArguments, training_args: SFTConfig, model_args: ModelConfig,
          model_path: str, data: dict | None = None) -> str:
    """Feature alignment: SFT on finding captions (``finding_captions``) into ``<output_dir>/align``.

    Reused when that folder already holds a finished model; ``--resume_from_checkpoint`` resumes it too. The
    pass does not evaluate (its captions are not the stage's rows).
    """
    from trl import SFTTrainer

    from cxr_max.training.multimodal import finding_captions, vision_optimizer
    from cxr_max.training.recipe_utils import run_stage

    folder = Path(training_args.output_dir) / "align"
    if (folder / "config.json").is_file():
        return str(folder)
    resume = training_args.resume_from_checkpoint
    if resume and not any(folder.glob("checkpoint-*")):
        resume = None  # killed before the alignment pass saved a checkpoint: start it over
    args = dataclasses.replace(training_args, output_dir=str(folder), num_train_epochs=script_args.align_epochs,
                               learning_rate=script_args.align_learning_rate, push_to_hub=False,
                               resume_from_checkpoint=resume, eval_strategy="no")
    # a frozen tower (--vision_lr 0) stays frozen here too; the projector and the language model align at this rate
    extra = {"optimizer_cls_and_kwargs": vision_optimizer(args, 0.0, args.learning_rate)} \
        if script_args.vision_lr == 0 else {}
    out, _ = run_stage(SFTTrainer, finding_captions(dataset), args, model_args, model_path=model_path, stage="align",
                       data=data, freeze_vit=script_args.freeze_vit, min_pixels=script_args.min_pixels,
                       max_pixels=script_args.max_pixels, max_truncated_share=script_args.max_truncated_share,
                       **extra)
    return out


def make_parser(subparsers=None, prog: str | None = None):
    """``(LearnArguments, SFTConfig, ModelConfig)``; every flag also works from ``--config file.yaml``.

    With ``subparsers`` (a subparsers action whose ``parser_class`` is ``TrlParser``) it adds the ``learn``
    command there, as TRL's own scripts do for ``trl sft``."""
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, dataclass_types=DATACLASS_TYPES)
    return TrlParser(DATACLASS_TYPES, prog=prog)

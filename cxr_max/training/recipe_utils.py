"""What the training stages share (:mod:`cxr_max.stages.learn`, ``critique``, ``dpo``): loading, LoRA scope, image
bounds, resume, the data record, saving with lineage and the Hub push (:func:`run_stage`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cxr_max.errors import SkipLog

logger = logging.getLogger("cxr_max")


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


def load_processing(path: str, trust_remote_code: bool = False, *, min_pixels: int | None = None,
                    max_pixels: int | None = None):
    """The processor (VLM) or tokenizer (text model) saved with a model.

    ``min_pixels``/``max_pixels`` bound the resized image of processors that resize to a pixel budget
    (Qwen2-VL / Qwen2.5-VL: ``size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}``); the bound is
    saved with the trained model. See :func:`bound_image_size`.
    """
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if config.get_text_config() is not config:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        bound_image_size(processor, min_pixels=min_pixels, max_pixels=max_pixels)
        return processor
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


# Above this many pixels a Qwen-style processor makes more visual tokens than the recipes' max_length holds
# (one token per 28 x 28 pixels: 4M pixels ~ 5k tokens).
UNBOUNDED_PIXELS_WARNING = 4_000_000


def bound_image_size(processor, *, min_pixels: int | None = None, max_pixels: int | None = None):
    """Set the pixel budget of a processor that resizes images to one (Qwen2-VL / Qwen2.5-VL), in place.

    Qwen2.5-VL's published default admits ~12.8M pixels: a full-resolution MIMIC-CXR-JPG image (~2.5k x 3k)
    would become ~10k visual tokens, far above any training ``max_length``. The recipes' Qwen YAMLs set
    ``max_pixels: 1003520`` (1280 visual tokens, the authors' CPO scripts' bound). A processor with a fixed input
    size (LLaVA/CLIP) has no pixel budget: a bound given for it raises ``ValueError`` rather than being ignored.
    Returns the processor's ``(min_pixels, max_pixels)`` after the change (``None`` for a fixed-size processor).
    """
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    budget = image_processor is not None and get("longest_edge") is not None and get("shortest_edge") is not None \
        and type(image_processor).__name__.startswith(("Qwen2VL", "Qwen2_5", "Qwen3VL"))
    if not budget:
        if min_pixels is not None or max_pixels is not None:
            raise ValueError(f"min_pixels/max_pixels given, but {type(image_processor).__name__} resizes images to a "
                             "fixed size and has no pixel budget")
        return None
    lo = int(min_pixels) if min_pixels is not None else int(get("shortest_edge"))
    hi = int(max_pixels) if max_pixels is not None else int(get("longest_edge"))
    if lo > hi:
        raise ValueError(f"min_pixels {lo} > max_pixels {hi}")
    if min_pixels is not None or max_pixels is not None:
        image_processor.size = {"shortest_edge": lo, "longest_edge": hi}
        for attr, value in (("min_pixels", lo), ("max_pixels", hi)):
            if hasattr(image_processor, attr):
                setattr(image_processor, attr, value)
    if hi > UNBOUNDED_PIXELS_WARNING:
        logger.warning("the image processor admits up to %d pixels per image (~%d visual tokens): set max_pixels "
                       "(the Qwen YAMLs use 1003520) or long images are cut by max_length", hi, hi // 784)
    return lo, hi


def lora_config(model_args, model=None, *, freeze_vit: bool = True):
    """TRL's LoRA config from ``model_args`` (None without ``--use_peft``), with the vision side left out.

    ``freeze_vit=True`` (the default, the released ms-swift recipe's setting: its ``freeze_vit`` defaults to true)
    excludes the vision encoder and the merger/projector (modules named as in
    :data:`cxr_max.training.multimodal.VISION_MODULES`) from ``lora_target_modules`` -- with ``all-linear`` PEFT
    would otherwise adapt every linear layer of the ViT too. ``freeze_vit=False`` adapts them as well.
    """
    from trl import get_peft_config

    from cxr_max.training.multimodal import VISION_MODULES, is_vision_parameter

    config = get_peft_config(model_args)
    if config is None or not freeze_vit:
        return config
    if model is not None and not any(is_vision_parameter(n) for n, _ in model.named_parameters()):
        return config  # a text model: nothing to leave out
    config.exclude_modules = r".*\b(" + "|".join(VISION_MODULES) + r")\b.*"
    return config


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


def resumed_from_full_checkpoint(model_path: str, resume: str | None) -> bool:
    """Whether :func:`policy_source` loads the policy from the resumed checkpoint instead of ``model_path``."""
    return policy_source(model_path, resume) != model_path


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

SYNTHETIC_BANNER = (
    "\n" + "!" * 100 + "\n"
    "!!  {stage}: NO DATA LOCATION GIVEN -- training on the EMBEDDED SYNTHETIC world (generated images, simulated\n"
    "!!  teachers), NOT on MIMIC-CXR, whatever the model. Recorded in training_stages.json and the model card.\n"
    "!!  For real data pass --data_dir <MIMIC-CXR-JPG root> (and --trajectories / --preferences) or --dataset_name.\n"
    + "!" * 100 + "\n"
)


def describe_data(*, dataset_name: str | None = None, data_dir: str | None = None, in_process: bool = False,
                  stage: str = "train") -> dict:
    """What a stage trains on, for ``training_stages.json`` and the model card: ``{"source", "synthetic",
    "location"}``. ``source`` is ``"embedded synthetic"``, ``"mimic-cxr-jpg"`` (the builder on a data folder),
    ``"rows"`` (``--dataset_name`` a local folder or file), ``"hub"`` (a Hub dataset id, also recorded as
    ``hub_dataset_id``) or ``"in-process"`` (a dataset object handed to ``main``: unknown, never claimed as
    MIMIC-CXR).

    A ``data_dir`` that is a cxr_max synthetic world (a ``truth.jsonl`` beside or in it) counts as synthetic.
    With no data location at all the stage trains on the embedded synthetic world: a banner says so.
    """
    if in_process:
        return {"source": "in-process", "synthetic": None, "location": None}
    if dataset_name not in (None, "cxr_max"):
        if Path(dataset_name).expanduser().exists():
            return {"source": "rows", "synthetic": None, "location": str(dataset_name)}
        return {"source": "hub", "synthetic": None, "location": dataset_name, "hub_dataset_id": dataset_name}
    if data_dir:  # the same rule the builder reads it by (cxr_max.sources); nothing is built for a given folder
        from cxr_max.sources import resolve_source

        return resolve_source(data_dir, stage=stage).describe()
    print(SYNTHETIC_BANNER.format(stage=stage), flush=True)
    logger.warning("%s: no data location given; training on the embedded synthetic world, not MIMIC-CXR", stage)
    return {"source": "embedded synthetic", "synthetic": True, "location": None}


def require_data_location(required: bool, stage: str, **locations) -> None:
    """``--require_data true`` (the Qwen YAMLs): stop unless a data location was given."""
    if required and not any(locations.values()):
        raise SystemExit(f"{stage}: this config requires a data location ({' or '.join('--' + k for k in locations)}); "
                         "without one the stage would train on the embedded synthetic world. Pass one, or "
                         "--require_data false to train on the synthetic world deliberately.")


def _is_zero3(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and plugin is not None and plugin.zero_stage == 3)


def _merge_adapter_from_disk(trainer, output_dir: str, base_path: str) -> None:
    """ZeRO-3 + LoRA: the parameters are partitioned, so ``merge_and_unload`` on them would merge shards. Save the
    adapter (``Trainer`` gathers its 16-bit weights), then merge it into the base checkpoint on the CPU on the main
    process, in the policy's dtype."""
    from peft import PeftModel

    adapter_dir = Path(output_dir) / "adapter"
    trainer.save_model(str(adapter_dir))
    if trainer.accelerator.is_main_process:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        model = trainer.accelerator.unwrap_model(trainer.model)
        config = AutoConfig.from_pretrained(base_path)
        cls = AutoModelForImageTextToText if config.get_text_config() is not config else AutoModelForCausalLM
        base = cls.from_pretrained(base_path, dtype=model.dtype, device_map=None)
        PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(output_dir)


def save_final(trainer, processing_class, output_dir: str, merge_lora: bool = True, *, stage: str | None = None,
               source: str | None = None, data: dict | None = None) -> str:
    """Save the trained model (LoRA merged into the base when ``merge_lora``) and its processor; return the path.

    With ``stage``, also record the training lineage the model card needs: ``training_stages.json`` (the
    stages of ``source``, the folder this stage started from, plus this one, with its hyperparameters,
    the base model and ``data`` -- what it trained on, see :func:`describe_data`) and ``all_results.json``
    (this stage's final training metrics). Under DeepSpeed ZeRO-3 a LoRA policy is merged from the saved adapter
    and the base checkpoint ``source`` (the partitioned parameters cannot be merged in place).
    """
    import json

    from accelerate.utils import is_peft_model

    model = trainer.accelerator.unwrap_model(trainer.model)
    if merge_lora and is_peft_model(model) and _is_zero3(trainer):
        if source is None:
            raise ValueError("save_final under ZeRO-3 with LoRA needs source= (the base checkpoint to merge into)")
        _merge_adapter_from_disk(trainer, output_dir, source)
    elif merge_lora and is_peft_model(model):
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
            entry = {"name": stage, "description": STAGE_DESCRIPTIONS.get(stage, stage), "hyperparameters": hp}
            if data is not None:
                entry["data"] = data
            stages.append(entry)
            (Path(output_dir) / STAGES_FILE).write_text(json.dumps(stages, indent=2, default=str))
            final = next((h for h in reversed(trainer.state.log_history) if "train_loss" in h), {})
            trainer.save_metrics("train", {k: v for k, v in final.items() if isinstance(v, (int, float))}, combined=True)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def training_dataset_ids(hub_dataset_id: str | list[str] | None = None, data: dict | None = None) -> list[str]:
    """The Hub id(s) of the training data that a pushed model's card names (its ``datasets:`` metadata).

    ``hub_dataset_id`` (``--hub_dataset_id``; one id, a comma-separated string or a list) when given; else the
    training data's own id (``data`` is :func:`describe_data`'s record): ``data["hub_dataset_id"]``, or
    ``data["location"]`` of data loaded from the Hub (``--dataset_name namespace/name``). Local data (a data
    folder, a rows file or export folder, the embedded synthetic world) never names itself. Each id is checked;
    an empty list means the data has no Hub id.
    """
    from cxr_max.errors import DataError
    from cxr_max.hub.cards import check_hub_id

    if isinstance(hub_dataset_id, str):
        hub_dataset_id = [d.strip() for d in hub_dataset_id.split(",") if d.strip()]
    if hub_dataset_id:
        try:
            return [check_hub_id(d, "--hub_dataset_id", "--hub_dataset_id") for d in hub_dataset_id]
        except DataError as e:
            raise ValueError(str(e)) from None
    data = data or {}
    # a data_dir (MIMIC-CXR-JPG or synthetic root) is a local folder, never the data's Hub id
    local = data.get("source") in ("embedded synthetic", "mimic-cxr-jpg", "in-process", "rows")
    for candidate in (data.get("hub_dataset_id"), None if local else data.get("location")):
        try:
            return [check_hub_id(candidate, "dataset", "data")]
        except DataError:
            continue
    return []


def lineage_base_model(model_path: str) -> str:
    """The model a stage's lineage starts from: the first recorded stage's ``model_name_or_path`` in
    ``model_path``'s ``training_stages.json``, else ``model_path`` itself (this stage is the first)."""
    return _first_stage_source(model_path) or model_path


def _first_stage_source(folder: str) -> str | None:
    """The ``model_name_or_path`` the first stage recorded in ``folder``'s ``training_stages.json``, if any."""
    import json

    stages_file = Path(folder) / STAGES_FILE
    stages = json.loads(stages_file.read_text()) if stages_file.is_file() else []
    return stages[0]["hyperparameters"].get("model_name_or_path") if stages else None


def take_hub_push(training_args, *, hub_dataset_id: str | list[str] | None = None, data: dict | None = None,
                  model_path: str | None = None) -> dict | None:
    """Take ``--push_to_hub`` away from ``Trainer`` and return what to push at the end instead.

    Trainer would push every checkpoint with a card whose base model is ``None``; cxr_max pushes the
    final model once, private by default, with its own card (:func:`cxr_max.hub.push_checkpoint`). What the
    card needs is checked here, before any training: the training data's Hub id(s)
    (:func:`training_dataset_ids`) and, with ``model_path``, a base model that is a Hub id
    (:func:`lineage_base_model`). A ValueError says which flag to pass.
    """
    if not getattr(training_args, "push_to_hub", False):
        return None
    datasets = training_dataset_ids(hub_dataset_id, data)
    if not datasets:
        raise ValueError("--push_to_hub: the model card names the training data by its Hub dataset id, and this "
                         "stage's data has none; pass --hub_dataset_id <namespace/name> (for example the repo an "
                         "export was pushed to with `cxr-max push <export> <namespace/name>`)")
    request = {
        "repo_id": training_args.hub_model_id or Path(training_args.output_dir).name,
        "private": training_args.hub_private_repo is not False,
        "datasets": datasets,
    }
    if model_path is not None:
        from cxr_max.errors import DataError
        from cxr_max.hub.cards import check_hub_id

        base = lineage_base_model(model_path)
        try:
            check_hub_id(base, "base_model", model_path)
        except DataError:
            raise ValueError(f"--push_to_hub: the model card's base_model must be a Hub model id, but this stage's "
                             f"lineage starts from {base!r}, which is not one (a student built offline has no Hub "
                             "base model); start the first stage from a Hub model to push") from None
    training_args.push_to_hub = False
    return request


def push_if_requested(request: dict | None, folder: str, *, datasets: list[str] | None = None,
                      endpoint: str | None = None):
    """Push ``folder`` with :func:`cxr_max.hub.push_checkpoint` when :func:`take_hub_push` asked for it.

    The base model is the first stage's starting checkpoint (a Hub id such as
    ``Qwen/Qwen2.5-VL-7B-Instruct``); the card's datasets are ``datasets`` or the ids the request carries.
    """
    if request is None:
        return
    import json

    from cxr_max.hub import PushError, push_checkpoint

    datasets = list(datasets or request.get("datasets") or [])
    if not datasets:
        raise PushError("the model card needs the training data's Hub dataset id(s): pass --hub_dataset_id")
    stages = json.loads((Path(folder) / STAGES_FILE).read_text())
    base = _first_stage_source(folder)
    description, limitations = card_data_text(stages)
    plan = push_checkpoint(folder, request["repo_id"], private=request["private"], base_model=base,
                           datasets=datasets, endpoint=endpoint, data_description=description,
                           limitations=limitations)
    print(f"pushed {folder} to {request['repo_id']} ({'private' if request['private'] else 'public'})")
    return plan


def card_data_text(stages: list[dict]) -> tuple[str, list[str]]:
    """The model card's data paragraph and extra limitations, from the stages' ``data`` records: MIMIC-CXR is
    named only when every stage says it trained on a MIMIC-CXR-JPG folder."""
    sources = [s.get("data", {}).get("source") for s in stages]
    if sources and all(src == "mimic-cxr-jpg" for src in sources):
        return ("Trained on MIMIC-CXR-JPG (credentialed PhysioNet data, read locally by the cxr_max builder) with "
                "teacher trajectories; no image or report text is part of this repository.", [])
    if sources and all(src == "hub" for src in sources):
        ids = ", ".join(dict.fromkeys(s["data"]["location"] for s in stages))
        return (f"Trained on the Hub dataset(s) {ids} (see their cards for the data's origin and licence).", [])
    if any(src == "embedded synthetic" for src in sources):
        which = ", ".join(s["name"] for s in stages if s.get("data", {}).get("source") == "embedded synthetic")
        return ("**Trained on the embedded synthetic world of cxr_max, not on MIMIC-CXR** (stages: " + which + "): "
                "generated chest-X-ray-like images and simulated teachers. This model has not seen a real chest "
                "X-ray; the MIMIC-CXR remarks below describe the recipe's intended data, not this model's.",
                ["Trained on synthetic images and simulated teachers only: its outputs say nothing about real "
                 "chest X-rays."])
    return ("Trained on rows supplied to the recipes (" + ", ".join(str(s) for s in sources) + "); their origin "
            "is not recorded, so no dataset is claimed.", ["The training data's origin is not recorded."])


def run_stage(trainer_cls, dataset, training_args, model_args, *, model_path: str, stage: str,
              data: dict | None = None, freeze_vit: bool = True, min_pixels: int | None = None,
              max_pixels: int | None = None, max_truncated_share: float = 0.02,
              hub_dataset_id: str | list[str] | None = None, eval_dataset=None, **trainer_kwargs):
    """The part every training recipe shares: load, train (resuming if asked), save with lineage, push.

    Returns ``(output_dir, trainer)``. ``model_path`` is the checkpoint the stage starts from. ``data``
    (:func:`describe_data`) is recorded in ``training_stages.json``; ``freeze_vit`` goes to :func:`lora_config`;
    ``min_pixels``/``max_pixels`` to :func:`bound_image_size`; ``max_truncated_share`` to
    :func:`guard_sft_truncation` (SFT on image rows); ``eval_dataset`` goes to the trainer (the stages pass one
    when ``--eval_strategy`` asks for evaluation). With ``--push_to_hub`` the final model is pushed once
    (:func:`take_hub_push`); its card names ``hub_dataset_id`` (``--hub_dataset_id``) or the training data's own
    Hub id as the training dataset, and both that and the base model are checked before training starts.

    Resuming a full fine-tune loads the policy from the checkpoint (:func:`policy_source`); a preference trainer
    (``trl.DPOTrainer`` and :class:`~cxr_max.training.APOTrainer`) would then copy its reference from that
    checkpoint too, so the reference is loaded here from ``model_path`` -- the model the stage started from --
    in the policy's dtype and attention implementation.
    """
    from trl import DPOTrainer

    # one private push of the final model, with cxr_max's card; what the card needs is checked now, not after training
    push = take_hub_push(training_args, hub_dataset_id=hub_dataset_id, data=data, model_path=model_path)
    resume = resolve_resume(training_args)
    model = load_policy(policy_source(model_path, resume), model_args, training_args)
    processing_class = load_processing(model_path, training_args.trust_remote_code, min_pixels=min_pixels,
                                       max_pixels=max_pixels)
    peft_config = lora_config(model_args, model, freeze_vit=freeze_vit)
    if (issubclass(trainer_cls, DPOTrainer) and peft_config is None and trainer_kwargs.get("ref_model") is None
            and not getattr(training_args, "ref_model_path", None) and resumed_from_full_checkpoint(model_path, resume)):
        trainer_kwargs["ref_model"] = load_reference(model_path, model, training_args)
    # `Trainer.create_optimizer` reads `optimizer_cls_and_kwargs`; TRL's DPOTrainer (so APOTrainer) does not take
    # it in __init__, so it is set on every trainer after construction
    optimizer = trainer_kwargs.pop("optimizer_cls_and_kwargs", None)
    trainer = trainer_cls(model, args=training_args, train_dataset=dataset, eval_dataset=eval_dataset,
                          processing_class=processing_class, peft_config=peft_config, **trainer_kwargs)
    if optimizer is not None:
        trainer.optimizer_cls_and_kwargs = optimizer
    guard_sft_truncation(trainer, max_truncated_share)
    trainer.train(resume_from_checkpoint=resume)
    out = save_final(trainer, processing_class, training_args.output_dir, stage=stage, source=model_path, data=data)
    push_if_requested(push, out)
    return out, trainer


def guard_sft_truncation(trainer, max_truncated_share: float = 0.02):
    """Replace the truncation of an ``SFTTrainer``'s vision-language collator with
    :class:`~cxr_max.training.collator.SFTTruncationGuard` (image tokens never cut, cut answers counted, an
    error past ``max_truncated_share``). Text-only trainers (truncated when the dataset is prepared) are left
    as they are. Returns the guard, or ``None``."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from cxr_max.training.collator import SFTTruncationGuard

    inner = trainer.data_collator
    if not isinstance(inner, DataCollatorForVisionLanguageModeling) or inner.max_length is None:
        return None
    limit, inner.max_length = inner.max_length, None
    guard = SFTTruncationGuard(inner, limit, max_truncated_share,
                               image_token_id=getattr(inner.processor, "image_token_id", None))
    trainer.data_collator = guard
    return guard


def load_reference(path: str, policy, training_args=None):
    """A frozen reference from ``path`` built like ``policy``: its dtype and attention implementation, on the CPU
    with no device map (the trainer places it, as TRL does for its own copy)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    trust = bool(getattr(training_args, "trust_remote_code", False))
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    cls = AutoModelForImageTextToText if config.get_text_config() is not config else AutoModelForCausalLM
    ref = cls.from_pretrained(path, dtype=policy.dtype, attn_implementation=policy.config._attn_implementation,
                              device_map=None, trust_remote_code=trust)
    ref.eval()
    return ref

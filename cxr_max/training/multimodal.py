"""Two things a vision-language student needs that a text model does not: a separate learning rate for the
vision side, and (when built from scratch) a feature-alignment warm-up before instruction tuning.

**Vision learning rate.** With Adam every parameter moves about ``lr`` per step whatever its gradient's size.
Early in SFT the language side learns the teachers' phrasing and the image path carries almost no gradient,
so at the language model's learning rate the vision tower random-walks and its features are lost (measured on
the tiny student: at 3e-3 for everything its loss is the same with the true image, another image or a black
one). :func:`vision_optimizer` gives the vision encoder and projector their own rate -- the knob LLaVA calls
``mm_projector_lr`` and Qwen-VL's fine-tuning scripts ``vision_tower_lr`` -- through ``Trainer``'s
``optimizer_cls_and_kwargs`` (no trainer subclass).

**Alignment warm-up.** LLaVA trains the projector on short captions before instruction tuning. A student
whose vision tower starts random needs the same: in a long reasoning trajectory the findings are a few tokens
among a hundred, too weak a signal to find the image path. :func:`finding_captions` turns each teacher
trajectory into a short caption of the findings that teacher reported (read by
:mod:`cxr_max.evaluation.labeler` from the teacher's own text), so the warm-up is still distillation from the
teachers: no ground-truth label is used. Pretrained VLMs (Qwen2.5-VL) skip it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Module-name fragments of the vision side in the VLM families transformers ships (LLaVA, Qwen2/2.5-VL,
# Idefics/SmolVLM, Gemma 3, PaliGemma, Mllama).
VISION_MODULES: tuple[str, ...] = ("vision_tower", "multi_modal_projector", "visual", "vision_model", "connector",
                                   "mm_projector")


PROJECTOR_MODULES: tuple[str, ...] = ("multi_modal_projector", "mm_projector", "connector", "merger")


def is_projector_parameter(name: str) -> bool:
    """Whether a parameter belongs to the projector between vision tower and language model (Qwen-VL's merger
    sits inside ``visual``; LLaVA's ``multi_modal_projector`` beside the tower)."""
    return any(fragment in name.split(".") for fragment in PROJECTOR_MODULES)


def is_vision_parameter(name: str) -> bool:
    """Whether a parameter (by its ``named_parameters`` name) belongs to the vision encoder or projector."""
    parts = name.split(".")
    return any(fragment in parts for fragment in VISION_MODULES)


class VisionLROptimizer:
    """Optimizer factory for ``Trainer(optimizer_cls_and_kwargs=(VisionLROptimizer, kwargs))``.

    ``Trainer`` instantiates it and calls it with the model it trains (after PEFT wrapping, so LoRA
    parameters are included): AdamW with the vision side at ``vision_lr`` and the rest at ``learning_rate``;
    weight decay as ``Trainer`` applies it (not on biases and norms). The scheduler scales both groups alike.
    """

    def __call__(self, model: torch.nn.Module, *, learning_rate: float, vision_lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 projector_lr: float | None = None) -> torch.optim.AdamW:
        from transformers import Trainer

        decay = set(Trainer.get_decay_parameter_names(None, model))
        rates = {"text": learning_rate, "vision": vision_lr,
                 "projector": vision_lr if projector_lr is None else projector_lr}
        groups: dict[tuple[str, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                kind = "projector" if is_projector_parameter(name) else \
                    "vision" if is_vision_parameter(name) else "text"
                if rates[kind] == 0:
                    param.requires_grad_(False)  # a rate of 0 freezes: no gradient is computed or stored
                    continue
                groups.setdefault((kind, name in decay), []).append(param)
        if not any(kind != "text" for kind, _ in groups) and vision_lr != 0:
            raise ValueError(f"vision_lr={vision_lr} but {type(model).__name__} has no trainable vision parameters "
                             f"(looked for modules named {', '.join(VISION_MODULES)})")
        params = [{"params": ps, "lr": rates[kind], "weight_decay": weight_decay if decayed else 0.0}
                  for (kind, decayed), ps in sorted(groups.items())]
        return torch.optim.AdamW(params, lr=learning_rate, betas=betas, eps=eps)


def vision_optimizer(training_args, vision_lr: float, projector_lr: float | None = None) -> tuple[type, dict]:
    """``optimizer_cls_and_kwargs`` for a trainer: :class:`VisionLROptimizer` with ``training_args``' AdamW
    settings. A model without trainable vision parameters raises ``ValueError`` when the optimizer is built,
    so a configured ``vision_lr`` is never silently ignored. ``projector_lr`` (None: ``vision_lr``) is the
    projector's own rate; a rate of 0 freezes that part (``vision_lr=0``: a frozen, pretrained tower)."""
    return VisionLROptimizer, {
        "learning_rate": training_args.learning_rate,
        "vision_lr": vision_lr,
        "projector_lr": projector_lr,
        "weight_decay": training_args.weight_decay,
        "betas": (training_args.adam_beta1, training_args.adam_beta2),
        "eps": training_args.adam_epsilon,
    }


def finding_caption(labels: dict, findings: Sequence[str]) -> str:
    """``"Findings: pleural effusion, cardiomegaly."`` for the findings labelled present (1), else a negative."""
    present = [f.lower() for f in findings if labels.get(f) == 1]
    return f"Findings: {', '.join(present)}." if present else "No acute findings."


def finding_captions(dataset, findings: Sequence[str] | None = None):
    """SFT rows ``(images, messages)`` whose assistant turn is replaced by a caption of the findings that
    trajectory reports (the labeler reads the teacher's text). The user turn and image are kept."""
    from cxr_max.evaluation.labeler import label_reports
    from cxr_max.labels import TABLE_FINDINGS
    from cxr_max.trajectories.parse import assistant_text

    findings = tuple(findings or TABLE_FINDINGS)
    labels = label_reports([assistant_text(m) for m in dataset["messages"]])

    def recaption(row, index):
        caption = finding_caption(labels[index], findings)
        turns = [m for m in row["messages"] if m["role"] != "assistant"]
        return {"messages": turns + [{"role": "assistant", "content": [{"type": "text", "text": caption}]}]}

    return dataset.map(recaption, with_indices=True, desc="finding captions")

"""Device defaults shared by the recipes."""

from __future__ import annotations

import torch


def cpu_safe(training_args):
    """Make TRL's GPU-minded defaults work on a machine without a GPU, in place; returns the args.

    TRL configs default to ``bf16=True`` and ``gradient_checkpointing=True``; without CUDA that fails or only
    slows things down, so: ``bf16=False``, ``fp16=False``, ``use_cpu=True``, ``gradient_checkpointing=False``.
    With a GPU the args are left exactly as given.
    """
    if torch.cuda.is_available():
        return training_args
    training_args.bf16 = False
    training_args.fp16 = False
    training_args.use_cpu = True
    training_args.gradient_checkpointing = False
    if hasattr(training_args, "activation_checkpointing"):  # transformers 5 name of the same switch
        training_args.activation_checkpointing = False
    return training_args

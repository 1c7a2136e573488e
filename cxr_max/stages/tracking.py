"""Summaries of the stages that do not train (compare, evaluate, the APO table) sent to the experiment trackers
named by ``--report_to``, through the same ``transformers.integrations`` callbacks a ``Trainer`` uses
(trackio, wandb, tensorboard, mlflow, ...: whatever is installed and configured as it would be for training).

With ``report_to`` ``none`` (the tiny YAMLs' setting) nothing is imported and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any


def report_to_field(**metadata: Any):
    """The ``--report_to`` dataclass field of a stage that does not train (same values as ``TrainingArguments``)."""
    return field(default_factory=lambda: ["none"], metadata={"help": "Trackers for this stage's summary: none, all, "
                 "or integration names (trackio, wandb, tensorboard, ...), as TrainingArguments' --report_to.",
                 **metadata})


def integrations(report_to: str | Sequence[str] | None) -> list[str]:
    """``report_to`` as a list of integration names (``none``/None/[] give [])."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    return [] if names in ([], ["none"]) else names


class Tracker:
    """The reporting callbacks of ``report_to``, created now (a tracker that is not installed fails before the
    stage's work) and used once by :meth:`log` to open a run, log one summary and close it."""

    def __init__(self, report_to, *, run_name: str, output_dir: str | Path):
        self.names = integrations(report_to)
        self.callbacks = []
        self.args = None
        if not self.names:
            return
        from transformers import TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks

        names = "all" if self.names == ["all"] else self.names
        self.callbacks = [cls() for cls in get_reporting_integration_callbacks(names)]
        self.args = TrainingArguments(output_dir=str(output_dir), report_to=names, run_name=run_name)

    def log(self, summary: Mapping[str, float]) -> dict[str, float]:
        """Log the finite numbers of ``summary`` (flat ``{name: value}``) to every tracker; returns what was logged."""
        import math

        numbers = {k: float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if not self.callbacks:
            return numbers
        from transformers import TrainerControl, TrainerState

        state, control = TrainerState(), TrainerControl()
        for callback in self.callbacks:
            callback.on_train_begin(self.args, state, control)
            callback.on_log(self.args, state, control, logs=dict(numbers))
            callback.on_train_end(self.args, state, control)
        return numbers

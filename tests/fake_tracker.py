"""A local stand-in for an experiment tracker: a ``TrainerCallback`` that records each run, put in place of the
``tensorboard`` entry of transformers' reporting table, so ``--report_to tensorboard`` reaches it through the
real path (``transformers.integrations.get_reporting_integration_callbacks``) with nothing installed or sent."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.integrations import integration_utils

NAME = "tensorboard"


class Recorder(TrainerCallback):
    created = 0
    runs: list[dict] = []

    def __init__(self):
        Recorder.created += 1
        self.run = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.run = {"name": args.run_name, "output_dir": args.output_dir, "logs": [], "closed": False}
        Recorder.runs.append(self.run)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.run["logs"].append(dict(logs))

    def on_train_end(self, args, state, control, **kwargs):
        self.run["closed"] = True


def use_fake_tracker(monkeypatch) -> type[Recorder]:
    """Install :class:`Recorder` as the ``tensorboard`` integration for one test; returns it (runs emptied)."""
    monkeypatch.setitem(integration_utils.INTEGRATION_TO_CALLBACK, NAME, Recorder)
    monkeypatch.setattr(Recorder, "created", 0)
    monkeypatch.setattr(Recorder, "runs", [])
    return Recorder

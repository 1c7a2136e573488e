"""The ``cxr-max`` command. Each subpackage adds its commands through a ``register(app)`` hook."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="cxr_max: multi-teacher CXR distillation toolkit.")

# Modules that define ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = (
    "cxr_max.commands",             # synth, validate, info (foundation)
    "cxr_max.teachers.cli",         # serve-teachers, distill
    "cxr_max.drift.cli",            # drift-report
    "cxr_max.evaluation.cli",       # evaluate
    "cxr_max.hub_cli",              # export, push
)


def _load() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a part not built yet in a development tree
            if e.name != name:
                raise
            continue
        module.register(app)


def main() -> None:
    _load()
    app()


if __name__ == "__main__":
    main()

"""One stage's dataclasses from its YAML config and values set in code: how a pipeline (``cxr_max.stages.apo``,
the drift benchmark) runs a stage without building a command line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


def from_config(dataclass_types, config: str | Path | None = None, **overrides: Any) -> tuple:
    """The stage's dataclasses from ``config`` (a YAML mapping, as its ``--config`` reads) with ``overrides`` on
    top (None: keep the config's value).

    It is ``trl.TrlParser.parse_args_and_config`` with the overrides merged into the config's mapping: the
    merged values become the parser's defaults (``TrlParser.set_defaults_with_config``) and the dataclasses are
    built once from them, so a value is converted and checked exactly as the same flag would be, and a config
    that is only valid with an override (a bf16 YAML with ``use_cpu`` on a machine without a GPU) parses.
    The YAML's ``env:`` mapping is exported as ``--config`` does. A name no dataclass has is a TypeError, as an
    unknown flag is an error.
    """
    import yaml
    from trl import TrlParser

    parser = TrlParser(dataclass_types)
    values: dict[str, Any] = {}
    if config:
        with open(config) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config file {config} must contain a YAML mapping")
        for key, value in (values.pop("env", None) or {}).items():
            os.environ[key] = str(value)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"no stage option named {', '.join(unknown)} in {[t.__name__ for t in dataclass_types]}")
    values.update({k: str(v) if isinstance(v, Path) else v for k, v in overrides.items() if v is not None})
    remaining = parser.set_defaults_with_config(**values)
    if remaining:
        raise ValueError(f"unknown option(s) in {config}: {remaining}")
    return tuple(parser.parse_args_into_dataclasses(args=[]))

"""Field helpers for the commands' option dataclasses (parsed by ``trl.TrlParser``, a ``transformers.HfArgumentParser``).

Every field ``foo_bar`` is the option ``--foo_bar`` and ``--foo-bar``; a ``bool`` field defaulting to True also
gets ``--no_foo_bar`` / ``--no-foo-bar``; ``Literal`` fields are argparse choices, so a typo stops the command
at parse time (exit status 2) before any work starts.
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any


class Repeatable(argparse.Action):
    """A list option given as ``--x a b`` or as ``--x a --x b``: the first use replaces the default, later ones add."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        setattr(namespace, self.dest, [*current, *values])


def opt(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with its ``--help`` text; ``metadata`` goes to ``argparse.add_argument`` (``aliases``, ...)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def many(default: Sequence[str] = (), help: str = "", choices: Sequence[str] | None = None, **metadata: Any) -> Any:
    """A repeatable list option (``--x a --x b`` or ``--x a b``), each value checked against ``choices`` if given."""
    extra = {"choices": list(choices)} if choices is not None else {}
    return dataclasses.field(default_factory=lambda: list(default),
                             metadata={"help": help, "action": Repeatable, **extra, **metadata})


def positional(parser: argparse.ArgumentParser, *fields: tuple[str, type]) -> None:
    """Accept the options ``--<name>`` of ``fields`` also as positional arguments, in this order.

    The positional shares the option's destination and leaves it alone when absent, so ``push EXPORT REPO`` and
    ``push --folder EXPORT --repo_id REPO`` parse the same. Give positionals before the flags: an HfArgumentParser
    boolean flag takes an optional true/false value and would read a positional that follows it.
    """
    for name, kind in fields:
        parser.add_argument(name, nargs="?", type=_or_absent(kind), default=argparse.SUPPRESS, metavar=name.upper(),
                            help=f"same as --{name}")


def _or_absent(kind: type):
    """``kind``, except that argparse's "absent" marker (an absent optional positional) passes through unchanged."""

    def convert(text: str):
        return text if text is argparse.SUPPRESS else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in "invalid <type> value"
    return convert


def shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (ValueError otherwise)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n



def check_choices(obj: Any) -> None:
    """Raise ValueError when a ``Literal`` field (or a list field with ``choices``) of dataclass ``obj`` holds a
    value outside its choices: argparse checks the command line, this also checks what ``--config`` set."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), hints.get(f.name)
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
            if value is None:
                continue
            kind = next(a for a in args if a is not type(None))
        if typing.get_origin(kind) is typing.Literal:
            allowed, values = typing.get_args(kind), [value]
        elif f.metadata.get("action") is Repeatable and "choices" in f.metadata:
            allowed, values = tuple(f.metadata["choices"]), list(value)
        else:
            continue
        for v in values:
            if v not in allowed:
                raise ValueError(f"--{f.name}: invalid choice: {v!r} (choose from {', '.join(map(repr, allowed))})")

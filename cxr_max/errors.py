"""Errors and the explicit bad-input policy shared by every reader.

Every reader takes ``on_error="raise" | "skip"``. Under "raise" the first bad input raises a
:class:`DataError` naming the file and row. Under "skip" the input is skipped and counted in a
:class:`SkipLog`, whose summary is printed at the end of the job. Nothing is dropped silently.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Literal

OnError = Literal["raise", "skip"]
logger = logging.getLogger("cxr_max")


class DataError(ValueError):
    """Bad input, with where it was found."""

    def __init__(self, message: str, *, path: object = None, row: object = None, kind: str | None = None):
        # ``kind`` is the category counted under on_error="skip" (defaults to the message).
        self.path, self.row, self.reason = path, row, kind or message
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)


@dataclasses.dataclass
class SkipLog:
    """Counts skipped inputs by reason and keeps a few examples of each."""

    max_examples: int = 3
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, reason: str, where: str = "") -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples and where:
            ex.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "SkipLog") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            ex = self.examples.setdefault(reason, [])
            ex.extend(other.examples.get(reason, [])[: max(0, self.max_examples - len(ex))])

    def summary(self) -> str:
        if not self.counts:
            return "no inputs skipped"
        lines = [f"skipped {self.total} input(s):"]
        for reason, n in self.counts.most_common():
            ex = "; ".join(self.examples.get(reason, []))
            lines.append(f"  {n:>8}  {reason}" + (f"  (e.g. {ex})" if ex else ""))
        return "\n".join(lines)


def handle(err: DataError, on_error: OnError, skips: SkipLog | None) -> None:
    """Raise ``err`` under on_error="raise"; count it under "skip"."""
    if on_error == "raise":
        raise err
    if on_error != "skip":
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if skips is None:
        raise ValueError('on_error="skip" needs a SkipLog to count the skips in') from err
    where = f"{err.path}" + (f":{err.row}" if err.row is not None else "")
    skips.add(err.reason, where)
    logger.debug("skipped %s: %s", where, err.reason)

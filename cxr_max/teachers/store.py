"""Append-only sharded JSONL output, crash-safe, with a fast resume scan.

Layout: ``<out>/<teacher>/part-<i>-of-<n>.jsonl``, one file per teacher and collector shard
(``--shard i/n``). Each process appends only to its own shard's files (guarded by a lock file), so
several collectors can split one run and their outputs merge by concatenation.

Rows are canonical trajectory records (:mod:`cxr_max.trajectories.schema`) written with the key
fields first (dicom_id, teacher, task, sample, status), which lets the resume scan read keys with
one anchored regex per line instead of parsing whole records; lines written by other tools fall
back to ``json.loads``.

Crash safety: a line is written whole with its newline, and batches are flushed and fsynced. After
``kill -9`` the file can end with part of a line; opening the shard for append truncates it back to
the last complete line (the record it held was never acknowledged, so it is simply redone).

Which row wins when a key has several rows (a failure later retried): **ok beats failed; among
rows of the same status the latest wins** (later line in a file; ``collected_at`` across files).
:func:`read_records` applies that rule.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import mmap
import os
import threading
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr_max.errors import DataError
from cxr_max.trajectories.schema import FIELDS, KEY_FIELDS

Key = tuple[str, str, str, int]
_ORDER = (*KEY_FIELDS, "status", *[f for f in FIELDS if f not in (*KEY_FIELDS, "status")])
# Values with escapes (a quote or backslash) do not match and take the json.loads path.
_PREFIX = re.compile(
    rb'\{"dicom_id":"([^"\\]*)","teacher":"([^"\\]*)","task":"([^"\\]*)","sample":(-?\d+),"status":"(ok|failed)"'
)


def shard_file(out_dir: Path, teacher: str, shard: tuple[int, int]) -> Path:
    i, n = shard
    return Path(out_dir) / teacher / f"part-{i:04d}-of-{n:04d}.jsonl"


def dumps_record(rec: dict[str, Any]) -> str:
    """One JSONL line (with newline) for a normalised record, key fields first."""
    return json.dumps({k: rec[k] for k in _ORDER}, ensure_ascii=False, separators=(",", ":")) + "\n"


def repair_tail(path: Path) -> int:
    """Truncate ``path`` back to its last complete line; return how many bytes were cut (0 if none)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos, chunk = size, 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            nl = buf.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


@dataclasses.dataclass
class KeyState:
    """What the output folder already holds: keys with an ok row, keys with only failed rows."""

    ok: set[Key] = dataclasses.field(default_factory=set)
    failed: set[Key] = dataclasses.field(default_factory=set)
    rows: int = 0
    partial_tails: int = 0

    def done(self, retry_failed: bool) -> set[Key]:
        return self.ok if retry_failed else self.ok | self.failed


def scan_keys(out_dir: str | Path) -> KeyState:
    """Read the key of every complete row under ``out_dir`` (all teachers, all shards).

    A partial last line (a writer killed mid-line, or one still writing) is ignored, not parsed; a
    broken line anywhere else is a :class:`DataError` naming the file and line.
    """
    state = KeyState()
    match = _PREFIX.match
    for path in sorted(Path(out_dir).glob("*/part-*.jsonl")):
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                continue
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # no copy of the file into memory
        with data:
            end = data.rfind(b"\n") + 1
            if end < len(data):
                state.partial_tails += 1
            ok, failed = state.ok, state.failed
            pos, line_no = 0, 0
            while pos < end:
                nl = data.find(b"\n", pos, end)
                line_no += 1
                m = match(data, pos, nl)
                if m is not None:
                    d, t, k, s, st = m.groups()
                    key = (d.decode(), t.decode(), k.decode(), int(s))
                    is_ok = st == b"ok"
                else:
                    line = data[pos:nl]
                    pos = nl + 1
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        key = (rec["dicom_id"], rec["teacher"], rec["task"], int(rec["sample"]))
                        is_ok = (rec.get("status") or "ok") == "ok"
                    except (ValueError, KeyError, TypeError) as e:
                        raise DataError(f"not a trajectory record: {e}", path=path, row=line_no) from None
                pos = nl + 1
                state.rows += 1
                if is_ok:
                    ok.add(key)
                    failed.discard(key)
                elif key not in ok:
                    failed.add(key)
    return state


def iter_rows(out_dir: str | Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Every complete row under ``out_dir`` as ``(file, line number, record)``."""
    for path in sorted(Path(out_dir).glob("*/part-*.jsonl")):
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    break  # partial tail of a killed or running writer
                if line.strip():
                    try:
                        yield path, line_no, json.loads(line)
                    except ValueError as e:
                        raise DataError(f"not valid JSON: {e}", path=path, row=line_no) from None


def read_records(out_dir: str | Path, *, include_failed: bool = False) -> list[dict[str, Any]]:
    """One record per key under ``out_dir``, by the project's one duplicate rule (ok beats failed; among
    failures the latest wins; two ok rows for a key are an error): :func:`cxr_max.trajectories.io.read_trajectories`.
    Failure rows whose key later succeeded are never returned; keys that only failed are returned when
    ``include_failed``.
    """
    from cxr_max.trajectories.io import read_trajectories

    out = read_trajectories(out_dir, include_failed=include_failed).to_pylist()
    out.sort(key=lambda r: (r["teacher"], r["dicom_id"], r["task"], r["sample"]))
    return out


class ShardWriter:
    """Appends records to one teacher's shard file; :meth:`flush` writes, flushes and fsyncs a batch."""

    def __init__(self, out_dir: Path, teacher: str, shard: tuple[int, int]):
        self.path = shard_file(out_dir, teacher, shard)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_suffix(".lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise DataError(
                "another collector is writing this shard right now; give each process its own --shard i/n",
                path=self.path,
            ) from None
        self.repaired_bytes = repair_tail(self.path) if self.path.exists() else 0
        self._f = open(self.path, "a", encoding="utf-8")
        # Writes run in a worker thread; close() must wait for one in flight (else its lines are lost).
        self._io = threading.Lock()
        self._pending: list[str] = []
        self.written = 0

    def add(self, rec: dict[str, Any]) -> None:
        self._pending.append(dumps_record(rec))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self) -> list[str]:
        lines, self._pending = self._pending, []
        return lines

    def write_lines(self, lines: list[str]) -> None:
        """Write a batch, flush and fsync (called from a worker thread, one batch at a time)."""
        if lines:
            with self._io:
                self._f.write("".join(lines))
                self._f.flush()
                os.fsync(self._f.fileno())
                self.written += len(lines)

    def flush(self) -> None:
        self.write_lines(self.take())

    def close(self) -> None:
        self.flush()
        with self._io:
            self._f.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

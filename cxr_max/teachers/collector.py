"""The resumable multi-teacher collector: images x teachers x tasks x samples -> trajectory JSONL.

Per teacher: ``max_concurrency`` workers share that teacher's queue, behind its rate limiter and
retry budget (see :mod:`cxr_max.teachers.client`). Finished records go to the teacher's shard file
(:mod:`cxr_max.teachers.store`), flushed and fsynced in batches every ``flush_interval`` seconds.

Resuming: before starting, every complete row under ``out_dir`` is scanned; keys
(dicom_id, teacher, task, sample) with an ok row are skipped, and keys that only failed are asked
again (``retry_failed=True``, the default) or skipped (``retry_failed=False``). A run killed at any
moment, ``kill -9`` included, therefore resumes with no duplicates and no gaps: a record is either
fully on disk (and skipped) or not (and redone).

Sharding: ``shard=(i, n)`` keeps only the images whose stable dicom_id hash falls in shard ``i``, so
``n`` processes (on one machine or several with a shared folder) split a run without overlap and
each writes its own ``part-i-of-n`` files.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from cxr_max.errors import DataError
from cxr_max.teachers.client import RequestFailed, RetryBudget, TeacherClient
from cxr_max.teachers.guard import check_endpoint
from cxr_max.teachers.images import ImageItem, image_data_url, list_images, shard_of
from cxr_max.teachers.prompts import build_messages
from cxr_max.teachers.registry import Registry, TeacherSpec, load_registry
from cxr_max.teachers.store import ShardWriter, scan_keys
from cxr_max.trajectories.parse import is_refusal, split_answer
from cxr_max.trajectories.schema import TASKS, normalize_record, utc_now


@dataclasses.dataclass
class TeacherSummary:
    """Counts for one teacher in one run."""

    name: str
    version: str = ""
    planned: int = 0           # keys of this shard for this teacher
    skipped_existing: int = 0  # already in the output (resume)
    ok: int = 0
    failed: int = 0
    refusals: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: int = 0
    failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def fail(self, reason: str, where: str) -> None:
        self.failed += 1
        self.failures[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(where)


@dataclasses.dataclass
class Summary:
    """What a collection run did (also what ``cxr-max distill`` prints and writes as summary JSON)."""

    out_dir: str
    shard: tuple[int, int]
    images: int = 0
    teachers: dict[str, TeacherSummary] = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0
    scan_s: float = 0.0
    scanned_rows: int = 0
    repaired_tails: int = 0

    @property
    def ok(self) -> int:
        return sum(t.ok for t in self.teachers.values())

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.teachers.values())

    @property
    def skipped_existing(self) -> int:
        return sum(t.skipped_existing for t in self.teachers.values())

    @property
    def records_per_s(self) -> float:
        return (self.ok + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def failures_by_reason(self) -> dict[str, int]:
        total: collections.Counter = collections.Counter()
        for t in self.teachers.values():
            total.update(t.failures)
        return dict(total.most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir, "shard": list(self.shard), "images": self.images,
            "ok": self.ok, "failed": self.failed, "skipped_existing": self.skipped_existing,
            "elapsed_s": round(self.elapsed_s, 3), "records_per_s": round(self.records_per_s, 2),
            "scan_s": round(self.scan_s, 3), "scanned_rows": self.scanned_rows, "repaired_tails": self.repaired_tails,
            "failures_by_reason": self.failures_by_reason,
            "teachers": {n: {k: (dict(v) if isinstance(v, collections.Counter) else v)
                             for k, v in dataclasses.asdict(t).items()} for n, t in self.teachers.items()},
        }

    def render(self, console: Console) -> None:
        """Print the final summary table (counts, failures by reason, tokens where reported)."""
        table = Table(title=f"collection summary (shard {self.shard[0]}/{self.shard[1]}, {self.images} images)")
        for col in ("teacher", "version", "planned", "existing", "ok", "failed", "refusals", "retries", "tokens in/out"):
            table.add_column(col, justify="left" if col in ("teacher", "version") else "right")
        for t in self.teachers.values():
            tokens = f"{t.prompt_tokens}/{t.completion_tokens}" if t.usage_reported else "not reported"
            table.add_row(t.name, t.version, str(t.planned), str(t.skipped_existing), str(t.ok), str(t.failed),
                          str(t.refusals), str(t.retries), tokens)
        console.print(table)
        console.print(f"{self.ok} ok, {self.failed} failed, {self.skipped_existing} already present; "
                      f"{self.records_per_s:.1f} records/s over {self.elapsed_s:.1f}s "
                      f"(resume scan of {self.scanned_rows} rows: {self.scan_s:.2f}s)")
        for t in self.teachers.values():
            for reason, n in t.failures.most_common():
                console.print(f"  [red]{t.name}[/red]: {n} x {reason}  (e.g. {'; '.join(t.examples.get(reason, []))})")


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} rec/s", style="cyan")


def _make_progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[red]failed {task.fields[failed]}"), _RateColumn(), TimeRemainingColumn(),
        console=console, disable=not enabled, refresh_per_second=4,
    )


def _resolve_images(images: Iterable[ImageItem] | str | os.PathLike, frontal_only: bool, limit: int | None
                    ) -> list[ImageItem]:
    if isinstance(images, (str, os.PathLike)):
        return list_images(images, frontal_only=frontal_only, limit=limit)
    items = list({it.dicom_id: it for it in images}.values())  # one entry per image
    if frontal_only:
        items = [it for it in items if it.view in ("PA", "AP")]
    return items[:limit] if limit is not None else items


def _validate_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = int(shard[0]), int(shard[1])
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    return i, n


async def acollect(
    registry: Registry | str | os.PathLike,
    images: Iterable[ImageItem] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] = ("diagnose",),
    samples: int = 1,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = True,
    teachers: Sequence[str] | None = None,
    base_url: str | None = None,
    allowed_hosts: Sequence[str] = (),
    allow_remote: bool = False,
    frontal_only: bool = False,
    limit: int | None = None,
    flush_interval: float = 0.2,
    retry_budget: tuple[float, int] = (0.5, 100),
    backoff_s: float = 0.5,
    progress: bool = True,
    console: Console | None = None,
) -> Summary:
    """The async form of :func:`collect` (same arguments)."""
    console = console or Console(stderr=True)
    reg = registry if isinstance(registry, Registry) else load_registry(registry)
    reg = reg.select(list(teachers or [])).with_base_url(base_url)
    shard = _validate_shard(shard)
    bad_tasks = [t for t in tasks if t not in TASKS]
    if bad_tasks or not tasks:
        raise ValueError(f"unknown task(s) {bad_tasks}; choose from {list(TASKS)}")
    if samples < 1:
        raise ValueError("samples must be >= 1")
    for spec in reg:  # refuse before any image leaves the machine, and before any work
        check_endpoint(spec.base_url, teacher=spec.name, allowed_hosts=allowed_hosts, allow_remote=allow_remote)
        spec.api_key()  # a missing key variable is an error naming the teacher, up front
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = [it for it in _resolve_images(images, frontal_only, limit) if shard_of(it.dicom_id, shard[1]) == shard[0]]
    summary = Summary(out_dir=str(out), shard=shard, images=len(items))

    t0 = time.perf_counter()
    state = scan_keys(out)
    summary.scan_s, summary.scanned_rows = time.perf_counter() - t0, state.rows
    done = state.done(retry_failed)

    writers: dict[str, ShardWriter] = {}
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
    progress_bar = _make_progress(console, progress)
    data_url = functools.lru_cache(maxsize=1024)(image_data_url)
    try:
        for spec in reg:
            writers[spec.name] = ShardWriter(out, spec.name, shard)
            summary.repaired_tails += bool(writers[spec.name].repaired_bytes)
        async with aiohttp.ClientSession(connector=connector, json_serialize=json.dumps) as session:
            stop = asyncio.Event()
            flusher = asyncio.create_task(_flush_loop(writers, flush_interval, stop))
            with progress_bar:
                runs = [
                    _run_teacher(spec, session, items, tasks, samples, done, writers[spec.name], summary,
                                 progress_bar, data_url, RetryBudget(*retry_budget), backoff_s, console)
                    for spec in reg
                ]
                await asyncio.gather(*runs)
            stop.set()  # let the flusher finish the batch it is writing (never cancel it mid-write)
            await flusher
    finally:
        for w in writers.values():
            w.close()  # final flush + fsync, also on Ctrl-C
        summary.elapsed_s = time.perf_counter() - started
    return summary


async def _flush_loop(writers: dict[str, ShardWriter], interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
        for w in writers.values():
            lines = w.take()
            if lines:
                await asyncio.to_thread(w.write_lines, lines)


async def _run_teacher(spec: TeacherSpec, session: aiohttp.ClientSession, items: list[ImageItem],
                       tasks: Sequence[str], samples: int, done: set, writer: ShardWriter, summary: Summary,
                       progress: Progress, data_url, budget: RetryBudget, backoff_s: float, console: Console) -> None:
    ts = summary.teachers[spec.name] = TeacherSummary(name=spec.name, version=spec.version)
    work: collections.deque = collections.deque()
    for it in items:
        for task in tasks:
            for s in range(samples):
                ts.planned += 1
                if (it.dicom_id, spec.name, task, s) in done:
                    ts.skipped_existing += 1
                else:
                    work.append((it, task, s))
    tid = progress.add_task(spec.name, total=len(work), failed=0)
    if not work:
        return
    client = TeacherClient(spec, session, budget=budget, backoff_s=backoff_s)

    def record(it: ImageItem, task: str, s: int, prompt: str | None, **fields) -> dict:
        return normalize_record({
            "subject_id": it.subject_id, "study_id": it.study_id, "dicom_id": it.dicom_id,
            "teacher": spec.name, "teacher_version": ts.version, "collected_at": utc_now(),
            "task": task, "sample": s, "prompt": prompt, **fields,
        })

    def failed(it: ImageItem, task: str, s: int, prompt: str | None, reason: str, detail: str,
               raw: str | None = None) -> None:
        writer.add(record(it, task, s, prompt, status="failed", error=f"{reason}: {detail}" if detail else reason,
                          raw=raw))
        ts.fail(reason, f"image {it.dicom_id}")
        progress.update(tid, advance=1, failed=ts.failed)

    # Is the server up, does it serve the model, and which version is it?
    try:
        models = await client.list_models()
        served = {m.get("id"): m for m in models if isinstance(m, dict)}
        if spec.model not in served:
            raise RequestFailed("model_not_served", f"{spec.base_url} serves {sorted(served)[:10]}, not {spec.model!r}")
        if spec.version == "auto":
            m = served[spec.model]
            ts.version = str(m.get("version") or m.get("root") or f"{spec.model}@{m.get('created', '?')}")
    except RequestFailed as e:
        console.print(f"[red]teacher {spec.name!r} ({spec.base_url}): {e.reason}: {e.detail}; "
                      f"recording {len(work)} failure rows (rerun to retry)[/red]")
        for it, task, s in work:
            failed(it, task, s, None, e.reason, e.detail)
        return

    async def worker() -> None:
        while work:
            it, task, s = work.popleft()
            prompt = None
            try:
                url = data_url(it.path)
                prompt, messages = build_messages(task, url, it.diagnoses, spec.prompt_template)
                result = await client.complete(messages, sample=s)
            except DataError as e:
                failed(it, task, s, prompt, "image_unreadable", f"teacher {spec.name}, image {it.dicom_id}: {e}")
                continue
            except RequestFailed as e:
                failed(it, task, s, prompt, e.reason, e.detail, raw=e.raw)
                continue
            reasoning, answer = split_answer(result.text)
            refusal = is_refusal(result.text)
            writer.add(record(it, task, s, prompt, reasoning=reasoning, answer=answer, raw=result.text,
                              refusal=refusal, status="ok", prompt_tokens=result.prompt_tokens,
                              completion_tokens=result.completion_tokens))
            ts.ok += 1
            ts.refusals += refusal
            if result.prompt_tokens is not None or result.completion_tokens is not None:
                ts.usage_reported += 1
                ts.prompt_tokens += result.prompt_tokens or 0
                ts.completion_tokens += result.completion_tokens or 0
            progress.update(tid, advance=1)

    try:
        await asyncio.gather(*(worker() for _ in range(min(spec.max_concurrency, len(work)))))
    finally:
        ts.retries = client.retries


def collect(
    registry: Registry | str | os.PathLike,
    images: Iterable[ImageItem] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] = ("diagnose",),
    samples: int = 1,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = True,
    **kwargs: Any,
) -> Summary:
    """Ask every teacher of ``registry`` about every image, resumably; return the run's :class:`Summary`.

    ``registry``: a :class:`Registry`, a bundled name (``"sim"``, ``"vllm"``) or a YAML path.
    ``images``: :class:`ImageItem` s or a MIMIC-CXR-JPG root. ``tasks``: of ``diagnose``/``explain``/
    ``report``; ``samples``: completions per (image, teacher, task), sent as the request ``seed``.
    ``shard=(i, n)``: this process's share of the images. ``retry_failed``: ask again keys that only
    have failure rows. Other keyword arguments: see :func:`acollect` (``teachers``, ``base_url``,
    ``allowed_hosts``, ``allow_remote``, ``frontal_only``, ``limit``, ``flush_interval``,
    ``retry_budget``, ``backoff_s``, ``progress``, ``console``).
    """
    return asyncio.run(acollect(registry, images, out_dir, tasks=tasks, samples=samples, shard=shard,
                                retry_failed=retry_failed, **kwargs))

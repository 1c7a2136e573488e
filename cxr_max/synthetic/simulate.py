"""Write the simulated teachers' trajectories as canonical JSONL shards (offline, no HTTP)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cxr_max.labels import CHEXPERT_LABELS
from cxr_max.synthetic.teachers import SIM_TEACHERS, SimulatedTeacher, compose_parts
from cxr_max.synthetic.world import ImageTruth, load_truth
from cxr_max.trajectories.parse import split_answer
from cxr_max.trajectories.prompts import render_prompt
from cxr_max.trajectories.schema import normalize_record

SHARD_SIZE = 5000
# The simulated collection runs over 120 days; collected_at follows the study stream.
_COLLECTION_START = dt.datetime(2025, 8, 1, tzinfo=dt.timezone.utc)
_COLLECTION_DAYS = 120


def progress_bar() -> Progress:
    """The rich progress bar the synthetic builders share (transient)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _diagnoses(truth: ImageTruth) -> list[str]:
    return [n for n in CHEXPERT_LABELS if n != "No Finding" and truth.labels.get(n) == 1.0]


def trajectory_records(teacher: SimulatedTeacher, truths: Iterable[ImageTruth], *, tasks: Sequence[str] = ("diagnose",),
                       samples: int = 1, seed: int = 0, teacher_index: int = 0):
    """Yield canonical trajectory records of ``teacher`` for every image x task x sample (stream order in)."""
    prompts = {"diagnose": render_prompt("diagnose"), "report": render_prompt("report")}
    for truth in truths:
        at = _COLLECTION_START + dt.timedelta(days=truth.stream_pos * _COLLECTION_DAYS, minutes=teacher_index)
        collected_at = at.isoformat(timespec="seconds")
        for task in tasks:
            prompt = prompts.get(task) or render_prompt(task, _diagnoses(truth))
            for sample in range(samples):
                call = teacher._decide(truth, task, sample, seed)
                reasoning, answer, raw = compose_parts(teacher, truth, call, task, sample, seed)
                if reasoning is None:  # a refusal: parse it like any collected completion
                    reasoning, answer = split_answer(raw)
                rec = {
                    "subject_id": truth.subject_id, "study_id": truth.study_id, "dicom_id": truth.dicom_id,
                    "teacher": teacher.name, "teacher_version": teacher.version, "collected_at": collected_at,
                    "task": task, "sample": sample, "prompt": prompt, "reasoning": reasoning, "answer": answer,
                    "raw": raw, "refusal": call.refused, "status": "ok", "error": None,
                    "prompt_tokens": None, "completion_tokens": None,
                    "labels": None if call.refused else call.labels,
                    "laterality": None if call.refused else call.laterality,
                }
                yield normalize_record(rec)


def simulate_trajectories(root: str | Path, out_dir: str | Path | None = None, *, teachers: Sequence[str] | None = None,
                          tasks: Sequence[str] = ("diagnose",), samples: int = 1, seed: int = 0,
                          truth: dict[str, ImageTruth] | None = None) -> Path:
    """Write every image x teacher x task x sample trajectory under ``out_dir`` (default ``root/trajectories``).

    Layout: ``{out_dir}/{teacher}/part-00000.jsonl``, ... (``SHARD_SIZE`` records per shard), images in
    stream order so ``collected_at`` increases along the stream. Labels and laterality come from
    :meth:`SimulatedTeacher.claims`; refusals carry ``labels = laterality = null``. Returns ``out_dir``.
    """
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root / "trajectories"
    names = list(teachers) if teachers is not None else list(SIM_TEACHERS)
    unknown = [n for n in names if n not in SIM_TEACHERS]
    if unknown:
        raise ValueError(f"unknown simulated teacher(s) {unknown}; known: {list(SIM_TEACHERS)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    truths = sorted((truth if truth is not None else load_truth(root)).values(),
                    key=lambda t: (t.stream_pos, t.study_id, t.dicom_id))
    total = len(truths) * len(names) * len(tasks) * samples
    with progress_bar() as bar:
        job = bar.add_task("simulating teachers", total=total)
        for ti, name in enumerate(names):
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("part-*.jsonl"):
                old.unlink()
            shard, lines = 0, []
            for rec in trajectory_records(SIM_TEACHERS[name], truths, tasks=tasks, samples=samples, seed=seed,
                                          teacher_index=ti):
                lines.append(json.dumps(rec, ensure_ascii=False))
                if len(lines) >= SHARD_SIZE:
                    (folder / f"part-{shard:05d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
                    bar.advance(job, len(lines))
                    shard, lines = shard + 1, []
            if lines or shard == 0:
                (folder / f"part-{shard:05d}.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""),
                                                                 encoding="utf-8")
                bar.advance(job, len(lines))
    return out

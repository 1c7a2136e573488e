"""Evaluate a checkpoint, or a teacher's stored trajectories, on a split of a cxr_max builder config.

This is the library behind ``recipes/evaluate.py`` and ``recipes/benchmark.py``; the recipes only parse
flags and call :func:`evaluate`.

What it measures (every headline number carries a 95 % percentile-bootstrap interval computed with
:func:`cxr_max.evaluation.clinical.bootstrap_resample_weights`, resampling images):

- **presence accuracy per finding**: a finding is predicted present when the label extractor
  (:func:`cxr_max.evaluation.labeler.label_reports`) reads it as positive (1.0); images whose true label is
  uncertain (-1.0) are left out of that finding; a refusal or empty answer predicts nothing present
  (:func:`presence_accuracy`, the project's one presence accuracy). ``Avg`` is the mean over findings,
  bootstrapped on the same resamples.
- **label F1** (:func:`clinical_metrics`) of the extracted labels against the truth labels of the ``mimic``
  config (14 CheXpert labels and the 5 common findings).
- **report metrics** (:func:`report_metrics`: BLEU, ROUGE-L, CIDEr-D) of the answer against the report
  text, when the images have reports.
- **MS-CXR-T** (config ``ms_cxr_t``): the tiny students take one image, so a pair is judged by comparing
  two single-image answers: each finding's state is read from each answer (absent 0, uncertain 0.5,
  "small"/"mild" 1, present without a grade or "moderate" 2, "large"/"severe" 3) and the pair is called
  *worsening* when the current state is higher than the previous one, *improving* when lower, *stable*
  when equal (:func:`cxr_max.evaluation.clinical.finding_state` and ``pair_progression``). That class is scored
  with :func:`ms_cxr_t_metrics` (top-1 and class-balanced accuracy).
- **consistency** (:func:`agreement`): the share of (image, finding) whose extracted presence is the same
  in every run (paraphrased prompts, or sampling seeds).

Predictions are written to a JSONL file, one line per image keyed by ``dicom_id``, appended after every
batch; a rerun reads the file and generates only the missing keys (so a killed run resumes). A torn last
line (killed mid-write) is cut off and regenerated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_max.errors import DataError, OnError, SkipLog, handle
from cxr_max.evaluation.clinical import percentile_ci, bootstrap_resample_weights, clinical_metrics, ms_cxr_t_metrics
from cxr_max.evaluation.predict import TABLE_FINDINGS, user_message
from cxr_max.evaluation.probe import finding_metrics
from cxr_max.labels import MS_CXR_T_FINDINGS, label_key
from cxr_max.trajectories.prompts import render_prompt

# Paraphrases of the authors' diagnosis prompt, for the consistency check (the first is the training prompt).
PARAPHRASES: tuple[str, ...] = (
    render_prompt("diagnose"),
    "This is a chest X-ray of a patient <image>. Please determine which diseases the patient has.",
    "Here is the patient's chest radiograph <image>. What is the patient's disease?",
)
CONFIGS = ("mimic", "studies", "trajectories", "sft", "ms_cxr_t")


# --------------------------------------------------------------------------------------------------
# Resumable predictions file
# --------------------------------------------------------------------------------------------------


def read_predictions(path: str | Path, *, repair: bool = False) -> dict[str, dict]:
    """Read a predictions JSONL file into ``{key: record}`` (key = the record's ``key``, else ``dicom_id``).

    Every complete line must be UTF-8 JSON with a ``dicom_id`` and a string ``answer``; otherwise a
    :class:`DataError` names the file and line. A last line without its newline is a write cut short by a
    kill: with ``repair=True`` it is cut off the file (its image is generated again), else it is an error.
    A missing file is an empty result.
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if not repair:
            raise DataError("last line is incomplete (a write cut short?)", path=path, row=data.count(b"\n") + 1)
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    out: dict[str, dict] = {}
    for i, raw in enumerate(data.split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"line is not valid UTF-8 ({e.reason} at byte {e.start})", path=path, row=i) from e
        except json.JSONDecodeError as e:
            raise DataError(f"line is not valid JSON ({e.msg})", path=path, row=i) from e
        if not isinstance(rec, dict) or not rec.get("dicom_id") or not isinstance(rec.get("answer"), str):
            raise DataError("a prediction needs a 'dicom_id' and a string 'answer'", path=path, row=i)
        out[str(rec.get("key") or rec["dicom_id"])] = rec
    return out


def append_predictions(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append records as JSON lines in one write, then flush to disk (so a kill loses at most this batch)."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


class Generator:
    """An image-text-to-text checkpoint loaded once, answering one prompt per image in batches.

    The model loads on ``device`` (default: ``cuda`` when visible) in ``dtype`` (``"auto"``: bfloat16 on a GPU,
    float32 on the CPU) and every batch is moved there (:mod:`cxr_max.generation`). ``unfinished`` counts the
    answers that hit ``max_new_tokens`` without an end token (they are kept: the labeler reads what is there).
    """

    def __init__(self, model_dir: str | Path, *, max_new_tokens: int = 192, dtype: str | None = "auto",
                 device: str | None = None):
        import torch

        from cxr_max.generation import load_generator

        self.torch = torch
        self.model_dir = str(model_dir)
        self.model, self.processor = load_generator(self.model_dir, dtype=dtype, device=device)
        self.tok = getattr(self.processor, "tokenizer", self.processor)
        self.max_new_tokens = max_new_tokens
        self.unfinished = 0

    def __call__(self, images: Sequence, prompt: str, *, do_sample: bool = False, temperature: float = 1.0,
                 seed: int = 0) -> list[str]:
        """Answers for ``images`` (PIL images) to ``prompt`` (with ``<image>`` where the image goes)."""
        from cxr_max.generation import generate_texts

        text = self.processor.apply_chat_template(user_message(prompt), add_generation_prompt=True, tokenize=False)
        self.torch.manual_seed(seed)
        batch = [im.convert("RGB") for im in images]
        answers, finished = generate_texts(self.model, self.processor, [text] * len(batch), batch,
                                           max_new_tokens=self.max_new_tokens, do_sample=do_sample,
                                           temperature=temperature)
        self.unfinished += finished.count(False)
        return answers


def predict_images(
    generate: Callable[..., list[str]],
    keys: Sequence[str],
    images: Sequence,
    path: str | Path,
    *,
    prompt: str | None = None,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
    description: str = "generating",
) -> dict[str, str]:
    """Answer every image whose key is not yet in ``path``; append each batch; return ``{key: answer}``.

    ``generate(images, prompt, do_sample=, temperature=, seed=)`` is usually a :class:`Generator`. Batch b
    is sampled with seed ``seed * 1_000_003 + b`` counted over the missing keys, so a run is deterministic
    given its seed and its predictions file.
    """
    from rich.progress import Progress

    if len(keys) != len(images):
        raise DataError(f"{len(keys)} keys for {len(images)} images", path=path)
    prompt = prompt or PARAPHRASES[0]
    done = read_predictions(path, repair=True)
    todo = [i for i, k in enumerate(keys) if k not in done]
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=len(keys), completed=len(keys) - len(todo))
        for b, start in enumerate(range(0, len(todo), batch_size)):
            idx = todo[start : start + batch_size]
            answers = generate([images[i] for i in idx], prompt, do_sample=do_sample, temperature=temperature,
                               seed=seed * 1_000_003 + b)
            recs = [{"key": keys[i], "dicom_id": keys[i].split("|")[0], "answer": a, **(extra or {})}
                    for i, a in zip(idx, answers)]
            append_predictions(path, recs)
            done.update({r["key"]: r for r in recs})
            bar.advance(task, len(idx))
    return {k: done[k]["answer"] for k in keys}


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _check_pairs(predictions: Sequence, truths: Sequence, where: str) -> None:
    if len(predictions) != len(truths):
        raise DataError(f"{len(predictions)} predictions but {len(truths)} truth rows; they must pair up one to one",
                        path=where)
    if not predictions:
        raise DataError("no predictions to score", path=where)


def as_text(value: Any, where: str = "predictions", row: int | None = None) -> str:
    """A prediction as ``str``: UTF-8 bytes are decoded; other bytes or types raise :class:`DataError`."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError("prediction is not valid UTF-8", path=where, row=row) from e
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"prediction must be text, got {type(value).__name__}", path=where, row=row)
    return value


def extract_labels(predictions: Sequence[Any], where: str = "predictions") -> list[dict[str, float | None]]:
    """The 14 CheXpert labels the rule labeler reads from each prediction (checked with :func:`as_text`)."""
    from cxr_max.evaluation.labeler import label_reports

    return label_reports([as_text(p, where, i) for i, p in enumerate(predictions)])


def presence_accuracy(
    pred_labels: Sequence[Mapping[str, float | None]],
    truths: Sequence[Mapping[str, float | None]],
    findings: Sequence[str] = TABLE_FINDINGS,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Presence accuracy per finding and ``Avg`` as ``{"value", "ci_low", "ci_high", "n"}`` (module docstring):
    the ``accuracy`` of :func:`cxr_max.evaluation.probe.finding_metrics`, which computes it with the same rule
    and resamples."""
    _check_pairs(pred_labels, truths, "predictions")
    metrics = finding_metrics(pred_labels, truths, findings, n_boot=n_boot, seed=seed)
    return {key: {**metrics[key]["accuracy"], "n": metrics[key]["n"]} for key in (*findings, "Avg")}


def agreement(
    runs: Sequence[Sequence[Mapping[str, float | None]]],
    findings: Sequence[str] = TABLE_FINDINGS,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Share of (image, finding) whose extracted presence is identical in every run, with a bootstrap CI
    over images. ``runs[r][i]`` is the label dict of image i in run r (runs = prompts or sampling seeds)."""
    if len(runs) < 2:
        raise ValueError("agreement needs at least two runs")
    n = len(runs[0])
    if any(len(r) != n for r in runs):
        raise DataError("runs have different numbers of images", path="runs")
    if n == 0:
        raise DataError("no images to compare", path="runs")
    per_image = np.array([
        np.mean([len({(r[i] or {}).get(f) == 1.0 for r in runs}) == 1 for f in findings]) for i in range(n)
    ])
    w = bootstrap_resample_weights(n, n_boot, seed)
    return {**percentile_ci(float(per_image.mean()), (w @ per_image) / n), "n": n, "runs": len(runs)}


def pair_records(rows: Sequence[Mapping[str, Any]], answers: Mapping[str, str], *, on_error: OnError = "raise",
                 skips: SkipLog | None = None) -> list[dict]:
    """MS-CXR-T records for :func:`ms_cxr_t_metrics`: one per (pair, finding with a label), holding the
    single-image answers on the current (``answer``) and previous (``previous_answer``) image, which
    :func:`cxr_max.evaluation.clinical.read_progression` compares.

    ``rows`` are ``ms_cxr_t`` config rows (ids and ``{finding}_progression``); ``answers`` maps a dicom_id
    to its single-image answer. A pair whose image has no answer raises, or is counted under "skip".
    """
    out = []
    for i, row in enumerate(rows):
        try:
            for key in ("previous_dicom_id", "dicom_id"):
                if row.get(key) not in answers:
                    raise DataError(f"no answer for {key}={row.get(key)} (image missing?)", path="ms_cxr_t", row=i,
                                    kind="MS-CXR-T pair with an image that has no answer")
        except DataError as err:
            handle(err, on_error, skips)
            continue
        prev, cur = as_text(answers[row["previous_dicom_id"]]), as_text(answers[row["dicom_id"]])
        for f in MS_CXR_T_FINDINGS:
            label = row.get(f"{label_key(f)}_progression")
            if label:
                out.append({"dicom_id": row["dicom_id"], "previous_dicom_id": row["previous_dicom_id"], "finding": f,
                            "label": label, "answer": cur, "previous_answer": prev})
    return out


def score_answers(
    answers: Sequence[Any],
    truths: Sequence[Mapping[str, float | None]],
    *,
    reports: Sequence[str] | None = None,
    findings: Sequence[str] = TABLE_FINDINGS,
    n_boot: int = 1000,
    seed: int = 0,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
) -> dict[str, Any]:
    """Presence accuracy with CIs, label F1 and (with ``reports``) report metrics of one set of answers.

    Mismatched counts or no answers raise :class:`DataError`; a non-UTF-8 answer raises (naming its row);
    report-metric problems (empty answer, runaway length) follow ``on_error`` and are counted in ``skips``.
    """
    from cxr_max.evaluation.nlg_metrics import report_metrics

    _check_pairs(answers, truths, "predictions")
    labels = extract_labels(answers)
    out: dict[str, Any] = {"n": len(answers), "accuracy": presence_accuracy(labels, truths, findings, n_boot=n_boot,
                                                                              seed=seed)}
    out["label_f1"] = clinical_metrics(labels, truths, n_boot=n_boot, seed=seed)
    if reports is not None and any(r and r.strip() for r in reports):
        local = SkipLog()
        try:
            out["report"] = report_metrics([as_text(a) for a in answers], list(reports), meteor=False,
                                           on_error=on_error, skips=local)
        except DataError as err:
            if on_error == "raise":
                raise
            local.add(str(err))
            out["report"] = None
        out["report_skips"] = dict(local.counts)
        if skips is not None:
            skips.merge(local)
    out["refusals_or_empty"] = int(sum(not any(v is not None for v in lab.values()) for lab in labels))
    # How many different sets of positive findings the answers state: 1 means the same answer for every image
    # (an image-blind model).
    out["distinct_label_sets"] = len({tuple(sorted(k for k, v in lab.items() if v == 1.0)) for lab in labels})
    return out


def majority_baseline(truths: Sequence[Mapping[str, float | None]], findings: Sequence[str] = TABLE_FINDINGS,
                      *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Presence accuracy of the best image-blind answer: each finding called present iff most images have it."""
    calls = {}
    for f in findings:
        pos = sum(t.get(f) == 1.0 for t in truths)
        neg = sum(t.get(f) != 1.0 and t.get(f) != -1.0 for t in truths)
        calls[f] = 1.0 if pos > neg else 0.0
    return presence_accuracy([calls] * len(truths), truths, findings, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------------------------------
# Data and the evaluate() entry point
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalData:
    """Images to evaluate on, aligned with their truth labels and reports (and MS-CXR-T pair rows)."""

    keys: list[str]
    images: list
    truths: list[dict]
    reports: list[str] | None
    pairs: list[dict] | None = None


def load_eval_data(config: str = "mimic", split: str = "test", *, data_dir: str | None = None,
                   trajectories: str | None = None, ms_cxr_t: str | None = None, limit: int | None = None,
                   seed: int = 0, with_images: bool = True) -> EvalData:
    """Frontal images of ``split`` in builder config ``config`` with truth labels from the ``mimic`` config.

    ``ms_cxr_t`` (config) evaluates every image of every pair (both splits' images may appear; MS-CXR-T has
    no split); ``limit`` keeps the first N images (first N pairs for ``ms_cxr_t``).
    """
    import cxr_max

    if config not in CONFIGS:
        raise ValueError(f"config must be one of {CONFIGS}, not {config!r}")
    common = {"data_dir": data_dir, "seed": seed}
    mimic = cxr_max.load_dataset("mimic", images="decode" if with_images else "path", **common,
                                 **({"split": split, "views": "frontal"} if config != "ms_cxr_t" else {}))
    if config == "ms_cxr_t":
        from datasets import concatenate_datasets

        mimic = concatenate_datasets([mimic[s] for s in mimic])
        # where the pairs come from (a given CSV, or the default synthetic world's) is cxr_max.sources' call
        pairs_all = cxr_max.load_dataset("ms_cxr_t", images="path", ms_cxr_t=ms_cxr_t, **common)
        pairs_ds = concatenate_datasets([pairs_all[s] for s in pairs_all])  # MS-CXR-T has no official split
        pairs = [dict(r) for r in pairs_ds.remove_columns(["image", "previous_image"])]
        if limit:
            pairs = pairs[:limit]
        wanted = list(dict.fromkeys(k for p in pairs for k in (p["previous_dicom_id"], p["dicom_id"])))
    else:
        pairs = None
        if config == "mimic":
            wanted = None
        else:
            kw = {"trajectories": trajectories} if trajectories else {}
            other = cxr_max.load_dataset(config, split=split, images="path", **common, **kw)
            wanted = list(dict.fromkeys(other["dicom_id"]))
    ids = list(mimic["dicom_id"])
    pos = {d: i for i, d in enumerate(ids)}
    order = [pos[d] for d in (wanted if wanted is not None else ids) if d in pos]
    if limit and config != "ms_cxr_t":
        order = order[:limit]
    sub = mimic.select(order)
    reports = sub["report"] if "report" in sub.column_names else None
    return EvalData(keys=list(sub["dicom_id"]), images=list(sub["image"]) if with_images else [],
                    truths=[dict(x) for x in sub["labels"]], reports=reports, pairs=pairs)


def teacher_answers(teacher: str, keys: Sequence[str], *, split: str | None, data_dir: str | None = None,
                    trajectories: str | None = None, seed: int = 0, sample: int = 0) -> dict[str, str]:
    """``{dicom_id: raw trajectory}`` of ``teacher`` (task diagnose, sample ``sample``) for ``keys``.

    An image the teacher has no trajectory for raises :class:`DataError` (the table would be unfair)."""
    import cxr_max

    kw = {"data_dir": data_dir, "seed": seed, "images": "path", "teachers": [teacher], "check_images": "none"}
    if trajectories:
        kw["trajectories"] = trajectories
    ds = cxr_max.load_dataset("trajectories", **kw, **({"split": split} if split else {}))
    if split is None:
        from datasets import concatenate_datasets

        ds = concatenate_datasets([ds[s] for s in ds])
    ds = ds.select_columns(["dicom_id", "task", "sample", "raw"])
    got = {r["dicom_id"]: r["raw"] or "" for r in ds if r["sample"] == sample and r["task"] == "diagnose"}
    missing = [k for k in keys if k not in got]
    if missing:
        raise DataError(f"teacher {teacher!r} has no trajectory for {len(missing)} image(s), e.g. {missing[0]}",
                        path=trajectories or "trajectories")
    return {k: got[k] for k in keys}


def evaluate(
    model: str | None = None,
    *,
    teacher: str | None = None,
    out_dir: str | Path,
    config: str = "mimic",
    split: str = "test",
    data_dir: str | None = None,
    trajectories: str | None = None,
    ms_cxr_t: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 192,
    prompt: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    n_boot: int = 1000,
    findings: Sequence[str] = TABLE_FINDINGS,
    on_error: OnError = "raise",
    plots: bool = True,
    progress: bool = True,
    data: EvalData | None = None,
    generator: Generator | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (``model``) or a teacher (``teacher``) and write its outputs to ``out_dir``:

    ``predictions.jsonl`` (resumable), ``metrics.json``, ``metrics.md`` and ``accuracy.png``. Returns the
    metrics. ``data``/``generator`` let a caller reuse loaded images or a loaded model.
    """
    from cxr_max.evaluation.plots import plot_finding_bars

    if (model is None) == (teacher is None):
        raise ValueError("pass exactly one of model (a checkpoint folder) or teacher (a teacher name)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data or load_eval_data(config, split, data_dir=data_dir, trajectories=trajectories, ms_cxr_t=ms_cxr_t,
                                  limit=limit, seed=seed, with_images=model is not None)
    pred_path = out / "predictions.jsonl"
    if teacher is not None:
        got = teacher_answers(teacher, data.keys, split=None if config == "ms_cxr_t" else split, data_dir=data_dir,
                              trajectories=trajectories, seed=seed)
        done = read_predictions(pred_path, repair=True)
        append_predictions(pred_path, [{"key": k, "dicom_id": k, "answer": got[k], "teacher": teacher}
                                       for k in data.keys if k not in done])
        answers = got
    else:
        gen = generator or Generator(model, max_new_tokens=max_new_tokens)
        answers = predict_images(gen, data.keys, data.images, pred_path, prompt=prompt, batch_size=batch_size,
                                 do_sample=do_sample, temperature=temperature, seed=seed, progress=progress,
                                 extra={"model": str(model)})
    skips = SkipLog()
    ordered = [answers[k] for k in data.keys]
    metrics: dict[str, Any] = {"name": name or teacher or str(model), "config": config, "split": split,
                               "n_images": len(data.keys), "do_sample": do_sample, "seed": seed}
    metrics.update(score_answers(ordered, data.truths, reports=data.reports, findings=findings, n_boot=n_boot,
                                 seed=seed, on_error=on_error, skips=skips))
    if data.pairs is not None:
        recs = pair_records(data.pairs, answers, on_error=on_error, skips=skips)
        metrics["ms_cxr_t"] = ms_cxr_t_metrics(recs, on_error=on_error, skips=skips, n_boot=n_boot, seed=seed)
    metrics["skipped"] = dict(skips.counts)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "metrics.md").write_text(metrics_markdown({metrics["name"]: metrics["accuracy"]}, findings))
    if plots:
        plot_finding_bars({metrics["name"]: metrics["accuracy"]}, out / "accuracy.png", findings=findings,
                          title=f"Presence accuracy ({config}/{split}, {len(data.keys)} images)")
    if skips.total:
        print(skips.summary())
    return metrics


def fmt_ci(c: Mapping[str, float], digits: int = 2) -> str:
    """``0.81 [0.74, 0.88]``."""
    v, lo, hi = c.get("value", np.nan), c.get("ci_low", np.nan), c.get("ci_high", np.nan)
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def metrics_markdown(rows: Mapping[str, Mapping[str, Mapping[str, float]]], findings: Sequence[str] = TABLE_FINDINGS,
                     *, intervals: bool = True) -> str:
    """A markdown table: one row per model, one column per finding plus Avg (value [95% CI])."""
    cols = list(findings) + ["Avg"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, acc in rows.items():
        cells = [fmt_ci(acc[c]) if intervals else f"{acc[c]['value']:.2f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_interval(values: Sequence[float], bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """Mean over seeds with a 95 % t-interval (half-width t * sd / sqrt(n)); n=1 gives a zero-width interval.

    ``bounds`` clips the interval to the values' range (``(0, 1)`` for shares: with two seeds a t-interval
    easily runs past them)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    if v.size == 1:
        return {"value": float(v[0]), "ci_low": float(v[0]), "ci_high": float(v[0]), "n": 1}
    from scipy import stats

    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    low, high = v.mean() - half, v.mean() + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"value": float(v.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(v.size)}

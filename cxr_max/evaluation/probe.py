"""Metrics that can tell: balanced accuracy and macro-F1 per finding, and a phrasing-independent likelihood probe.

**Why not accuracy alone.** Most findings are absent on most images, so a student that never calls a finding
present scores its prevalence complement (the "majority answer" row). Balanced accuracy (the mean of
sensitivity and specificity) puts every image-blind answer at exactly 0.5; macro-F1 (the mean of the F1 of
"present" and of "absent") also punishes a constant answer. :func:`finding_metrics` reports all three per
finding with bootstrap intervals over images.

**Likelihood probe.** Scoring generated text rewards a student that writes the findings in the words the
label extractor reads best (the consensus renderer's, for instance). :func:`likelihood_probe` asks the student
nothing: for each image and finding it scores a fixed set of "present" and "absent" answer templates
(:data:`PRESENT_TEMPLATES`, :data:`ABSENT_TEMPLATES`, in several phrasings) by the student's own mean
log-likelihood per token given the image and the diagnosis prompt. The finding is read as present when the
present templates are more likely. The score difference also gives a threshold-free AUC.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr_max.evaluation.clinical import bootstrap_resample_weights, percentile_ci
from cxr_max.labels import TABLE_FINDINGS

METRICS = ("balanced_accuracy", "accuracy", "macro_f1")

# Fixed templates of the probe; {name} is the finding in words (FINDING_WORDS). Several phrasings each, none
# of them the consensus renderer's sentence, so no student is favoured for echoing one wording. Each is scored
# as a whole answer in the dataset's trajectory format (``<think> reasoning </think>answer``, the format every
# teacher and the renderer share): the reasoning is the template sentence, the answer the authors' answer
# sentence naming the finding (present) or no disease (absent), so the probe asks in the format the student
# was trained on and only the phrasing is fixed.
PRESENT_TEMPLATES: tuple[str, ...] = (
    "Findings are consistent with {name}.",
    "There is evidence of {name}.",
    "{Name} is present.",
)
ABSENT_TEMPLATES: tuple[str, ...] = (
    "There is no {name}.",
    "No evidence of {name}.",
    "{Name} is not seen.",
)
FINDING_WORDS: dict[str, str] = {"Consolidation": "consolidation", "Pleural Effusion": "pleural effusion",
                                 "Pneumothorax": "pneumothorax", "Edema": "pulmonary edema",
                                 "Cardiomegaly": "cardiomegaly", "Atelectasis": "atelectasis"}


# -- metrics (pure) ---------------------------------------------------------------------------------------------

def binary_counts(pred: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> tuple:
    """(TP, FP, FN, TN) of boolean arrays; with ``weights`` ([B, n] resample counts) one value per resample."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    cells = [pred & truth, pred & ~truth, ~pred & truth, ~pred & ~truth]
    if weights is None:
        return tuple(float(c.sum()) for c in cells)
    return tuple(weights @ c.astype(np.int32) for c in cells)


def balanced_accuracy(tp, fp, fn, tn):
    """Mean of sensitivity ``tp / (tp + fn)`` and specificity ``tn / (tn + fp)``; NaN where a class is empty."""
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), np.nan)
        spec = np.where(tn + fp > 0, tn / np.where(tn + fp > 0, tn + fp, 1), np.nan)
    return 0.5 * (sens + spec)


def balanced_accuracy_of(pred, truth) -> float:
    """Balanced accuracy of boolean predictions against boolean truth (NaN when a class is missing)."""
    return float(balanced_accuracy(*binary_counts(pred, truth)))


def macro_f1(tp, fp, fn, tn):
    """Mean of the F1 of the positive class and of the negative class (an empty class's F1 is taken as 0)."""
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))

    def f1(a, b, c):
        d = 2 * a + b + c
        return np.where(d > 0, 2 * a / np.where(d > 0, d, 1), 0.0)

    return 0.5 * (f1(tp, fp, fn) + f1(tn, fn, fp))


def accuracy(tp, fp, fn, tn):
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    return np.where(n > 0, (tp + tn) / np.where(n > 0, n, 1), np.nan)


_METRIC_FNS = {"balanced_accuracy": balanced_accuracy, "accuracy": accuracy, "macro_f1": macro_f1}


def finding_metrics(pred: Sequence[Mapping[str, Any]], truths: Sequence[Mapping[str, float | None]],
                    findings: Sequence[str] = TABLE_FINDINGS, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per finding and ``Avg``: ``{metric: {"value", "ci_low", "ci_high"}, "n", "positives"}``.

    ``pred`` holds extracted labels per image (a finding is predicted present iff its value is 1.0, so
    a hedge, a negation or silence count as absent); images whose true label is uncertain (-1) are left out
    of that finding. Intervals: percentile bootstrap over images (the same resamples for every finding).
    """
    if len(pred) != len(truths):
        raise ValueError(f"{len(pred)} predictions for {len(truths)} truths")
    n = len(truths)
    w = bootstrap_resample_weights(n, n_boot, seed) if n else np.zeros((n_boot, 0), np.int32)
    out: dict[str, Any] = {}
    boots: dict[str, list] = {m: [] for m in METRICS}
    values: dict[str, list] = {m: [] for m in METRICS}
    for f in findings:
        t = np.array([tr.get(f) for tr in truths], dtype=object)
        keep = np.array([v != -1.0 for v in t], dtype=bool)
        y = np.array([v == 1.0 for v in t], dtype=bool) & keep
        p = np.array([(lab or {}).get(f) == 1.0 for lab in pred], dtype=bool) & keep
        wk = w * keep[None, :]
        cells = binary_counts(p[keep], y[keep])
        bcells = binary_counts(p, y, wk)  # left-out images weigh 0 in every resample
        rec: dict[str, Any] = {"n": int(keep.sum()), "positives": int(y.sum())}
        for m in METRICS:
            v = float(_METRIC_FNS[m](*cells))
            b = _METRIC_FNS[m](*bcells)
            rec[m] = percentile_ci(v, b)
            values[m].append(v)
            boots[m].append(b)
        out[f] = rec
    avg: dict[str, Any] = {"n": n}
    with warnings.catch_warnings():  # a resample without positives of some finding is NaN there: skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        for m in METRICS:
            avg[m] = percentile_ci(float(np.nanmean(values[m])), np.nanmean(np.vstack(boots[m]), axis=0))
    out["Avg"] = avg
    return out


def roc_auc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when a class is missing."""
    score, truth = np.asarray(score, float), np.asarray(truth, bool)
    pos, neg = score[truth], score[~truth]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


# -- the likelihood probe -----------------------------------------------------------------------------------

def template_texts(finding: str) -> tuple[list[str], list[str]]:
    """The probe's present and absent answers for ``finding``."""
    from cxr_max.trajectories.parse import join_answer
    from cxr_max.trajectories.prompts import answer_sentence

    name = FINDING_WORDS.get(finding, finding.lower())
    fill = {"name": name, "Name": name[0].upper() + name[1:]}
    return ([join_answer(t.format(**fill), answer_sentence([name])) for t in PRESENT_TEMPLATES],
            [join_answer(t.format(**fill), answer_sentence([])) for t in ABSENT_TEMPLATES])


def likelihood_scores(model_dir: str, images: Sequence, findings: Sequence[str] = TABLE_FINDINGS, *,
                      prompt: str | None = None, batch_size: int = 48) -> np.ndarray:
    """``[n_images, n_findings]``: mean log-likelihood per token of the present templates minus that of the
    absent templates (each a full assistant answer after the image and ``prompt``), averaged over templates."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cxr_max.evaluation.predict import user_message
    from cxr_max.trajectories.prompts import render_prompt

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "right"
    user = user_message(prompt or render_prompt("diagnose"))
    head = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    jobs = []  # (image index, finding index, sign, text)
    for fi, f in enumerate(findings):
        present, absent = template_texts(f)
        for sign, texts in ((1.0, present), (-1.0, absent)):
            for t in texts:
                full = processor.apply_chat_template(user + [{"role": "assistant", "content": t}], tokenize=False)
                jobs.append((fi, sign / len(texts), full))
    ims = [im.convert("RGB") for im in images]
    n_head = len(processor(text=[head], images=[ims[0]])["input_ids"][0]) if ims else 0
    scores = np.zeros((len(ims), len(findings)))
    flat = [(i, fi, s, text) for i in range(len(ims)) for fi, s, text in jobs]
    with torch.no_grad():
        for start in range(0, len(flat), batch_size):
            chunk = flat[start:start + batch_size]
            batch = processor(text=[c[3] for c in chunk], images=[ims[c[0]] for c in chunk], return_tensors="pt",
                              padding=True)
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            labels[:, :n_head] = -100  # score the answer only (every row shares the same head)
            logits = model(**batch).logits[:, :-1].float()
            target = labels[:, 1:]
            logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            mask = (target != -100).float()
            mean = (logp * mask).sum(1) / mask.sum(1).clamp(min=1)
            for (i, fi, s, _), v in zip(chunk, mean.tolist()):
                scores[i, fi] += s * v
    return scores


def probe_metrics(scores: np.ndarray, truths: Sequence[Mapping[str, float | None]],
                  findings: Sequence[str] = TABLE_FINDINGS, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """:func:`finding_metrics` of the probe's reading (present iff score > 0), plus ``auc`` per finding."""
    pred = [{f: 1.0 if scores[i, k] > 0 else 0.0 for k, f in enumerate(findings)} for i in range(len(truths))]
    out = finding_metrics(pred, truths, findings, n_boot=n_boot, seed=seed)
    aucs = []
    for k, f in enumerate(findings):
        keep = np.array([t.get(f) != -1.0 for t in truths])
        y = np.array([t.get(f) == 1.0 for t in truths])
        out[f]["auc"] = roc_auc(scores[keep, k], y[keep])
        aucs.append(out[f]["auc"])
    out["Avg"]["auc"] = float(np.nanmean(aucs))
    return out

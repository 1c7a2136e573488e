"""Clinical metrics: label F1 (14 labels and the 5 common findings), per-finding accuracy, MS-CXR-T
temporal accuracy, and 95% bootstrap confidence intervals on every headline number.

**Positive-label convention.** A label is *positive* when its value is 1.0. Uncertain (-1.0) counts
as positive under ``uncertain="positive"`` (the default; "uncertain as positive", as most CheXbert
papers report) or as negative under ``uncertain="negative"``. Negative (0.0) and not mentioned
(None) are negative. The same binarisation is applied to predictions and to the truth.

**F1.** Micro F1 pools true/false positives and false negatives over the labels; macro F1 is the mean
of per-label F1 (a label with no true and no predicted positive has F1 0 by sklearn's
``zero_division=0`` convention, and is still averaged). Per-finding accuracy is the binary accuracy
of each label over all examples.

**Bootstrap.** Percentile bootstrap: ``n_boot`` resamples of the examples (with replacement, numpy
``default_rng(seed)``), each statistic recomputed on every resample from resample counts (one matrix
product per statistic, no Python loop over resamples), CI = the 2.5th and 97.5th percentiles. Every
headline number is reported as ``{"value": v, "ci_low": lo, "ci_high": hi}``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_max.errors import DataError, OnError, SkipLog, handle
from cxr_max.evaluation.labeler import clause_statuses, clauses, label_report, mentions
from cxr_max.labels import CHEXPERT_LABELS, FIVE_FINDINGS, MS_CXR_T_FINDINGS, PROGRESSION_CLASSES, label_key

__all__ = [
    "binarize",
    "bootstrap_resample_weights",
    "percentile_ci",
    "label_f1",
    "clinical_metrics",
    "parse_progression",
    "finding_state",
    "pair_progression",
    "read_progression",
    "temporal_accuracy",
    "ms_cxr_t_metrics",
]

LabelDict = Mapping[str, float | None]


# --------------------------------------------------------------------------------------------------
# Binarisation and bootstrap weights
# --------------------------------------------------------------------------------------------------


def binarize(rows: Sequence[LabelDict], labels: Sequence[str] = CHEXPERT_LABELS, *, uncertain: str = "positive",
             where: str = "labels") -> np.ndarray:
    """``(n, len(labels))`` bool array: positive under the convention above.

    A row that is not a mapping, or a value outside {1, 0, -1, None, NaN}, raises DataError naming
    ``where`` and the row. A missing key counts as not mentioned.
    """
    if uncertain not in ("positive", "negative"):
        raise ValueError(f"uncertain must be 'positive' or 'negative', not {uncertain!r}")
    out = np.zeros((len(rows), len(labels)), dtype=bool)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"expected a dict of labels, got {type(row).__name__}", path=where, row=i)
        for j, name in enumerate(labels):
            v = row.get(name)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            if v == 1:
                out[i, j] = True
            elif v == -1:
                out[i, j] = uncertain == "positive"
            elif v != 0:
                raise DataError(f"label {name!r} has value {v!r}; expected 1, 0, -1 or None", path=where, row=i)
    return out


def bootstrap_resample_weights(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` int matrix: how many times each example is drawn in each resample.

    Resample b is ``rng.integers(0, n, n)``; its counts turn any sum over examples into a matrix
    product ``W @ x``, which is how every statistic here is bootstrapped without a Python loop.
    """
    if n <= 0:
        raise ValueError("bootstrap needs at least one example")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n), dtype=np.int32)
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1)
    return w


def percentile_ci(value: float, boot: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}``: the (1 - alpha) percentile interval of the bootstrap values
    ``boot`` (NaNs ignored; NaN bounds when none is finite)."""
    lo, hi = np.nanpercentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return {"value": float(value), "ci_low": float(lo), "ci_high": float(hi)}




def _nanmean0(a: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (a resample that drew no example of a class or finding); all-NaN -> NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=0)


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


# --------------------------------------------------------------------------------------------------
# Label F1
# --------------------------------------------------------------------------------------------------


def label_f1(
    predictions: Sequence[LabelDict],
    truth: Sequence[LabelDict],
    *,
    labels: Sequence[str] = CHEXPERT_LABELS,
    uncertain: str = "positive",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Micro/macro F1, per-label precision/recall/F1/accuracy, with bootstrap CIs on micro and macro F1
    and on each label's F1 and accuracy. ``predictions[i]`` and ``truth[i]`` are label dicts of one
    example (e.g. ``label_report(generated)`` and ``label_report(reference)`` or the CheXpert CSV)."""
    if len(predictions) != len(truth):
        raise DataError(f"{len(predictions)} predictions but {len(truth)} truth rows", path="predictions")
    if not predictions:
        raise DataError("no predictions to score", path="predictions")
    p = binarize(predictions, labels, uncertain=uncertain, where="predictions")
    t = binarize(truth, labels, uncertain=uncertain, where="truth")
    tp_i, fp_i, fn_i = (p & t).astype(np.int32), (p & ~t).astype(np.int32), (~p & t).astype(np.int32)
    correct_i = (p == t).astype(np.int32)
    n = len(p)

    tp, fp, fn = tp_i.sum(0), fp_i.sum(0), fn_i.sum(0)
    per_f1 = _f1(tp, fp, fn)
    micro = float(_f1(tp.sum(), fp.sum(), fn.sum()))
    macro = float(per_f1.mean())
    acc = correct_i.mean(0)

    w = bootstrap_resample_weights(n, n_boot, seed)
    btp, bfp, bfn = w @ tp_i, w @ fp_i, w @ fn_i  # (n_boot, L)
    b_per_f1 = _f1(btp, bfp, bfn)
    b_micro = _f1(btp.sum(1), bfp.sum(1), bfn.sum(1))
    b_macro = b_per_f1.mean(1)
    b_acc = (w @ correct_i) / n

    precision = np.divide(tp, tp + fp, out=np.zeros(len(labels)), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(len(labels)), where=(tp + fn) > 0)
    per_label = {
        name: {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": percentile_ci(per_f1[j], b_per_f1[:, j]),
            "accuracy": percentile_ci(acc[j], b_acc[:, j]),
            "support": int(t[:, j].sum()),
            "predicted": int(p[:, j].sum()),
        }
        for j, name in enumerate(labels)
    }
    return {
        "micro_f1": percentile_ci(micro, b_micro),
        "macro_f1": percentile_ci(macro, b_macro),
        "per_label": per_label,
        "n": n,
        "uncertain": uncertain,
        "labels": list(labels),
    }


def clinical_metrics(
    predictions: Sequence[LabelDict],
    truth: Sequence[LabelDict],
    *,
    uncertain: str = "positive",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Label F1 over the 14 CheXpert labels and over :data:`cxr_max.labels.FIVE_FINDINGS`, both with
    CIs. (No Finding is one of the 14, as in CheXbert-style "14-label" F1.)"""
    return {
        "labels_14": label_f1(predictions, truth, labels=CHEXPERT_LABELS, uncertain=uncertain, n_boot=n_boot, seed=seed),
        "labels_5": label_f1(predictions, truth, labels=FIVE_FINDINGS, uncertain=uncertain, n_boot=n_boot, seed=seed),
    }


# --------------------------------------------------------------------------------------------------
# MS-CXR-T temporal progression
# --------------------------------------------------------------------------------------------------

_STABLE = re.compile(
    r"\b(?:stable|unchanged|no (?:significant |appreciable |substantial |definite |major |interval |real )*change[sd]?|"
    r"not (?:significantly |substantially |appreciably )?changed|without (?:significant |interval )?change|"
    r"similar|persist\w*|constant|no (?:significant )?(?:interval )?(?:difference|progression)|same|steady|"
    r"remain\w* (?:about )?the same|no (?:significant )?(?:increase|decrease|improvement|worsening))\b",
    re.IGNORECASE,
)
_IMPROVING = re.compile(
    r"\b(?:improv\w*|decreas\w*|resolv\w*|resolution|less\b|smaller|reduc\w*|diminish\w*|clearing|cleared|"
    r"regress\w*|better|lessen\w*|shrink\w*|subsid\w*|partial(?:ly)? resol\w*|near(?:ly)? resol\w*|"
    r"improvement|decline[sd]?|receding|waning)\b",
    re.IGNORECASE,
)
_WORSENING = re.compile(
    r"\b(?:wors\w*|increas\w*|progress\w*|enlarg\w*|larger|more (?:extensive|prominent|pronounced|severe)|"
    r"new(?:ly)?|develop\w*|extension|extend\w*|greater|expand\w*|deteriorat\w*|advanc\w*|"
    r"escalat\w*|grow\w*|bigger|exacerbat\w*|accumulat\w*)\b",
    re.IGNORECASE,
)
def _classes_in(text: str) -> set[str]:
    found = set()
    rest = text
    if _STABLE.search(rest):
        found.add("stable")
        rest = _STABLE.sub(" ", rest)  # "no increase" must not also count as "increase"
    if _IMPROVING.search(rest):
        found.add("improving")
    if _WORSENING.search(rest):
        found.add("worsening")
    return found


def parse_progression(text: str, finding: str) -> str | None:
    """The progression class ("improving" / "stable" / "worsening") that ``text`` states for
    ``finding`` (an MS-CXR-T finding: Consolidation, Edema, Pleural Effusion, Pneumonia, Pneumothorax),
    or None when it states none or contradicts itself.

    The text is read with the labeler's clause machinery (:func:`cxr_max.evaluation.labeler.clauses`:
    the same sections, clause boundaries and mention lexicon). The clauses that mention the finding are
    read for progression words and synonyms (improving: "improved", "decreased", "resolving",
    "smaller"...; stable: "unchanged", "no change", "persistent"...; worsening: "increased",
    "progressed", "new", "enlarging"...). "No increase"/"no change" count as stable, not as worsening;
    in a clause where the labeler reads every mention of the finding as negated ("no new
    consolidation"), worsening words do not count (a resolved finding, "the pneumothorax has
    resolved", is still improving). When no clause names the finding (a bare answer such as
    "Worsening."), the whole text is read instead.
    """
    if finding not in MS_CXR_T_FINDINGS and finding not in CHEXPERT_LABELS:
        raise ValueError(f"unknown finding {finding!r}")
    parts = clauses(text)
    found: set[str] = set()
    hits = [c for c in parts if mentions(c, finding)]
    for clause in hits:
        classes = _classes_in(clause)
        statuses = clause_statuses(clause, finding)
        if statuses and all(s == 0.0 for s in statuses):
            classes.discard("worsening")
        found |= classes
    if not hits:
        found = _classes_in(" ".join(parts))
    return found.pop() if len(found) == 1 else None


_GRADES = (
    (re.compile(r"\b(?:large|severe|extensive|massive|marked|big)\b", re.I), 3.0),
    (re.compile(r"\b(?:moderate|moderately)\b", re.I), 2.0),
    (re.compile(r"\b(?:small|mild|mildly|minimal|trace|tiny|slight|subtle)\b", re.I), 1.0),
)


def finding_state(text: str, finding: str) -> float:
    """A finding's state in one single-image answer: 0 absent or not mentioned, 0.5 uncertain, else its grade
    (1-3).

    Presence comes from the rule labeler (:func:`cxr_max.evaluation.labeler.label_report`); the grade from size
    words ("small/mild" 1, "moderate" 2, "large/severe" 3) in the first of the labeler's clauses
    (:func:`cxr_max.evaluation.labeler.clauses`) that mentions the finding; a positive without a size word is 2.
    """
    status = label_report(text).get(finding)
    if status == -1.0:
        return 0.5
    if status != 1.0:
        return 0.0
    for clause in clauses(text):
        if mentions(clause, finding):
            for grade_rx, grade in _GRADES:
                if grade_rx.search(clause):
                    return grade
    return 2.0


def pair_progression(previous: str, current: str, finding: str) -> str:
    """improving / stable / worsening for ``finding`` from two single-image answers: worsening when the
    :func:`finding_state` of ``current`` is higher than that of ``previous``, improving when lower, else stable."""
    a, b = finding_state(previous, finding), finding_state(current, finding)
    return "worsening" if b > a else "improving" if b < a else "stable"


def read_progression(answer: str, finding: str, previous_answer: str | None = None) -> str | None:
    """The MS-CXR-T progression class of one example, the one reader :func:`ms_cxr_t_metrics` uses.

    A model that sees both images states the class in ``answer`` (:func:`parse_progression`; None when it
    states none). A model that sees one image answers each image on its own: with ``previous_answer`` (its
    answer on the previous image) the class comes from comparing the two (:func:`pair_progression`).
    """
    if previous_answer is None:
        return parse_progression(answer, finding)
    return pair_progression(previous_answer, answer, finding)


def temporal_accuracy(
    predicted: Sequence[str | None],
    truth: Sequence[str],
    findings: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Top-1 and class-balanced accuracy per finding and averaged over findings, with CIs.

    ``predicted[i]`` is the parsed class (None = no answer, counted wrong), ``truth[i]`` the true
    class, ``findings[i]`` the finding of example i. Class-balanced accuracy of a finding is the mean
    over the classes present in its truth of the recall of that class. The averages are the
    unweighted means over findings present (as the paper's "Avg" column).
    """
    if not (len(predicted) == len(truth) == len(findings)):
        raise DataError("predicted, truth and findings must have the same length", path="predictions")
    if not truth:
        raise DataError("no MS-CXR-T examples to score", path="predictions")
    for i, t in enumerate(truth):
        if t not in PROGRESSION_CLASSES:
            raise DataError(f"true class {t!r} is not one of {PROGRESSION_CLASSES}", path="truth", row=i)
    n = len(truth)
    pred = np.array([p if p is not None else "" for p in predicted], dtype=object)
    true = np.array(truth, dtype=object)
    fnd = np.array(findings, dtype=object)
    correct = (pred == true).astype(np.int32)
    w = bootstrap_resample_weights(n, n_boot, seed)

    per: dict[str, Any] = {}
    top1_vals, bal_vals, b_top1, b_bal = [], [], [], []
    for f in dict.fromkeys(findings):
        m = (fnd == f).astype(np.int32)
        cnt, bcnt = m.sum(), w @ m
        acc = (correct * m).sum() / cnt
        bacc = np.divide(w @ (correct * m), bcnt, out=np.full(n_boot, np.nan), where=bcnt > 0)
        recalls, brecalls = [], []
        for c in PROGRESSION_CLASSES:
            mc = m * (true == c).astype(np.int32)
            if mc.sum() == 0:
                continue
            recalls.append((correct * mc).sum() / mc.sum())
            bden = w @ mc
            brecalls.append(np.divide(w @ (correct * mc), bden, out=np.full(n_boot, np.nan), where=bden > 0))
        bal = float(np.mean(recalls))
        bbal = _nanmean0(np.vstack(brecalls)) if brecalls else np.full(n_boot, np.nan)
        per[f] = {"top1": percentile_ci(acc, bacc), "balanced": percentile_ci(bal, bbal), "n": int(cnt)}
        top1_vals.append(acc)
        bal_vals.append(bal)
        b_top1.append(bacc)
        b_bal.append(bbal)
    return {
        "per_finding": per,
        "avg_top1": percentile_ci(float(np.mean(top1_vals)), _nanmean0(np.vstack(b_top1))),
        "avg_balanced": percentile_ci(float(np.mean(bal_vals)), _nanmean0(np.vstack(b_bal))),
        "n": n,
        "unparsed": int(sum(p is None for p in predicted)),
    }


def _answer_text(rec: Mapping[str, Any], key: str, row: int) -> str:
    """``rec[key]`` as str (UTF-8 bytes decoded); anything else raises DataError naming the row."""
    answer = rec.get(key)
    if isinstance(answer, bytes):
        try:
            answer = answer.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{key} is not valid UTF-8", path="records", row=row) from e
    if not isinstance(answer, str):
        raise DataError(f"{key} must be str, got {type(answer).__name__}", path="records", row=row)
    return answer


def ms_cxr_t_metrics(
    records: Sequence[Mapping[str, Any]],
    *,
    image_exists: Callable[[str], bool] | None = None,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """MS-CXR-T temporal accuracy from model answers on (previous, current) image pairs.

    Each record: ``dicom_id``, ``previous_dicom_id``, ``finding`` (an MS-CXR-T finding, either
    "Pleural Effusion" or its key "pleural_effusion"), ``answer`` (the model's free text) and
    ``label`` (the true class); a one-image model's record also has ``previous_answer`` (its answer on
    the previous image, ``answer`` being the one on the current image). The class is read with
    :func:`read_progression`. A record with a missing id, unknown finding, bad label, non-str answer,
    or (when ``image_exists`` is given) an image that does not exist, raises DataError naming its
    index, or is counted in ``skips`` under ``on_error="skip"``.
    """
    by_key = {label_key(f): f for f in MS_CXR_T_FINDINGS}
    predicted, truth, findings = [], [], []
    for i, rec in enumerate(records):
        try:
            for key in ("dicom_id", "previous_dicom_id"):
                if not rec.get(key):
                    raise DataError(f"missing {key}: the pair needs both images", path="records", row=i)
                if image_exists is not None and not image_exists(str(rec[key])):
                    raise DataError(f"image for {key}={rec[key]} not found", path="records", row=i)
            finding = by_key.get(label_key(str(rec.get("finding", ""))))
            if finding is None:
                raise DataError(f"finding {rec.get('finding')!r} is not an MS-CXR-T finding", path="records", row=i)
            if rec.get("label") not in PROGRESSION_CLASSES:
                raise DataError(f"label {rec.get('label')!r} is not one of {PROGRESSION_CLASSES}", path="records", row=i)
            answer = _answer_text(rec, "answer", i)
            previous = _answer_text(rec, "previous_answer", i) if "previous_answer" in rec else None
        except DataError as err:
            handle(err, on_error, skips)
            continue
        predicted.append(read_progression(answer, finding, previous))
        truth.append(rec["label"])
        findings.append(finding)
    if not truth:
        raise DataError("no MS-CXR-T records left to score", path="records")
    return temporal_accuracy(predicted, truth, findings, n_boot=n_boot, seed=seed)


def files_exist(root: str | Path, suffix: str = ".jpg") -> Callable[[str], bool]:
    """An ``image_exists`` callable for :func:`ms_cxr_t_metrics`: is there a file named
    ``<dicom_id><suffix>`` anywhere under ``root`` (ids may be path-like, "p10/p1000../s5../<id>")."""
    root = Path(root)
    names = {p.name for p in root.rglob(f"*{suffix}")}
    return lambda dicom_id: (Path(dicom_id).name + suffix) in names

"""Measured accuracy of the simulated teachers (:mod:`cxr_max.synthetic.teachers`) and of their consensus.

The compare stage's consensus (:mod:`cxr_max.drift.consensus`) is scored here against the synthetic world's
truth, from the teachers' in-memory ``claims()`` (no files, no text): :func:`teacher_accuracy_table` is what
``benchmarks/teacher_accuracy.py`` prints and what the tests hold the simulated teachers to (each near a real
MLLM's balanced accuracy, the consensus above the best of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cxr_max.drift.consensus import dawid_skene_consensus, vote_consensus
from cxr_max.drift.findings import LABEL_VALUES, PRESENT, SIDES, Panel
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS
from cxr_max.synthetic.teachers import HEADLINE_FINDINGS, SIM_TEACHERS, SimulatedTeacher
from cxr_max.synthetic.world import ImageTruth


def _binary_scores(pred, y) -> dict[str, float | int]:
    pos, neg = y, ~y
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return {"balanced_accuracy": 0.5 * (sens + spec), "sensitivity": sens, "specificity": spec,
            "n_pos": int(pos.sum()), "n_neg": int(neg.sum())}


def claims_panel(truths: Sequence[ImageTruth], claims: Mapping[str, Sequence[tuple]]):
    """A :class:`cxr_max.drift.findings.Panel` built from in-memory ``claims()`` (no files, no text).

    ``claims[teacher][i]`` is ``SimulatedTeacher.claims(truths[i])``. Images keep the order of ``truths``.
    """
    value_code = {v: i for i, v in enumerate(LABEL_VALUES)}
    side_code = {v: i for i, v in enumerate(SIDES)}

    names = sorted(claims)
    n, t_n, k_n = len(truths), len(names), len(CHEXPERT_LABELS)
    labels = np.zeros((n, t_n, k_n), dtype=np.int8)
    side = np.zeros((n, t_n, len(LATERAL_FINDINGS)), dtype=np.int8)
    refused = np.zeros((n, t_n), dtype=bool)
    for t, name in enumerate(names):
        rows = claims[name]
        if len(rows) != n:
            raise ValueError(f"{name}: {len(rows)} claims for {n} images")
        for i, (lab, lat, ref) in enumerate(rows):
            refused[i, t] = ref
            if ref:
                continue
            labels[i, t] = [value_code[lab.get(f)] for f in CHEXPERT_LABELS]
            side[i, t] = [side_code[lat.get(f)] for f in LATERAL_FINDINGS]
    empty = ~refused & (labels == 0).all(axis=2)
    ids = np.array([x.dicom_id for x in truths], dtype=object)
    return Panel(dicom_id=ids, subject_id=np.array([x.subject_id for x in truths], dtype=object),
                 study_id=np.array([x.study_id for x in truths], dtype=object),
                 prompt=np.full(n, "", dtype=object), stream_pos=np.array([x.stream_pos for x in truths], dtype=float),
                 teachers=names, present=np.ones((n, t_n), dtype=bool), refused=refused, empty=empty, labels=labels,
                 side=side, side_conflict=np.zeros_like(side, dtype=bool), raw=np.full((n, t_n), None, dtype=object),
                 verbosity=np.full((n, t_n), np.nan), source="stored")


def teacher_accuracy_table(truths: Iterable[ImageTruth], *, teachers: Mapping[str, SimulatedTeacher] | None = None,
                           findings: Sequence[str] = HEADLINE_FINDINGS, task: str = "diagnose", sample: int = 0,
                           seed: int = 0, consensus: Sequence[str] = ("vote", "dawid_skene"),
                           split: str | None = None, claims: Mapping[str, Sequence[tuple]] | None = None
                           ) -> dict[str, Any]:
    """Balanced accuracy per finding of each simulated teacher and of the consensus, from claims vs truth.

    Scoring rule (the student's, :mod:`cxr_max.evaluation.predict`): a finding is predicted present when
    the teacher states it (1.0); hedged, negated and unmentioned findings and refusals predict absent.
    The truth is the report's statement: present (1.0) vs negated or not mentioned; images whose true
    label is hedged (-1.0) are left out of that finding. Balanced accuracy = mean of sensitivity and
    specificity (always-absent scores 0.5). The consensus (``"vote"`` and/or ``"dawid_skene"``, as the
    compare stage computes it, :mod:`cxr_max.drift.consensus`) predicts present where its state is PRESENT.

    Args:
        truths: the images (e.g. ``load_truth(root).values()`` or ``image_truths(generate_world(...))``).
        teachers: default all seven :data:`SIM_TEACHERS`.
        split: keep only images of this split (e.g. ``"train"``).
        claims: precomputed ``{teacher: [claims(truth) for truth in truths]}`` (aligned with ``truths``
            before the split filter); computed here when None.

    Returns a dict: ``n_images``; ``findings``; ``teachers[name][finding]`` = balanced_accuracy,
    sensitivity, specificity, n_pos, n_neg, plus ``teachers[name]["mean"]`` (mean balanced accuracy over
    ``findings``); ``consensus[method]`` the same; ``best_teacher[finding]`` = {teacher, balanced_accuracy};
    ``margin[method][finding]`` = consensus minus best teacher balanced accuracy.
    """
    teachers = dict(SIM_TEACHERS if teachers is None else teachers)
    truths = list(truths)
    unknown = [m for m in consensus if m not in ("vote", "dawid_skene")]
    if unknown:
        raise ValueError(f"unknown consensus method(s) {unknown}; known: ['vote', 'dawid_skene']")
    if claims is None:
        claims = {name: [t.claims(x, task=task, sample=sample, seed=seed) for x in truths]
                  for name, t in teachers.items()}
    else:
        bad = {name: len(rows) for name, rows in claims.items() if len(rows) != len(truths)}
        if bad:
            raise ValueError(f"claims per teacher {bad} do not match the {len(truths)} images")
    keep_rows = [i for i, x in enumerate(truths) if split is None or x.split == split]
    if not keep_rows:
        raise ValueError(f"no images to score (split={split!r})")
    truths = [truths[i] for i in keep_rows]
    claims = {name: [rows[i] for i in keep_rows] for name, rows in claims.items()}
    keep = {f: np.array([x.labels.get(f) != -1.0 for x in truths]) for f in findings}
    y = {f: np.array([x.labels.get(f) == 1.0 for x in truths]) for f in findings}

    def score(pred: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {f: _binary_scores(pred[f][keep[f]], y[f][keep[f]]) for f in findings}
        out["mean"] = float(np.nanmean([out[f]["balanced_accuracy"] for f in findings]))
        return out

    table: dict[str, Any] = {"n_images": len(truths), "findings": list(findings), "split": split, "teachers": {},
                             "consensus": {}}
    for name, rows in claims.items():
        table["teachers"][name] = score({f: np.array([c[0].get(f) == 1.0 for c in rows]) for f in findings})
    if consensus:
        panel = claims_panel(truths, claims)
        for method in consensus:
            cons = vote_consensus(panel) if method == "vote" else dawid_skene_consensus(panel)
            table["consensus"][method] = score({f: cons.state[:, CHEXPERT_LABELS.index(f)] == PRESENT
                                                for f in findings})
    best = {}
    for f in findings:
        name = max(table["teachers"], key=lambda n: table["teachers"][n][f]["balanced_accuracy"])
        best[f] = {"teacher": name, "balanced_accuracy": table["teachers"][name][f]["balanced_accuracy"]}
    table["best_teacher"] = best
    table["margin"] = {m: {f: v[f]["balanced_accuracy"] - best[f]["balanced_accuracy"] for f in findings}
                       for m, v in table["consensus"].items()}
    return table


def format_accuracy_table(table: dict[str, Any]) -> str:
    """The table of :func:`teacher_accuracy_table` as Markdown (balanced accuracy; best teacher in bold)."""
    findings = table["findings"]
    head = "| | " + " | ".join(findings) + " | mean |\n|---|" + "---|" * (len(findings) + 1)
    lines = [head]
    for name, row in table["teachers"].items():
        cells = [(f"**{row[f]['balanced_accuracy']:.3f}**" if table["best_teacher"][f]["teacher"] == name
                  else f"{row[f]['balanced_accuracy']:.3f}") for f in findings]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['mean']:.3f} |")
    for method, row in table["consensus"].items():
        lines.append(f"| consensus ({method}) | " + " | ".join(f"{row[f]['balanced_accuracy']:.3f}" for f in findings)
                     + f" | {row['mean']:.3f} |")
    lines.append("| best teacher | " + " | ".join(f"{table['best_teacher'][f]['balanced_accuracy']:.3f}"
                                                  for f in findings) + " | |")
    return "\n".join(lines)

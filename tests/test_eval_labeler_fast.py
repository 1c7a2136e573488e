"""The fast labeler (clause cache, mention prefilter, batch de-duplication) equals a plain one.

The reference below labels the whole prepared text mention by mention, as the labeler did before the
speed-up: every mention regex over the whole text, each mention's clause found by bisection over the
clause boundaries, no cache and no prefilter. It reuses the module's per-mention rules (_status,
_side_of, _attribute_status) and its clause boundaries, so it checks exactly what the speed-up
changed: the per-clause cache, the combined-regex prefilter, and the batch de-duplication.
"""

from __future__ import annotations

import bisect
import random
import re

import pytest

from cxr_max.evaluation import labeler as L
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS, POSITIVE, UNCERTAIN
from cxr_max.trajectories.parse import is_refusal


def reference_label(text: str):
    """(labels, laterality, conflicts, refusal) computed mention by mention over the whole text."""
    if is_refusal(text):
        return {n: None for n in CHEXPERT_LABELS}, {n: None for n in LATERAL_FINDINGS}, frozenset(), True
    body = L._prepare(text)
    if not re.search(r"[a-z]", body):
        return {n: None for n in CHEXPERT_LABELS}, {n: None for n in LATERAL_FINDINGS}, frozenset(), False
    starts, ends = L._clause_bounds(body)
    labels = {n: None for n in CHEXPERT_LABELS}
    sides = {n: [] for n in LATERAL_FINDINGS}

    def clause_of(pos):
        i = bisect.bisect_right(starts, pos) - 1
        return starts[i], ends[i]

    for name, rx in L._MENTION_RX.items():
        for m in rx.finditer(body):
            cs, ce = clause_of(m.start())
            if m.end() > ce:  # a match across a clause boundary is not a mention of either clause
                continue
            status = L._status(body[cs : m.start()], body[m.end() : ce], body[cs:ce])
            labels[name] = L._merge(labels[name], status)
            if name in sides and status in (POSITIVE, UNCERTAIN):
                side = L._side_of(body, m.start(), m.end(), cs, ce)
                if side:
                    sides[name].append(side)
    for name, rx in (("Cardiomegaly", L._HEART), ("Enlarged Cardiomediastinum", L._MEDIASTINUM)):
        for m in rx.finditer(body):
            cs, ce = clause_of(m.start())
            if m.end() > ce:
                continue
            labels[name] = L._merge(labels[name], L._attribute_status(body[cs : m.start()], body[m.end() : ce], body[cs:ce]))
    other = False
    for m in L._OTHER_FINDINGS.finditer(body):
        cs, ce = clause_of(m.start())
        if m.end() <= ce and L._status(body[cs : m.start()], body[m.end() : ce], body[cs:ce]) in (POSITIVE, UNCERTAIN):
            other = True
    findings = [labels[n] for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    labels["No Finding"] = None if other or any(v in (POSITIVE, UNCERTAIN) for v in findings) else POSITIVE
    laterality, conflict = L._resolve_laterality(sides)
    return labels, laterality, conflict, False


# Fragments covering mentions of every label, negation/uncertainty before and after, lists, attribute
# phrases, sides, clause-boundary words, abbreviations ("vs.", "dr."), decimals and section headers.
_FRAGMENTS = [
    "no pleural effusion or pneumothorax", "small left pleural effusion", "right greater than left effusions",
    "bibasilar atelectasis", "possible right lower lobe pneumonia", "pneumonia cannot be excluded",
    "the heart size is normal", "heart is mildly enlarged", "moderate cardiomegaly", "cardiac silhouette is top-normal",
    "mediastinal contours are unremarkable", "widened mediastinum", "the lungs are clear",
    "there is no focal consolidation", "patchy opacity at the left base which may reflect atelectasis",
    "pulmonary vascular congestion", "mild interstitial edema has resolved", "no evidence of edema",
    "endotracheal tube terminates 4.5 cm above the carina", "right PICC line tip in the SVC",
    "sternotomy wires are intact", "nasogastric tube was removed", "no acute fracture",
    "healed left rib fractures", "8 mm nodule in the right upper lobe", "no suspicious mass",
    "pleural thickening at the apices", "apical pleural cap", "small right pneumothorax is not seen",
    "effusion on the left", "effusions, left greater than right", "consolidation vs. atelectasis",
    "dr. smith was notified", "no change in the small left effusion", "not significantly changed",
    "opacity, possible aspiration", "without pneumothorax, effusion, or consolidation", "question of infiltrate",
    "atelectasis versus consolidation at the lung bases bilaterally", "no longer seen is the pneumothorax",
    "there is blunting of the right costophrenic angle", "however the right base is clear", "but no edema",
    "soft tissue edema of the chest wall", "pericardial effusion", "lines and tubes are unchanged",
    "interval resolution of the left lower lobe consolidation", "unchanged position of the pacemaker leads",
    "low lung volumes", "hyperinflated lungs", "degenerative changes of the spine", "?pneumonia",
    "no focal consolidation, suspicious opacity, large pleural effusion, or pneumothorax is identified",
    "heart size and pulmonary vascular engorgement appear within limits of normal", "calcified granuloma",
    "consolidation, atelectasis, and effusion have cleared", "no hiatal hernia", "borderline heart size",
    "the heart is not significantly enlarged", "without evidence of focal airspace disease, effusion, or pneumothorax",
]
_HEADERS = ["FINDINGS:", "IMPRESSION:", "INDICATION:", "COMPARISON:", "HISTORY:", "TECHNIQUE:", "Findings:"]
_JOINS = [". ", "; ", ", ", " and ", ".\n", ".\n\n", " but ", " which ", ". There is ", ": "]


def _varied_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 7)):
            frag = rng.choice(_FRAGMENTS)
            if rng.random() < 0.3:
                frag = frag.capitalize()
            parts.append(frag + rng.choice(_JOINS))
        text = "".join(parts)
        r = rng.random()
        if r < 0.2:
            text = f"{rng.choice(_HEADERS)} {rng.choice(_FRAGMENTS)}.\n{rng.choice(_HEADERS)} {text}"
        elif r < 0.35:
            text = f"<think> {text} </think>The disease of this patient is {rng.choice(_FRAGMENTS)}."
        elif r < 0.37:
            text = "As an AI, I cannot provide a diagnosis. " + text
        texts.append(text)
    return texts + ["", "   ", "...", "NO FINDING."]


def _as_tuple(res):
    return res.labels, res.laterality, res.laterality_conflict, res.refusal


@pytest.fixture(scope="module")
def texts():
    return _varied_texts(3000, seed=0)


def test_fast_labeler_equals_previous_behaviour(texts):
    L._clause_findings.cache_clear()
    cold = [_as_tuple(L.label_report_full(t)) for t in texts]  # fills the clause cache
    warm = [_as_tuple(L.label_report_full(t)) for t in texts]  # served from it
    expected = [reference_label(t) for t in texts]
    mismatches = [t for t, c, e in zip(texts, cold, expected) if c != e]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"
    assert warm == cold
    # the generator really exercises the rules: every value occurs
    seen = {v for labels, *_ in expected for v in labels.values()}
    assert seen == {None, 1.0, 0.0, -1.0}
    assert any(conf for _, _, conf, _ in expected) and any(ref for *_, ref in expected)
    assert {s for _, lat, _, _ in expected for s in lat.values()} == {None, "left", "right", "bilateral"}


def test_clause_bounds_partition_the_text(texts):
    # clauses are ordered, disjoint, and cover the text except the punctuation boundaries themselves
    for t in texts:
        body = L._prepare(t)
        starts, ends = L._clause_bounds(body)
        assert len(starts) == len(ends) and starts[0] == 0 and ends[-1] == len(body)
        for (s0, e0), s1 in zip(zip(starts, ends), starts[1:]):
            assert s0 <= e0 <= s1
            assert body[e0:s1].strip() in ("", ".", ";", ":", "!"), (t, body[e0:s1])


def test_batch_dedupes_and_keeps_order_with_separate_dicts(texts):
    batch = texts[:200] + texts[:50] + texts[100:150]
    out = L.label_reports_full(batch)
    assert [_as_tuple(r) for r in out] == [_as_tuple(L.label_report_full(t)) for t in batch]
    first, repeat = out[0], out[200]
    assert batch[0] == batch[200] and first.labels == repeat.labels
    repeat.labels["Edema"] = "edited"  # editing one row must not change the other copy
    assert first.labels["Edema"] != "edited"
    assert L.label_reports(batch) == [r.labels for r in L.label_reports_full(batch)]

"""Regression sentences for the labeler: tests/data/labeler_regression.jsonl.

Each row is one report sentence or answer written in the style of MIMIC-CXR reports, IU-Xray reports
or a multimodal model's answer (``style``), with the expected labels and sides, checked by hand:

* ``labels``: every CheXpert label listed must have exactly that value (1 / 0 / -1, or null for "not
  mentioned"); every label not listed must be None (not mentioned), except No Finding, which is
  checked only where it is listed;
* ``laterality``: every lateral finding listed must have that side; the others must be None;
* ``refusal``: the text declines the task, so every label is None.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_max.evaluation import label_report_full
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS

FILE = Path(__file__).parent / "data" / "labeler_regression.jsonl"


def _rows() -> list[dict]:
    rows = []
    for i, line in enumerate(FILE.read_text().splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            unknown = set(row["labels"]) - set(CHEXPERT_LABELS) | set(row["laterality"]) - set(LATERAL_FINDINGS)
            assert not unknown, f"{FILE.name} line {i}: unknown label names {unknown}"
            row["line"] = i
            rows.append(row)
    return rows


ROWS = _rows()


def test_regression_file_covers_every_style_and_value():
    assert len(ROWS) >= 60
    assert {r["style"] for r in ROWS} == {"mimic", "iu", "mllm"}
    values = {v for r in ROWS for v in r["labels"].values()}
    assert {1.0, 0.0, -1.0} <= values
    assert {s for r in ROWS for s in r["laterality"].values()} == {"left", "right", "bilateral"}
    assert {n for r in ROWS for n in r["labels"]} == set(CHEXPERT_LABELS)  # every label is exercised


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['line']}:{r['text'][:40]}" for r in ROWS])
def test_regression_sentence(row):
    res = label_report_full(row["text"])
    assert res.refusal == bool(row.get("refusal"))
    wrong = {}
    for name in CHEXPERT_LABELS:
        if name in row["labels"]:
            want = row["labels"][name]
        elif name == "No Finding" and not row.get("refusal"):
            continue
        else:
            want = None
        if res.labels[name] != want:
            wrong[name] = (res.labels[name], want)
    for name in LATERAL_FINDINGS:
        want = row["laterality"].get(name)
        if res.laterality[name] != want:
            wrong[f"side of {name}"] = (res.laterality[name], want)
    assert not wrong, f"line {row['line']} {row['text']!r}: (got, expected) {wrong}"

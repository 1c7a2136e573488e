"""Canonical schema, answer splitting, refusal detection and the duplicate rule."""

import json

import pytest

from cxr_max.errors import DataError, SkipLog
from cxr_max.trajectories.io import read_trajectories, write_jsonl
from cxr_max.trajectories.parse import is_refusal, join_answer, split_answer
from cxr_max.trajectories.schema import EXAMPLE_RECORD, normalize_record


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("<think> The heart is big. </think>The disease of this patient is cardiomegaly.",
         ("The heart is big.", "The disease of this patient is cardiomegaly.")),
        ("<thinking>r</thinking>\nanswer", ("r", "answer")),
        ("<reasoning>r</reasoning>a", ("r", "a")),
        ("r only, template opened the tag</think>a", ("r only, template opened the tag", "a")),
        ("<think>truncated reasoning with no end", ("truncated reasoning with no end", "")),
        ("Reasoning: lungs clear. Answer: no acute disease.", ("lungs clear.", "no acute disease.")),
        ("plain answer", ("", "plain answer")),
    ],
)
def test_split_answer(raw, expected):
    assert split_answer(raw) == expected


def test_join_answer_round_trips():
    assert split_answer(join_answer("r.", "a.")) == ("r.", "a.")


@pytest.mark.parametrize(
    "text, refused",
    [
        ("As an AI, I cannot provide medical diagnoses. Please consult a radiologist.", True),
        ("I'm unable to provide a diagnosis from this image.", True),
        ("I cannot provide medical advice.", True),
        ("The heart is enlarged. The disease of this patient is cardiomegaly.", False),
        ("Pneumothorax cannot be excluded.", False),
    ],
)
def test_is_refusal(text, refused):
    assert is_refusal(text) is refused


def test_normalize_record_coerces_and_rejects():
    rec = normalize_record({**EXAMPLE_RECORD, "subject_id": 10000032, "study_id": 50414267.0, "status": None})
    assert rec["subject_id"] == "10000032" and rec["study_id"] == "50414267" and rec["status"] == "ok"
    with pytest.raises(ValueError, match="unknown field"):
        normalize_record({**EXAMPLE_RECORD, "teachr": "x"})
    with pytest.raises(ValueError, match="missing required"):
        normalize_record({k: v for k, v in EXAMPLE_RECORD.items() if k != "teacher"})
    with pytest.raises(ValueError, match="label 'Edema'"):
        normalize_record({**EXAMPLE_RECORD, "labels": {"Edema": 2}})
    with pytest.raises(ValueError, match="sample must be an integer"):
        normalize_record({**EXAMPLE_RECORD, "sample": "first"})


def test_ok_supersedes_failed_and_two_oks_are_a_duplicate(tmp_path):
    ok = dict(EXAMPLE_RECORD)
    failed = {**EXAMPLE_RECORD, "status": "failed", "error": "http 500", "raw": None, "collected_at": "2026-01-01T00:00:00+00:00"}
    write_jsonl([failed], tmp_path / "a.jsonl")
    write_jsonl([ok], tmp_path / "b.jsonl")
    skips = SkipLog()
    table = read_trajectories(tmp_path, skips=skips)
    assert table.num_rows == 1 and table.column("status")[0].as_py() == "ok"
    assert skips.counts["failed request superseded by a later result for the same key"] == 1
    both = read_trajectories(tmp_path, include_failed=True)
    assert both.num_rows == 1  # the failure is superseded, not kept beside its result
    write_jsonl([ok], tmp_path / "c.jsonl")
    with pytest.raises(DataError, match=r"c\.jsonl, row 1: duplicate record"):
        read_trajectories(tmp_path)


def test_jsonl_fast_and_exact_paths_agree(tmp_path):
    recs = [{**EXAMPLE_RECORD, "sample": i} for i in range(20)]
    write_jsonl(recs, tmp_path / "a.jsonl")
    fast = read_trajectories(tmp_path)
    # int ids force the row-by-row path
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({**r, "subject_id": 10000032}) for r in recs) + "\n")
    exact = read_trajectories(tmp_path)
    assert fast.to_pylist() == exact.to_pylist()

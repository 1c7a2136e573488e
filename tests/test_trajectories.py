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


# --- the authors' files and the other chat layouts (ms-swift, ShareGPT, alpaca, query/response) ------------

from cxr_max.trajectories.io import iter_trajectory_batches, list_trajectory_files, read_trajectory_file  # noqa: E402

_IMG = "/data/mimic-cxr-jpg/2.1.0/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
_PROMPT = "This is a patient's chest DR image <image>. Please help me determine the patient's disease."
_GOOD = "<think> The heart is enlarged. </think>The disease of this patient is cardiomegaly."
_BAD = "<think> Clear. </think>The disease of this patient is no finding."


def _swift_row(**extra):
    return {"messages": [{"role": "system", "content": "You are a radiologist."}, {"role": "user", "content": _PROMPT},
                         {"role": "assistant", "content": _GOOD}], "images": [_IMG], **extra}


def test_json_array_files_like_spd_json(tmp_path):
    """SPD.json / APO.json are JSON arrays; ms-swift reads json, jsonl and csv."""
    src = tmp_path / "APO.json"
    src.write_text(json.dumps([_swift_row(rejected_response=_BAD), _swift_row(rejected_response="<think>x</think>Edema.")]))
    t = read_trajectory_file(src, adapter="ms_swift")
    got = sorted(zip(t["teacher"].to_pylist(), t["sample"].to_pylist(), t["_row"].to_pylist()))
    # rejected_response is the rejected side; the chosen answer repeated on both rows is one record
    assert got == [("ms-swift-chosen", 0, 1), ("ms-swift-rejected", 0, 1), ("ms-swift-rejected", 1, 2)]
    assert set(t["system"].to_pylist()) == {"You are a radiologist."}
    assert t["dicom_id"].to_pylist()[0] == "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
    assert (t["subject_id"][0].as_py(), t["study_id"][0].as_py()) == ("10000032", "50414267")
    # in a folder: listed with an adapter; without one, left out with a warning that names them
    assert list_trajectory_files(tmp_path, foreign=True) == [src]
    assert list_trajectory_files(tmp_path) == []
    bad = tmp_path / "bad" / "SPD.json"
    bad.parent.mkdir()
    bad.write_text("[" + json.dumps(_swift_row()) + ", 3]")
    with pytest.raises(DataError, match=r"SPD.json, row 2: an element of the JSON array must be an object"):
        read_trajectory_file(bad, adapter="ms_swift")


def test_images_as_path_dicts_and_teachers_from_model_fields(tmp_path):
    src = tmp_path / "rows.jsonl"
    rows = [_swift_row(images=[{"path": _IMG}], model="qwen-vl-max", rejected_model="gpt-5-nano",
                       rejected_messages=[{"role": "user", "content": _PROMPT}, {"role": "assistant", "content": _BAD}]),
            _swift_row(images=[{"bytes": None, "path": _IMG}], source="glm-4.5v")]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = read_trajectory_file(src, adapter="ms_swift")
    assert sorted(t["teacher"].to_pylist()) == ["glm-4.5v", "gpt-5-nano", "qwen-vl-max"]
    src.write_text(json.dumps(_swift_row(images=[{"bytes": "AAAA"}])) + "\n" + json.dumps(_swift_row(images=[3])) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl, row 1: an image given as bytes without a path"):
        read_trajectory_file(src, adapter="ms_swift")
    skips = SkipLog()
    assert read_trajectory_file(src, adapter="ms_swift", on_error="skip", skips=skips).num_rows == 0
    assert skips.total == 2


@pytest.mark.parametrize("adapter, row", [
    ("sharegpt", {"conversations": [{"from": "system", "value": "You are a radiologist."}, {"from": "human", "value": _PROMPT},
                                    {"from": "gpt", "value": _GOOD}], "images": [_IMG], "rejected_response": _BAD}),
    ("alpaca", {"instruction": _PROMPT, "input": "", "chosen": _GOOD, "rejected": _BAD, "images": [_IMG],
                "system": "You are a radiologist."}),
    ("query_response", {"query": _PROMPT, "response": _GOOD, "rejected_response": _BAD, "images": _IMG,
                        "system": "You are a radiologist."}),
    ("ms_swift", {"conversations": [{"from": "system", "value": "You are a radiologist."}, {"from": "human", "value": _PROMPT},
                                    {"from": "gpt", "value": _GOOD}], "images": [_IMG], "rejected_response": _BAD}),
])
def test_other_chat_layouts(tmp_path, adapter, row):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps(row) + "\n")
    t = read_trajectory_file(src, adapter=adapter)
    recs = {r["teacher"]: r for r in t.to_pylist()}
    assert set(recs) == {"ms-swift-chosen", "ms-swift-rejected"}
    assert recs["ms-swift-chosen"]["answer"] == "The disease of this patient is cardiomegaly."
    assert recs["ms-swift-chosen"]["reasoning"] == "The heart is enlarged."
    assert recs["ms-swift-chosen"]["prompt"] == _PROMPT and recs["ms-swift-chosen"]["system"] == "You are a radiologist."
    assert recs["ms-swift-rejected"]["answer"].endswith("no finding.")


def test_mapping_renames_before_an_adapter(tmp_path):
    src = tmp_path / "rows.jsonl"
    row = {"conv": [{"from": "human", "value": _PROMPT}, {"from": "gpt", "value": _GOOD}], "img": [_IMG]}
    src.write_text(json.dumps(row) + "\n")
    t = read_trajectory_file(src, adapter="sharegpt", mapping={"conv": "conversations", "img": "images"})
    assert t.num_rows == 1 and t["answer"][0].as_py().endswith("cardiomegaly.")


def test_files_are_read_in_batches_with_their_line_numbers(tmp_path):
    recs = [dict(EXAMPLE_RECORD, sample=i) for i in range(7)]
    src = tmp_path / "t.jsonl"
    write_jsonl(recs, src)
    batches = list(iter_trajectory_batches(src, batch_rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 1]
    assert [r for b in batches for r in b["_row"].to_pylist()] == list(range(1, 8))
    lines = src.read_text().splitlines()
    lines[4] = '{"broken'
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl, row 5: malformed JSON"):
        list(iter_trajectory_batches(src, batch_rows=3))
    import pyarrow.parquet as pq

    from cxr_max.trajectories.schema import ARROW_SCHEMA

    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([normalize_record(r) for r in recs], schema=ARROW_SCHEMA), tmp_path / "t.parquet",
                   row_group_size=2)
    parts = list(iter_trajectory_batches(tmp_path / "t.parquet", batch_rows=2))
    assert len(parts) == 4 and [r for b in parts for r in b["_row"].to_pylist()] == list(range(1, 8))


def test_parquet_shards_written_before_the_system_field_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxr_max.drift.io import read_trajectories as drift_read
    from cxr_max.trajectories.schema import ARROW_SCHEMA

    old = pa.Table.from_pylist([normalize_record(dict(EXAMPLE_RECORD))], schema=ARROW_SCHEMA).drop_columns(["system"])
    pq.write_table(old, tmp_path / "old.parquet")
    assert drift_read(tmp_path / "old.parquet")["system"].to_pylist() == [None]
    assert read_trajectories(tmp_path / "old.parquet")["system"].to_pylist() == [None]

"""Registry, compliance guard, prompts and the JSONL store of cxr_max.teachers (no HTTP)."""

from __future__ import annotations

import json

import pytest

from cxr_max.errors import DataError
from cxr_max.teachers.guard import ComplianceError, check_endpoint, redact
from cxr_max.teachers.prompts import build_messages, detect_task
from cxr_max.teachers.registry import load_registry, parse_registry
from cxr_max.teachers.store import ShardWriter, dumps_record, read_records, repair_tail, scan_keys
from cxr_max.trajectories.schema import EXAMPLE_RECORD, normalize_record


def test_bundled_registries_load():
    sim, vllm = load_registry("sim"), load_registry("vllm")
    assert len(sim) == 7 and len(vllm) == 7
    assert all(t.version == "auto" and t.base_url.startswith("http://127.0.0.1:") for t in sim)
    assert {t.base_url.rsplit(":", 1)[1] for t in vllm} == {f"800{i}/v1" for i in range(1, 8)}
    assert vllm.teachers[2].sampling_params()["top_k"] == 50


def test_registry_env_expansion(monkeypatch):
    monkeypatch.setenv("CXR_MAX_SIM_URL", "http://127.0.0.1:9999/v1/")
    assert load_registry("sim").teachers[0].base_url == "http://127.0.0.1:9999/v1"


def _reg(**teacher):
    return {"teachers": [{"name": "t1", "model": "m", "base_url": "http://127.0.0.1:1/v1", "version": "1", **teacher}]}


def test_registry_unknown_key_names_teacher_and_file():
    with pytest.raises(DataError, match=r"reg\.yaml.*'t1'.*unknown key\(s\) \['temprature'\]"):
        parse_registry(_reg(temprature=0.3), "reg.yaml")


def test_registry_missing_key_and_bad_values():
    data = _reg()
    del data["teachers"][0]["version"]
    with pytest.raises(DataError, match=r"missing required key\(s\) \['version'\]"):
        parse_registry(data)
    with pytest.raises(DataError, match="max_concurrency"):
        parse_registry(_reg(max_concurrency=0))
    with pytest.raises(DataError, match="NAME of an environment variable"):
        parse_registry(_reg(api_key_env="sk-live-abc123"))
    with pytest.raises(DataError, match="unknown top-level"):
        parse_registry({**_reg(), "teacher": []})
    with pytest.raises(DataError, match="duplicate"):
        parse_registry({"teachers": _reg()["teachers"] * 2})


def test_registry_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such registry"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teachers: [\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_registry(bad)


def test_api_key_from_env_only(monkeypatch):
    reg = parse_registry(_reg(api_key_env="MY_TEACHER_KEY"))
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    with pytest.raises(DataError, match="MY_TEACHER_KEY"):
        reg.teachers[0].api_key()
    monkeypatch.setenv("MY_TEACHER_KEY", "secret-value-123")
    assert reg.teachers[0].api_key() == "secret-value-123"
    assert "secret-value-123" not in repr(reg)
    assert parse_registry(_reg()).teachers[0].api_key() == "EMPTY"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:1/v1", "http://[::1]:8000/v1",
                                 "http://127.3.2.1/v1"])
def test_guard_accepts_loopback(url):
    check_endpoint(url, teacher="t")


def test_guard_refuses_remote_with_physionet_rule(monkeypatch):
    monkeypatch.delenv("CXR_MAX_ALLOWED_HOSTS", raising=False)
    with pytest.raises(ComplianceError) as e:
        check_endpoint("https://api.openai.com/v1", teacher="gpt")
    msg = str(e.value)
    assert "'gpt'" in msg and "api.openai.com" in msg and "PhysioNet" in msg and "zero data retention" in msg
    check_endpoint("http://gpu-node-2:8000/v1", teacher="t", allowed_hosts=["gpu-node-2"])
    check_endpoint("https://api.openai.com/v1", teacher="t", allow_remote=True)
    monkeypatch.setenv("CXR_MAX_ALLOWED_HOSTS", "10.0.0.5, gpu-node-3")
    check_endpoint("http://10.0.0.5:8000/v1", teacher="t")
    with pytest.raises(ComplianceError):
        check_endpoint("http://10.0.0.6:8000/v1", teacher="t")
    with pytest.raises(ComplianceError, match="not an http"):
        check_endpoint("ftp://127.0.0.1/v1", teacher="t")


def test_redact():
    assert redact("Bearer sk-abcdef went wrong sk-abcdef", ["sk-abcdef"]) == "Bearer *** went wrong ***"
    assert redact("EMPTY stays", ["EMPTY"]) == "EMPTY stays"


@pytest.mark.parametrize("task", ["diagnose", "explain", "report"])
def test_messages_and_task_detection(task):
    prompt, messages = build_messages(task, "data:image/jpeg;base64,AAAA", ["Pleural Effusion", "Atelectasis"])
    user = messages[-1]["content"]
    assert [p["type"] for p in user].count("image_url") == 1
    text = " ".join(p["text"] for p in user if p["type"] == "text")
    assert detect_task(text) == task
    if task == "explain":
        assert "pleural effusion and atelectasis" in prompt
    _, with_system = build_messages(task, "data:,", (), "cxr-max-v1-radiologist")
    assert with_system[0]["role"] == "system"
    with pytest.raises(ValueError, match="unknown prompt template"):
        build_messages(task, "data:,", (), "nope")
    assert detect_task("Tell me a joke") is None


def _rec(dicom, teacher="t", status="ok", collected="2026-01-01T00:00:00+00:00", **kw):
    return normalize_record({**EXAMPLE_RECORD, "dicom_id": dicom, "teacher": teacher, "status": status,
                             "collected_at": collected, **kw})


def test_repair_tail_and_scan(tmp_path):
    w = ShardWriter(tmp_path, "t", (0, 1))
    for i in range(5):
        w.add(_rec(f"d{i}"))
    w.add(_rec("d5", status="failed", error="http_500"))
    w.close()
    path = w.path
    with open(path, "ab") as f:  # a writer killed mid-line
        f.write(dumps_record(_rec("d6")).encode()[:40])
    state = scan_keys(tmp_path)
    assert state.partial_tails == 1 and state.rows == 6
    assert {k[0] for k in state.ok} == {f"d{i}" for i in range(5)} and {k[0] for k in state.failed} == {"d5"}
    assert len(state.done(retry_failed=False)) == 6
    size = path.stat().st_size
    cut = repair_tail(path)
    assert 0 < cut and path.stat().st_size == size - cut and path.read_bytes().endswith(b"\n")
    assert repair_tail(path) == 0
    # lines written by another tool (other key order, escapes) fall back to json.loads
    with open(path, "a") as f:
        f.write(json.dumps({**_rec('d"7'), "dicom_id": 'd"7'}, sort_keys=True) + "\n")
    assert ('d"7', "t", "diagnose", 0) in scan_keys(tmp_path).ok
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"part-0000-of-0001\.jsonl, row 8"):
        scan_keys(tmp_path)


def test_read_records_ok_beats_failed_latest_wins(tmp_path):
    w = ShardWriter(tmp_path, "t", (0, 1))
    w.add(_rec("a", status="failed", error="timeout", collected="2026-01-01T00:00:00+00:00"))
    w.add(_rec("a", answer="first", collected="2026-01-02T00:00:00+00:00"))
    w.add(_rec("a", status="failed", error="http_500", collected="2026-01-03T00:00:00+00:00"))
    w.add(_rec("b", status="failed", error="timeout", collected="2026-01-01T00:00:00+00:00"))
    w.add(_rec("b", status="failed", error="http_429", collected="2026-01-02T00:00:00+00:00"))
    w.close()
    ok = read_records(tmp_path)
    assert [(r["dicom_id"], r["answer"]) for r in ok] == [("a", "first")]
    both = {r["dicom_id"]: r for r in read_records(tmp_path, include_failed=True)}
    assert both["b"]["error"] == "http_429" and both["a"]["status"] == "ok"


def test_shard_lock_refuses_second_writer(tmp_path):
    w = ShardWriter(tmp_path, "t", (1, 4))
    with pytest.raises(DataError, match="another collector"):
        ShardWriter(tmp_path, "t", (1, 4))
    w.close()
    ShardWriter(tmp_path, "t", (1, 4)).close()

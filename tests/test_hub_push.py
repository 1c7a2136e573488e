"""Pushes through the real huggingface_hub client to a fake Hub on 127.0.0.1 (tests/fakehub.py).

Nothing here is mocked at the HfApi level: whoami, create_repo, repo_info, update_repo_settings,
validate-yaml, preupload and the NDJSON commit all go over HTTP to the fake server.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from huggingface_hub import constants
from safetensors.numpy import save_file

from cxr_max.hub import PushError, export_dataset, push_checkpoint, push_dataset
from tests.fakehub import FakeHub, Repo
from tests.test_hub_cards import METRICS, STAGES
from tests.test_hub_export import make_configs

TOKEN = "hf_fake_write_token"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as server:
        yield server


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "export"
    export_dataset(make_configs(), out, source="mimic", shard_rows=8, progress=False)
    return out


@pytest.fixture(scope="module")
def sensitive_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens") / "export"
    export_dataset(make_configs(8), out, source="mimic", include_pixels=True, progress=False)
    return out


def _local_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_dataset_private_by_default_one_commit(hub, export_dir):
    plan = push_dataset(export_dir, "tester/cxr-demo", endpoint=hub.endpoint)
    repo = hub.repo("tester/cxr-demo", "dataset")
    assert repo.private is True and repo.gated is False
    assert len(repo.commits) == 1
    assert repo.files == _local_files(export_dir)  # every file arrived, byte for byte
    meta = yaml.safe_load(repo.files["README.md"].decode().split("---", 2)[1])
    assert {c["config_name"] for c in meta["configs"]} == {"trajectories", "mimic"}
    assert meta["license"] == "cc-by-nc-sa-4.0"
    assert plan.commit_oid == repo.commits[0]["oid"] and plan.commit_url.endswith(plan.commit_oid)
    create = json.loads(hub.bodies[hub.requests.index(("POST", "/api/repos/create"))])
    assert create == {"name": "cxr-demo", "organization": "tester", "visibility": "private", "type": "dataset"}
    assert [r for r in hub.requests if "/commit/" in r[1]] == [("POST", "/api/datasets/tester/cxr-demo/commit/main")]


def test_dry_run_sends_nothing_and_needs_no_token(hub, export_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    plan = push_dataset(export_dir, "tester/cxr-demo", dry_run=True, endpoint=hub.endpoint)
    assert hub.requests == []
    assert [p for p, _ in plan.files] == sorted(_local_files(export_dir))
    assert plan.card == (export_dir / "README.md").read_text() and plan.private


def test_repo_name_without_namespace_goes_to_the_token_owner(hub, export_dir):
    plan = push_dataset(export_dir, "cxr-demo", endpoint=hub.endpoint)
    assert plan.repo_id == "tester/cxr-demo" and hub.repo("tester/cxr-demo", "dataset").files


def test_failed_commit_publishes_nothing_and_a_rerun_completes(hub, export_dir):
    push_dataset(export_dir, "tester/cxr-demo", endpoint=hub.endpoint)
    first = hub.repo("tester/cxr-demo", "dataset").commits[-1]
    hub.fail_commits = 1
    try:
        # change the export so the second push has something new to send
        readme = export_dir / "README.md"
        original = readme.read_text()
        readme.write_text(original.replace("# CXR-MAX-style", "# Updated CXR-MAX-style"))
        with pytest.raises(PushError, match="nothing was published.*Run the same push again"):
            push_dataset(export_dir, "tester/cxr-demo", endpoint=hub.endpoint)
        repo = hub.repo("tester/cxr-demo", "dataset")
        assert repo.commits[-1] is first  # default revision unchanged
        assert b"Updated" not in repo.files["README.md"]
        push_dataset(export_dir, "tester/cxr-demo", endpoint=hub.endpoint)
        assert len(repo.commits) == 2 and repo.files == _local_files(export_dir)
    finally:
        readme.write_text(original)


def test_sensitive_export_cannot_go_public(hub, sensitive_dir):
    with pytest.raises(PushError, match="credentialed MIMIC-CXR data"):
        push_dataset(sensitive_dir, "tester/leak", private=False, endpoint=hub.endpoint)
    assert hub.requests == []
    push_dataset(sensitive_dir, "tester/private-copy", endpoint=hub.endpoint)  # private: allowed
    assert hub.repo("tester/private-copy", "dataset").private is True


def test_sensitive_public_push_is_gated_before_any_file_arrives(hub, sensitive_dir):
    push_dataset(sensitive_dir, "tester/gated", private=False, gated="manual", endpoint=hub.endpoint)
    repo = hub.repo("tester/gated", "dataset")
    assert repo.gated == "manual" and repo.private is False and len(repo.commits) == 1
    order = [r for r in hub.requests if r[0] in ("PUT", "POST") and "tester/gated" in r[1] or r[1] == "/api/repos/create"]
    settings = [i for i, r in enumerate(order) if r[1].endswith("/settings")]
    commit = next(i for i, r in enumerate(order) if "/commit/" in r[1])
    assert json.loads(hub.bodies[hub.requests.index(("POST", "/api/repos/create"))])["visibility"] == "private"
    assert settings[0] < commit < settings[1]  # gate, then commit, then open


def test_existing_public_repo_is_not_used_for_a_private_push(hub, export_dir):
    hub.repos[("dataset", "tester/open")] = Repo("dataset", "tester/open", private=False)
    with pytest.raises(PushError, match="already exists and is public"):
        push_dataset(export_dir, "tester/open", endpoint=hub.endpoint)
    assert hub.repo("tester/open", "dataset").commits == []
    push_dataset(export_dir, "tester/open", private=False, endpoint=hub.endpoint)
    assert len(hub.repo("tester/open", "dataset").commits) == 1


@pytest.mark.parametrize("repo_id", ["tester/bad name", "a/b/c", "tester/x--y", "", "tester/" + "x" * 97])
def test_invalid_repo_id(hub, export_dir, repo_id):
    with pytest.raises(PushError, match="invalid repo id"):
        push_dataset(export_dir, repo_id, endpoint=hub.endpoint)
    assert hub.requests == []


def test_missing_and_expired_tokens(hub, export_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PushError, match="no Hugging Face token found"):
        push_dataset(export_dir, "tester/x", endpoint=hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_expired_token_123")
    with pytest.raises(PushError, match="rejected") as e:
        push_dataset(export_dir, "tester/x", endpoint=hub.endpoint)
    assert "hf_expired_token_123" not in str(e.value)
    assert hub.repos == {}


def test_read_only_token(hub, export_dir):
    hub.role = "read"
    with pytest.raises(PushError, match="read-only"):
        push_dataset(export_dir, "tester/x", endpoint=hub.endpoint)


def test_not_an_export(hub, tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(PushError, match="not a cxr_max export"):
        push_dataset(tmp_path, "tester/x", endpoint=hub.endpoint)


def _checkpoint(tmp_path, *, name_or_path="outputs/apo"):
    ck = tmp_path / "ckpt"
    (ck / "checkpoint-10").mkdir(parents=True)
    (ck / "config.json").write_text(json.dumps({"model_type": "llava", "_name_or_path": name_or_path}))
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(ck / "model.safetensors"))
    (ck / "optimizer.pt").write_bytes(b"optimizer state")
    (ck / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    (ck / "README.md").write_text("---\nbase_model: None\n---\ntrainer card\n")
    (ck / "training_stages.json").write_text(json.dumps(STAGES))
    (ck / "eval_results.json").write_text(json.dumps(METRICS))
    return ck


def test_push_checkpoint_with_model_card(hub, tmp_path):
    ck = _checkpoint(tmp_path, name_or_path="Qwen/Qwen2.5-VL-3B-Instruct")
    plan = push_checkpoint(ck, "tester/student", datasets=["tester/cxr-demo"], endpoint=hub.endpoint)
    repo = hub.repo("tester/student", "model")
    assert repo.private is True and len(repo.commits) == 1
    assert sorted(repo.files) == ["README.md", "config.json", "eval_results.json", "model.safetensors",
                                  "training_stages.json"]
    assert repo.files["model.safetensors"] == (ck / "model.safetensors").read_bytes()
    card = repo.files["README.md"].decode()
    meta = yaml.safe_load(card.split("---", 2)[1])
    assert meta["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and meta["datasets"] == ["tester/cxr-demo"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert "Stage 3: critique (APO)" in card and "Not for clinical use" in card
    assert (ck / "README.md").read_text().startswith("---\nbase_model: None")  # the folder itself is untouched
    assert plan.card == card


def test_push_checkpoint_needs_a_real_base_model(hub, tmp_path, monkeypatch):
    ck = _checkpoint(tmp_path)  # config.json's _name_or_path is the trainer's local output folder
    (tmp_path / "outputs" / "apo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PushError, match="base_model"):
        push_checkpoint(ck, "tester/student", datasets=["tester/cxr-demo"], endpoint=hub.endpoint)
    plan = push_checkpoint(ck, "tester/student", base_model="Qwen/Qwen2.5-VL-7B-Instruct",
                           datasets=["tester/cxr-demo"], dry_run=True)
    assert "base_model: Qwen/Qwen2.5-VL-7B-Instruct" in plan.card and hub.requests == []
    with pytest.raises(PushError, match="no config.json"):
        push_checkpoint(tmp_path / "outputs", "tester/student", datasets=["tester/cxr-demo"], dry_run=True)


def test_cli_push_dry_run_and_clean_errors(hub, export_dir, tmp_path, capsys):
    from cxr_max.cli.main import main

    code = main(["push", str(export_dir), "tester/cli", "--dry-run", "--endpoint", hub.endpoint])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "dry run" in out and "cxr_max_export.json" in out and "## Teachers" in out
    assert hub.requests == []
    code = main(["push", str(export_dir), "tester/cli", "--endpoint", hub.endpoint])
    out, err = capsys.readouterr()
    assert code == 0 and "one commit" in out
    assert TOKEN not in out + err
    code = main(["push", str(tmp_path), "tester/cli", "--endpoint", hub.endpoint])
    out, err = capsys.readouterr()
    assert code == 1 and "not a cxr_max export" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

"""--push_to_hub in the recipes: Trainer's own push is taken over; one private push with cxr_max's card.

The card names the training data by its Hub id (``--hub_dataset_id``, or the data's own id) and a Hub base
model; both are checked before training, and the whole path runs through ``run_stage`` against the fake Hub.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from datasets import Dataset
from huggingface_hub import constants

from cxr_max.training.recipe_utils import (
    STAGES_FILE,
    lineage_base_model,
    push_if_requested,
    take_hub_push,
    training_dataset_ids,
)
from tests.test_hub_push import _checkpoint, hub  # noqa: F401  (the fake-Hub fixture)
from tests.test_training_recipes import LM_TEXTS, _critique_args, _lm_rows, critique

QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"


def test_take_hub_push_disables_trainer_push():
    args = SimpleNamespace(push_to_hub=True, hub_model_id="me/student", hub_private_repo=None, output_dir="outputs/x")
    request = take_hub_push(args, hub_dataset_id="me/cxr")
    assert request == {"repo_id": "me/student", "private": True, "datasets": ["me/cxr"]} and args.push_to_hub is False
    public = SimpleNamespace(push_to_hub=True, hub_model_id=None, hub_private_repo=False, output_dir="outputs/critique")
    assert take_hub_push(public, hub_dataset_id="me/a, me/b") == {"repo_id": "critique", "private": False,
                                                                  "datasets": ["me/a", "me/b"]}
    assert take_hub_push(SimpleNamespace(push_to_hub=False)) is None


def test_the_training_data_names_itself_when_it_has_a_hub_id(tmp_path, monkeypatch):
    from cxr_max.training.recipe_utils import describe_data

    hub_data = describe_data(dataset_name="me/cxr-export")  # --dataset_name me/cxr-export: loaded from the Hub
    assert hub_data["source"] == "hub" and training_dataset_ids(None, hub_data) == ["me/cxr-export"]
    assert training_dataset_ids(None, {"hub_dataset_id": "me/cxr", "source": "embedded synthetic"}) == ["me/cxr"]
    assert training_dataset_ids("me/given", hub_data) == ["me/given"]
    # local data is never taken for a Hub id: a data_dir, a rows file or export folder (even one whose relative
    # path reads like an id), the embedded synthetic world
    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n")
    assert training_dataset_ids(None, describe_data(dataset_name=str(rows))) == []
    (tmp_path / "me" / "cxr-export").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    local = describe_data(dataset_name="me/cxr-export")
    assert local["source"] == "rows" and training_dataset_ids(None, local) == []
    assert training_dataset_ids(None, {"source": "mimic-cxr-jpg", "location": "data/mimic"}) == []
    assert training_dataset_ids(None, {"source": "embedded synthetic", "synthetic": True, "location": None}) == []
    with pytest.raises(ValueError, match="--hub_dataset_id"):
        training_dataset_ids("cxr_max-synthetic")  # no namespace: the id the recipes used to push with


def test_push_without_a_dataset_id_fails_before_training():
    args = SimpleNamespace(push_to_hub=True, hub_model_id="me/student", hub_private_repo=None, output_dir="o")
    with pytest.raises(ValueError, match="--hub_dataset_id <namespace/name>"):
        take_hub_push(args, data={"source": "embedded synthetic", "synthetic": True, "location": None})
    assert args.push_to_hub is True  # nothing was taken over: the stage stops here
    with pytest.raises(Exception, match="--hub_dataset_id"):
        push_if_requested({"repo_id": "me/student", "private": True}, "o")


def test_push_uses_the_first_stage_base_model(hub, tmp_path):  # noqa: F811
    ck = _checkpoint(tmp_path, name_or_path="outputs/learn")  # config points at a local folder ...
    stages = [
        {"name": "learn", "description": "SFT", "hyperparameters": {"model_name_or_path": QWEN}},
        {"name": "critique", "description": "APO", "hyperparameters": {"model_name_or_path": "outputs/learn", "beta": 0.1}},
    ]
    (ck / STAGES_FILE).write_text(json.dumps(stages))
    assert lineage_base_model(str(ck)) == QWEN and lineage_base_model(str(tmp_path / "fresh")) == str(tmp_path / "fresh")
    push_if_requested({"repo_id": "tester/apo-student", "private": True}, str(ck), datasets=["tester/cxr"],
                      endpoint=hub.endpoint)
    repo = hub.repo("tester/apo-student", "model")
    meta = yaml.safe_load(repo.files["README.md"].decode().split("---", 2)[1])
    assert repo.private is True and len(repo.commits) == 1
    assert meta["base_model"] == QWEN  # ... the card names the real base model
    assert push_if_requested(None, str(ck)) is None and len(repo.commits) == 1


def _learned(tmp_path, *, lineage: bool):
    """A tiny text model standing in for the learn output. With ``lineage`` its training_stages.json says the
    learn stage started from a Hub model (what a real learn run from Qwen2.5-VL records)."""
    from cxr_max.training.tiny import tiny_lm

    lm = tmp_path / "lm"
    tiny_lm(LM_TEXTS, lm, seed=0)
    if lineage:
        (lm / STAGES_FILE).write_text(json.dumps([{"name": "learn", "description": "SFT",
                                                   "hyperparameters": {"model_name_or_path": QWEN}}]))
    return lm


@pytest.mark.slow
def test_critique_push_to_hub_through_run_stage(hub, tmp_path, monkeypatch):  # noqa: F811
    """``--push_to_hub --hub_dataset_id`` on the critique recipe: trains, then one private push whose card names
    the dataset and the lineage's base model (the recipes used to push with "cxr_max-synthetic", refused)."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)  # what HF_ENDPOINT sets
    _learned(tmp_path, lineage=True)
    out = tmp_path / "critique"
    script, args, model = _critique_args(tmp_path, out, "--max_steps", "1", "--save_strategy", "no",
                                         "--push_to_hub", "true", "--hub_model_id", "tester/apo-student",
                                         "--hub_dataset_id", "tester/cxr-demo")
    assert script.hub_dataset_id == "tester/cxr-demo"
    critique.main(script, args, model, dataset=Dataset.from_list(_lm_rows()))
    repo = hub.repo("tester/apo-student", "model")
    assert repo.private is True and len(repo.commits) == 1
    assert {"model.safetensors", "config.json", STAGES_FILE, "all_results.json", "README.md"} <= set(repo.files)
    assert repo.files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    meta = yaml.safe_load(repo.files["README.md"].decode().split("---", 2)[1])
    assert meta["datasets"] == ["tester/cxr-demo"] and meta["base_model"] == QWEN
    assert [s["name"] for s in json.loads(repo.files[STAGES_FILE])] == ["learn", "critique"]


@pytest.mark.parametrize("lineage, extra, match", [
    (True, (), "--hub_dataset_id <namespace/name>"),  # no dataset id, and the in-process rows have none
    (False, ("--hub_dataset_id", "tester/cxr-demo"), "base_model must be a Hub model id"),  # built offline
])
def test_critique_push_to_hub_stops_before_training(hub, tmp_path, monkeypatch, lineage, extra, match):  # noqa: F811
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    _learned(tmp_path, lineage=lineage)
    out = tmp_path / "critique"
    script, args, model = _critique_args(tmp_path, out, "--max_steps", "1", "--push_to_hub", "true",
                                         "--hub_model_id", "tester/apo-student", *extra)
    with pytest.raises(ValueError, match=match):
        critique.main(script, args, model, dataset=Dataset.from_list(_lm_rows()))
    assert not out.exists() and not hub.repos  # no training ran, nothing was sent


@pytest.mark.slow
def test_critique_push_names_the_hub_dataset_it_trained_on(hub, tmp_path, monkeypatch):  # noqa: F811
    """``--dataset_name namespace/name`` (rows from the Hub) and no ``--hub_dataset_id``: the card names that id.
    (datasets.load_dataset is replaced by a stand-in serving the rows: the fake Hub only receives pushes.)"""
    import datasets

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    loaded = []
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: ["default"])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: loaded.append(name) or
                        datasets.DatasetDict({"train": Dataset.from_list(_lm_rows())}))
    _learned(tmp_path, lineage=True)
    script, args, model = _critique_args(tmp_path, tmp_path / "critique", "--max_steps", "1", "--save_strategy", "no",
                                         "--push_to_hub", "true", "--hub_model_id", "tester/apo-student",
                                         "--dataset_name", "tester/cxr-prefs")
    critique.main(script, args, model)
    assert loaded == ["tester/cxr-prefs"]
    meta = yaml.safe_load(hub.repo("tester/apo-student", "model").files["README.md"].decode().split("---", 2)[1])
    assert meta["datasets"] == ["tester/cxr-prefs"] and meta["base_model"] == QWEN
    stages = json.loads((tmp_path / "critique" / STAGES_FILE).read_text())
    assert stages[-1]["data"]["source"] == "hub"

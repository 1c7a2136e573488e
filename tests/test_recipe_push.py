"""--push_to_hub in the recipes: Trainer's own push is taken over; one private push with cxr_max's card."""

from __future__ import annotations

import json
from types import SimpleNamespace

import yaml

from cxr_max.training.recipe_utils import STAGES_FILE, push_if_requested, take_hub_push
from tests.test_hub_push import _checkpoint, hub  # noqa: F401  (the fake-Hub fixture)


def test_take_hub_push_disables_trainer_push():
    args = SimpleNamespace(push_to_hub=True, hub_model_id="me/student", hub_private_repo=None, output_dir="outputs/x")
    request = take_hub_push(args)
    assert request == {"repo_id": "me/student", "private": True} and args.push_to_hub is False
    public = SimpleNamespace(push_to_hub=True, hub_model_id=None, hub_private_repo=False, output_dir="outputs/critique")
    assert take_hub_push(public) == {"repo_id": "critique", "private": False}
    assert take_hub_push(SimpleNamespace(push_to_hub=False)) is None


def test_push_uses_the_first_stage_base_model(hub, tmp_path):  # noqa: F811
    ck = _checkpoint(tmp_path, name_or_path="outputs/learn")  # config points at a local folder ...
    stages = [
        {"name": "learn", "description": "SFT", "hyperparameters": {"model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct"}},
        {"name": "critique", "description": "APO", "hyperparameters": {"model_name_or_path": "outputs/learn", "beta": 0.1}},
    ]
    (ck / STAGES_FILE).write_text(json.dumps(stages))
    push_if_requested({"repo_id": "tester/apo-student", "private": True}, str(ck), datasets=["tester/cxr"],
                      endpoint=hub.endpoint)
    repo = hub.repo("tester/apo-student", "model")
    meta = yaml.safe_load(repo.files["README.md"].decode().split("---", 2)[1])
    assert repo.private is True and len(repo.commits) == 1
    assert meta["base_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"  # ... the card names the real base model
    assert push_if_requested(None, str(ck)) is None and len(repo.commits) == 1

"""TRL's dataset flags (cxr_max.stages.data): the builder, an export folder (its splits), a rows file, a Hub id;
an eval dataset when --eval_strategy asks for one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest

from cxr_max.stages.data import DatasetArguments, load_dataset_dict, train_and_eval
from cxr_max.training.recipe_utils import describe_data, training_dataset_ids

SPLITS = ("train", "validation", "test")


def _rows(split: str, n: int) -> datasets.Dataset:
    return datasets.Dataset.from_list([{"prompt": f"{split} {i}", "completion": "effusion"} for i in range(n)])


def _no_eval():
    return SimpleNamespace(eval_strategy="no")


def test_an_export_folder_yields_its_own_splits(tmp_path):
    from cxr_max.hub.export import export_dataset

    splits = datasets.DatasetDict({s: _rows(s, n) for s, n in zip(SPLITS, (6, 3, 2))})
    export_dataset({"sft": splits, "apo": splits}, tmp_path / "export", source="synthetic", progress=False,
                   shard_rows=2)
    args = DatasetArguments(dataset_name=str(tmp_path / "export"), dataset_config="sft")
    got = load_dataset_dict(args)
    assert {s: got[s].num_rows for s in got} == {"train": 6, "validation": 3, "test": 2}  # not one globbed "train"
    train, evaluation = train_and_eval(args, SimpleNamespace(eval_strategy="steps"))
    assert train["prompt"][0] == "train 0" and evaluation["prompt"] == [f"validation {i}" for i in range(3)]
    test = DatasetArguments(dataset_name=str(tmp_path / "export"), dataset_config="sft", dataset_test_split="test")
    assert train_and_eval(test, SimpleNamespace(eval_strategy="epoch"))[1].num_rows == 2
    assert train_and_eval(args, _no_eval())[1] is None  # no evaluation asked: no eval dataset
    with pytest.raises(ValueError, match="no config 'mimic'"):
        load_dataset_dict(DatasetArguments(dataset_name=str(tmp_path / "export"), dataset_config="mimic"))


def test_a_plain_folder_of_split_files_and_a_rows_file(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for s, n in zip(SPLITS, (4, 2, 1)):
        _rows(s, n).to_parquet(str(folder / f"{s}.parquet"))
    got = load_dataset_dict(DatasetArguments(dataset_name=str(folder), dataset_config="sft"))  # one default config
    assert {s: got[s].num_rows for s in got} == {"train": 4, "validation": 2, "test": 1}
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) for i in range(3)))
    args = DatasetArguments(dataset_name=str(rows), dataset_config="sft")
    train, _ = train_and_eval(args, _no_eval())
    assert train["prompt"] == ["p0", "p1", "p2"]
    with pytest.raises(ValueError, match="no split 'validation'"):
        train_and_eval(args, SimpleNamespace(eval_strategy="steps"))
    assert describe_data(dataset_name=str(rows)) == {"source": "rows", "synthetic": None, "location": str(rows)}


def test_builder_options_with_ready_rows_and_a_missing_path_are_errors(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "completion": "c"}))
    with pytest.raises(ValueError, match="--data_dir, --trajectories: option"):
        load_dataset_dict(DatasetArguments(dataset_name=str(rows), data_dir="/data"), trajectories="t")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dataset_dict(DatasetArguments(dataset_name=str(tmp_path / "typo.jsonl")))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dataset_dict(DatasetArguments(dataset_name="./outputs/compare"))


def test_a_hub_id_goes_to_datasets_load_dataset_and_names_itself_on_the_card(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: calls.append(("names", name)) or
                        ["default", "sft"])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: calls.append(("load", name, config)) or
                        datasets.DatasetDict({"train": _rows("train", 2), "validation": _rows("validation", 1)}))
    train, evaluation = train_and_eval(DatasetArguments(dataset_name="me/cxr", dataset_config="sft"),
                                       SimpleNamespace(eval_strategy="steps"))
    assert calls == [("names", "me/cxr"), ("load", "me/cxr", "sft")] and evaluation.num_rows == 1
    data = describe_data(dataset_name="me/cxr")
    assert data["source"] == "hub" and training_dataset_ids(None, data) == ["me/cxr"]


def test_the_builder_is_the_default_and_reads_its_config_with_its_options(synthetic_root):
    args = DatasetArguments(dataset_config="sft", data_dir=str(Path(synthetic_root) / "mimic-cxr-jpg"))
    train, evaluation = train_and_eval(args, SimpleNamespace(eval_strategy="steps"),
                                       trajectories=str(Path(synthetic_root) / "trajectories"))
    assert "messages" in train.column_names and train.num_rows > evaluation.num_rows > 0
    import cxr_max

    same = cxr_max.load_dataset("sft", split="validation", data_dir=args.data_dir,
                                trajectories=str(Path(synthetic_root) / "trajectories"))
    assert evaluation["messages"] == same["messages"]
    with pytest.raises(ValueError, match="in-process dataset is one Dataset"):
        train_and_eval(args, SimpleNamespace(eval_strategy="steps"), dataset=train)

"""Dataset and model cards from the hub_cards templates: metadata the Hub expects, tables, bad templates."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard

from cxr_max.errors import DataError
from cxr_max.hub.cards import (
    DATASET_TEMPLATE,
    MODEL_TEMPLATE,
    check_template_fields,
    load_metrics,
    metrics_rows,
    render_model_card,
    teacher_table,
)

STAGES = [
    {"name": "learn (multi-teacher SFT)", "description": "SFT on all teachers' trajectories.",
     "hyperparameters": {"learning_rate": 1e-4, "lora_r": 8, "epochs": 1}},
    {"name": "compare (consensus)", "description": "The SFT student writes one consensus trajectory per image.",
     "hyperparameters": {"temperature": 0.0}},
    {"name": "critique (APO)", "description": "Plackett-Luce loss, consensus positive, all teachers negative.",
     "hyperparameters": {"learning_rate": 5e-7, "beta": 0.1}},
]
METRICS = {"ms_cxr_t": {"accuracy": {"Consolidation": 0.84, "avg": {"mean": 0.78, "low": 0.74, "high": 0.81}}},
           "bleu_4": 0.1234567, "n": 1326, "model": "student", "flag": True}


def _front_matter(content: str) -> dict:
    return yaml.safe_load(content.split("---", 2)[1])


def _model_card(**over):
    kwargs = dict(base_model="Qwen/Qwen2.5-VL-7B-Instruct", datasets=["someone/cxr-max-export"], stages=STAGES,
                  metrics=METRICS, model_name="cxr-apo-student", data_description="CXR-MAX trajectories.")
    return render_model_card(**(kwargs | over))


def test_model_card_metadata_and_body():
    card = _model_card()
    meta = _front_matter(card.content)
    assert meta["base_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert meta["datasets"] == ["someone/cxr-max-export"]
    assert meta["license"] == "cc-by-nc-sa-4.0" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["library_name"] == "transformers" and "medical" in meta["tags"]
    body = card.text
    assert "Not for clinical use" in body and "## Limitations" in body and "## Intended use" in body
    for i, stage in enumerate(STAGES, 1):
        assert f"### Stage {i}: {stage['name']}" in body
    assert "| `learning_rate` | `5e-07` |" in body and "| `lora_r` | `8` |" in body
    assert "| ms_cxr_t/accuracy/avg | 0.78 [0.74, 0.81] |" in body
    assert "| bleu_4 | 0.1235 |" in body and "| n | 1326 |" in body
    assert "flag" not in body and "| model |" not in body  # booleans and strings are not metrics
    # the rendered card round-trips through huggingface_hub's parser
    assert ModelCard(card.content).data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.mark.parametrize("base_model", [None, "", "/home/me/ckpt", "outputs/sft", "bad id!"])
def test_model_card_refuses_a_missing_or_local_base_model(base_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "sft").mkdir(parents=True)  # a trainer's local output folder is not a Hub id
    with pytest.raises(DataError, match="base_model"):
        _model_card(base_model=base_model)


def test_model_card_needs_stages_datasets_and_metrics(tmp_path):
    with pytest.raises(DataError, match="stages"):
        _model_card(stages=[])
    with pytest.raises(DataError, match="hyperparameters"):
        _model_card(stages=[{"name": "sft"}])
    with pytest.raises(DataError, match="dataset"):
        _model_card(datasets=[])
    (tmp_path / "m.json").write_text('{"note": "no numbers"}')
    with pytest.raises(DataError, match="m.json.*no numeric"):
        _model_card(metrics=tmp_path / "m.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match="bad.json, row line 1"):
        load_metrics(tmp_path / "bad.json")


def test_metrics_file_is_read(tmp_path):
    (tmp_path / "eval_results.json").write_text(json.dumps(METRICS))
    card = _model_card(metrics=tmp_path / "eval_results.json")
    assert "Read from `eval_results.json`" in card.text
    assert metrics_rows({"a": {"b": 1, "c": {"value": 0.5}}}) == [{"metric": "a/b", "value": "1"},
                                                                  {"metric": "a/c", "value": "0.5"}]


def test_template_with_a_missing_field_names_it(tmp_path):
    tpl = tmp_path / "card.md"
    tpl.write_text("---\n{{ card_data }}\n---\n# {{ model_name }}\n{{ training_hardware }}\n")
    with pytest.raises(DataError) as e:
        check_template_fields(tpl, {"model_name": "x"})
    assert str(tpl) in str(e.value) and "training_hardware" in str(e.value)
    with pytest.raises(DataError, match="training_hardware"):
        _model_card(template_path=tpl)
    with pytest.raises(DataError, match="not found"):
        _model_card(template_path=tmp_path / "nope.md")


def test_shipped_templates_declare_what_the_renderers_give():
    check_template_fields(MODEL_TEMPLATE, {k: 1 for k in ("model_name", "base_model", "datasets", "stages",
                                                          "data_description", "metrics_source", "eval_rows",
                                                          "limitations")})
    with pytest.raises(DataError, match="teachers"):
        check_template_fields(DATASET_TEMPLATE, {k: 1 for k in ("pretty_name", "description", "source", "configs",
                                                                "include_pixels", "include_reports", "dropped_columns")})


def test_teacher_table_counts():
    df = pd.DataFrame({
        "teacher": ["a", "a", "a", "b", "b"],
        "teacher_version": ["1", "2", "2", "x", None],
        "dicom_id": ["i1", "i2", "i2", "i1", "i2"],
        "refusal": [True, False, False, False, None],
        "status": ["ok", "ok", "failed", "ok", "ok"],
    })
    rows = {r["name"]: r for r in teacher_table(df)}
    assert rows["a"] == {"name": "a", "versions": "1, 2", "trajectories": 2, "images": 2, "refusal_rate": 0.5,
                         "failed": 1}
    assert rows["b"]["refusal_rate"] == 0.0 and rows["b"]["versions"] == "x"


def test_dataset_card_parses_as_a_hub_dataset_card(tmp_path):
    from tests.test_hub_export import make_configs
    from cxr_max.hub import export_dataset

    result = export_dataset(make_configs(8), tmp_path / "e", source="mimic", progress=False)
    card = DatasetCard.load(tmp_path / "e" / "README.md")
    assert card.data.license == "cc-by-nc-sa-4.0"
    assert {c["config_name"] for c in card.data.configs} == {"trajectories", "mimic"}
    text = card.text
    for needle in ("## Teachers", "## Configs and fields", "## Licence", "PhysioNet Credentialed Health Data License",
                   "## How to join your local MIMIC-CXR", "arXiv:2510.04142", "MIMIC-CXR-JPG, a large publicly",
                   "Scientific Data"):
        assert needle in text, needle
    assert result.card.content == (tmp_path / "e" / "README.md").read_text()

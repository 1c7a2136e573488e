"""``model`` consensus runs end to end with the tiny CPU student (it only needs to run, not to be good)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from test_drift_core import make_world  # noqa: E402

from cxr_max.drift.compare import compare  # noqa: E402
from cxr_max.drift.findings import build_panel  # noqa: E402
from cxr_max.drift.model_consensus import consensus_prompt  # noqa: E402
from cxr_max.drift.preferences import write_preferences  # noqa: E402

training = pytest.importorskip("cxr_max.training")


def test_consensus_prompt_lists_every_trajectory():
    text = consensus_prompt("This is a chest X-ray <image>. What is it?", ["<think> a </think>A.", "B."])
    assert "<image>" not in text and "[1] <think> a </think>A." in text and "[2] B." in text
    assert "2 reasoning trajectories" in text


@pytest.mark.slow
def test_model_consensus_with_tiny_student(tmp_path):
    table, _ = make_world(n=6, seed=1)
    panel = build_panel(table, source="stored")
    texts = [t for t in table["raw"].to_pylist()] + [consensus_prompt("x", ["y"])]
    model, processor = training.tiny_vlm(texts, tmp_path / "student")
    calls = []

    def loader(subject_id, study_id, dicom_id):
        calls.append(dicom_id)
        return Image.new("RGB", (64, 64), color=(int(subject_id[-2:]) * 7 % 255,) * 3)

    eos = processor.tokenizer.eos_token_id  # a random student rarely stops by itself: end every text at 12 tokens
    result = compare(panel, consensus="model", model_consensus_kwargs=dict(
        model=str(tmp_path / "student"), image_loader=loader, batch_size=4, max_new_tokens=12, progress=False,
        forced_eos_token_id=eos))
    assert sorted(calls) == sorted(panel.dicom_id.tolist())
    cons = result.consensus
    assert cons.method == "model" and cons.texts.shape == (6,)
    assert all(isinstance(t, str) for t in cons.texts)
    assert np.all((cons.confidence >= 0) & (cons.confidence <= 1))
    rows = result.rows
    assert rows and all(r["consensus_method"] == "model" and r["consensus_source"] == "model" for r in rows)
    assert all(r["chosen"] == cons.texts[list(panel.dicom_id).index(r["dicom_id"])] for r in rows)
    path = write_preferences(rows, tmp_path / "prefs")
    assert json.loads(path.read_text().splitlines()[0])["consensus_method"] == "model"


def _loader(subject_id, study_id, dicom_id):
    return Image.new("RGB", (64, 64), color=(int(subject_id[-2:]) * 7 % 255,) * 3)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    table, _ = make_world(n=6, seed=1)
    folder = tmp_path_factory.mktemp("student")
    training.tiny_vlm(list(table["raw"].to_pylist()) + [consensus_prompt("x", ["y"])], folder)
    return folder, build_panel(table, source="stored")


@pytest.mark.slow
def test_unfinished_generations_are_dropped_and_counted(student):
    from cxr_max.errors import SkipLog

    folder, panel = student
    skips = SkipLog()
    result = compare(panel, consensus="model", skips=skips, model_consensus_kwargs=dict(
        model=str(folder), image_loader=_loader, batch_size=3, max_new_tokens=2, progress=False))
    cons = result.consensus
    assert cons.unfinished.all() and all(t is None for t in cons.texts)  # 2 tokens: nothing ends
    assert result.rows == []
    assert skips.counts["model consensus did not finish (no end token within max_new_tokens), image dropped"] == 6


@pytest.mark.slow
def test_teacher_order_is_shuffled_per_image_and_seeded(student, monkeypatch):
    from cxr_max.drift import model_consensus as mc

    folder, panel = student
    seen = []
    real = mc.consensus_prompt
    monkeypatch.setattr(mc, "consensus_prompt", lambda prompt, texts, template=mc.DEFAULT_TEMPLATE:
                        seen.append(list(texts)) or real(prompt, texts, template))

    def orders(**kw):
        seen.clear()
        mc.model_consensus(panel, model=str(folder), image_loader=_loader, batch_size=6, max_new_tokens=1,
                           progress=False, **kw)
        return list(seen)

    fixed = orders(shuffle_teachers=False)
    usable = [[panel.raw[i, t] for t in range(len(panel.teachers)) if panel.usable[i, t]] for i in range(6)]
    assert fixed == usable  # teacher-name order
    a, b, c = orders(seed=0), orders(seed=0), orders(seed=1)
    assert a == b and a != c  # seeded
    assert [sorted(x) for x in a] == [sorted(x) for x in usable] and a != fixed  # same texts, shuffled
    first = {x[0] for x in a}
    assert len(first) > 1  # not one teacher always first


def test_unsupported_findings_are_flagged():
    from cxr_max.drift.findings import ABSENT, CHEXPERT_LABELS, PRESENT
    from cxr_max.drift.model_consensus import unsupported_findings

    table, _ = make_world(n=4, seed=2)
    panel = build_panel(table, source="stored")
    state = np.full((4, len(CHEXPERT_LABELS)), ABSENT, dtype=np.int8)
    k = CHEXPERT_LABELS.index("Pneumothorax")
    panel.state[:, :, k] = ABSENT  # no teacher reports a pneumothorax ...
    state[1, k] = PRESENT  # ... but the consensus of image 1 does
    e = CHEXPERT_LABELS.index("Pleural Effusion")
    panel.state[2, 0, e] = PRESENT
    panel.usable[2, 0] = True
    state[2, e] = PRESENT  # supported by teacher 0
    flags = unsupported_findings(panel, state)
    assert flags[1, k] and flags.sum() == 1


@pytest.mark.slow
def test_generation_runs_in_the_models_dtype(student):
    """A bf16 student (as on a GPU) gets its pixels in bf16: before, the fp32 pixels met bf16 weights and failed."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cxr_max.drift.model_consensus import model_consensus

    folder, panel = student
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16)
    seen = []
    real_generate = model.generate

    def spy(**inputs):  # what reaches the model: on its device, pixels in its dtype (fp32 CPU tensors before)
        seen.append((inputs["pixel_values"].dtype, inputs["pixel_values"].device, inputs["input_ids"].device))
        return real_generate(**inputs)

    model.generate = spy
    cons = model_consensus(panel, model=model, processor=AutoProcessor.from_pretrained(folder),
                           image_loader=_loader, batch_size=3, max_new_tokens=3, progress=False,
                           forced_eos_token_id=AutoProcessor.from_pretrained(folder).tokenizer.eos_token_id)
    assert not cons.unfinished.any() and all(isinstance(t, str) for t in cons.texts)
    assert seen and all(d == torch.bfloat16 and pd == model.device and idd == model.device for d, pd, idd in seen)
    from cxr_max.generation import to_model

    class Meta:  # a model on another device (as a GPU model is for CPU-made inputs)
        device, dtype = torch.device("meta"), torch.float16

    moved = to_model({"input_ids": torch.ones(1, 3, dtype=torch.long), "pixel_values": torch.ones(2, 3)}, Meta)
    assert moved["input_ids"].device.type == "meta" and moved["input_ids"].dtype == torch.long
    assert moved["pixel_values"].device.type == "meta" and moved["pixel_values"].dtype == torch.float16
    from cxr_max.generation import load_generator, resolve_dtype

    loaded, _ = load_generator(folder, dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32

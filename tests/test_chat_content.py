"""One chat-content layout for a prompt with ``<image>``: the builder's rows, the evaluation runner's
user turn and the teacher requests all go through :func:`cxr_max.trajectories.prompts.chat_content`."""

from __future__ import annotations

import pyarrow as pa
import pytest

import cxr_max.teachers.prompts as teacher_prompts
from cxr_max.builder import _message_array
from cxr_max.evaluation.predict import user_message
from cxr_max.trajectories.prompts import chat_content, render_prompt


def _shape(content: list[dict]) -> list[str]:
    """Content parts as comparable tokens: the text itself, or IMAGE for any image part."""
    return [p["text"] if p["type"] == "text" else "IMAGE" for p in content]


def _builder(prompt: str) -> list[str]:
    rows = _message_array("user", pa.array([prompt], pa.string()), with_image=True).to_pylist()
    assert rows[0][0]["role"] == "user"
    return _shape(rows[0][0]["content"])


def _evaluation(prompt: str) -> list[str]:
    turn = user_message(prompt)
    assert turn[0]["role"] == "user"
    return _shape(turn[0]["content"])


def _teacher(prompt: str, monkeypatch) -> list[str]:
    monkeypatch.setattr(teacher_prompts, "render_prompt", lambda task, diagnoses=(): prompt)
    text, messages = teacher_prompts.build_messages("diagnose", "data:image/png;base64,AA==")
    assert text == prompt
    parts = messages[-1]["content"]
    assert [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] == ["data:image/png;base64,AA=="]
    return _shape(parts)


def test_chat_content_rule_by_hand():
    assert chat_content("Look <image> here.") == [{"type": "text", "text": "Look"}, {"type": "image"},
                                                  {"type": "text", "text": "here."}]
    # missing marker: the image first, then the whole prompt
    assert chat_content("What is the disease?") == [{"type": "image"}, {"type": "text", "text": "What is the disease?"}]
    assert chat_content("<image>") == [{"type": "image"}]
    assert chat_content(None) == [{"type": "image"}]
    assert chat_content("  <image> a <image> b ") == [{"type": "image"}, {"type": "text", "text": "a <image> b"}]
    part = {"type": "image_url", "image_url": {"url": "u"}}
    out = chat_content("x <image>", part)
    assert out == [{"type": "text", "text": "x"}, part] and out[1] is not part


@pytest.mark.parametrize("prompt", [
    render_prompt("diagnose"),
    render_prompt("explain", ["Edema", "Pleural Effusion"]),
    "<image> Describe the image.",
    "Describe the image. <image>",
    "Please help me determine the patient's disease.",  # no marker
    "  What is the patient's disease?  ",  # no marker, padded
])
def test_builder_evaluation_and_teachers_agree(prompt, monkeypatch):
    expected = _shape(chat_content(prompt))
    assert _builder(prompt) == expected
    assert _evaluation(prompt) == expected
    assert _teacher(prompt, monkeypatch) == expected


def test_missing_marker_puts_the_image_first_everywhere(monkeypatch):
    prompt = "Which findings are present?"
    for got in (_builder(prompt), _evaluation(prompt), _teacher(prompt, monkeypatch)):
        assert got == ["IMAGE", prompt]

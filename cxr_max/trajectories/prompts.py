"""Prompt templates for the three teacher tasks.

- ``diagnose``: the authors' own row format (docs/data.md, "The authors' rows"), used for the SFT/APO configs.
- ``explain``: the paper's collection task: the image plus the known diagnoses, explain the basis.
- ``report``: free report generation (FINDINGS and IMPRESSION).

``<image>`` marks where the image goes; :func:`chat_content` turns a prompt into the chat content
parts (text before the marker, the image part, text after) for every caller: the dataset builder,
the evaluation runner and the teacher requests, so training, evaluation and teachers see one layout.
"""

from __future__ import annotations

from collections.abc import Sequence

IMAGE_TOKEN = "<image>"

TEMPLATES: dict[str, str] = {
    "diagnose": "This is a patient's chest DR image <image>. Please help me determine the patient's disease.",
    "explain": (
        "This is a patient's chest X-ray <image>. The patient has been diagnosed with {diagnoses}. "
        "Explain the radiographic basis for the diagnosis of {diagnoses}: reason step by step inside "
        "<think></think>, then state the findings."
    ),
    "report": (
        "This is a patient's chest X-ray <image>. Write the radiology report: reason inside "
        "<think></think>, then give the FINDINGS and IMPRESSION sections."
    ),
}


def chat_content(prompt: str | None, image_part: dict | None = None) -> list[dict]:
    """The chat content parts of a user prompt with one image.

    The text before the first ``<image>`` (stripped, left out when empty), then ``image_part``
    (default ``{"type": "image"}``; the builder passes its Arrow-typed part, the teacher client an
    OpenAI ``image_url`` part), then the text after it (stripped, left out when empty). Later
    ``<image>`` markers stay in the text. **Missing marker: the image goes first**, before the whole
    prompt, as in the authors' rows (image, then question). ``None`` reads as an empty prompt.
    """
    part = {"type": "image"} if image_part is None else dict(image_part)
    text = prompt or ""
    before, marker, after = text.partition(IMAGE_TOKEN)
    if not marker:
        before, after = "", text
    content: list[dict] = []
    if before.strip():
        content.append({"type": "text", "text": before.strip()})
    content.append(part)
    if after.strip():
        content.append({"type": "text", "text": after.strip()})
    return content


def format_diagnoses(diagnoses: Sequence[str]) -> str:
    names = [d.lower() for d in diagnoses] or ["no acute cardiopulmonary abnormality"]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def render_prompt(task: str, diagnoses: Sequence[str] = ()) -> str:
    """The user prompt text for ``task`` (one of TEMPLATES), with ``<image>`` where the image goes."""
    try:
        template = TEMPLATES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TEMPLATES)}") from None
    return template.format(diagnoses=format_diagnoses(diagnoses))


def answer_sentence(findings: Sequence[str]) -> str:
    """The authors' final-answer form: 'The disease of this patient is X.'"""
    if not findings:
        return "The patient has no acute cardiopulmonary disease."
    return f"The disease of this patient is {format_diagnoses(findings)}."

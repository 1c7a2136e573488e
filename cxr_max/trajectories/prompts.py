"""Prompt templates for the three teacher tasks.

- ``diagnose``: the authors' own row format (REFERENCE section 2), used for the SFT/APO configs.
- ``explain``: the paper's collection task: the image plus the known diagnoses, explain the basis.
- ``report``: free report generation (FINDINGS and IMPRESSION).

``<image>`` marks where the image goes; chat clients put the image part there.
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

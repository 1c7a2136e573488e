"""Chat messages for the teacher tasks, built from :mod:`cxr_max.trajectories.prompts`.

A registry's ``prompt_template`` names a template set: a system prompt (or none) plus the user
templates of the three tasks (``diagnose``: the authors' disease-determination prompt; ``explain``:
the paper's task, image + known diagnoses, explain the radiographic basis; ``report``: free report
generation). The image goes where the template has ``<image>``, as an OpenAI ``image_url`` part
(:func:`cxr_max.trajectories.prompts.chat_content`, the layout the builder and evaluation use too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cxr_max.trajectories.prompts import IMAGE_TOKEN, TEMPLATES, chat_content, render_prompt


@dataclasses.dataclass(frozen=True)
class TemplateSet:
    system: str | None
    tasks: tuple[str, ...] = tuple(TEMPLATES)


TEMPLATE_SETS: dict[str, TemplateSet] = {
    "cxr-max-v1": TemplateSet(system=None),
    "cxr-max-v1-radiologist": TemplateSet(
        system="You are an experienced thoracic radiologist. Answer as you would in a radiology read-out."
    ),
}


def build_messages(task: str, image_url: str, diagnoses: Sequence[str] = (), template: str = "cxr-max-v1"
                   ) -> tuple[str, list[dict]]:
    """Return ``(prompt_text, messages)`` for one request; ``prompt_text`` keeps the ``<image>`` marker."""
    try:
        tset = TEMPLATE_SETS[template]
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATE_SETS)}") from None
    if task not in tset.tasks:
        raise ValueError(f"template set {template!r} has no task {task!r}; it has {list(tset.tasks)}")
    prompt = render_prompt(task, diagnoses)
    content = chat_content(prompt, {"type": "image_url", "image_url": {"url": image_url}})
    messages: list[dict] = []
    if tset.system:
        messages.append({"role": "system", "content": tset.system})
    messages.append({"role": "user", "content": content})
    return prompt, messages


def detect_task(text: str) -> str | None:
    """Which task a user prompt was rendered from (by the templates' fixed text), or None."""
    norm = " ".join(text.replace(IMAGE_TOKEN, " ").split())
    for task, template in TEMPLATES.items():
        head = " ".join(template.split(IMAGE_TOKEN)[0].split("{")[0].split())
        tail = " ".join(template.split(IMAGE_TOKEN)[-1].split("{")[0].split())
        if norm.startswith(head) and tail[:40] in norm:
            return task
    return None

"""Split a teacher's raw completion into reasoning and answer, and detect refusals."""

from __future__ import annotations

import re

# <think>, <thinking>, <reasoning>, <thought> blocks (the tag names MLLMs commonly emit).
_BLOCK = re.compile(r"<(think|thinking|reasoning|thought)>\s*(.*?)\s*</\1>", re.IGNORECASE | re.DOTALL)
_OPEN_ONLY = re.compile(r"<(think|thinking|reasoning|thought)>\s*(.*)", re.IGNORECASE | re.DOTALL)
_CLOSE_ONLY = re.compile(r"^(.*?)</(think|thinking|reasoning|thought)>", re.IGNORECASE | re.DOTALL)
# "Reasoning: ... Answer: ..." / "Final answer: ..." layouts.
_LABELLED = re.compile(
    r"^\s*(?:reasoning|analysis|explanation)\s*:\s*(.*?)\s*(?:final\s+answer|answer|conclusion|diagnosis)\s*:\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_FINAL = re.compile(r"^(.*?)\s*(?:final\s+answer|answer)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)

_REFUSAL = re.compile(
    r"\b(?:as an ai\b|i(?:'m| am) (?:not able|unable) to (?:provide|give|offer|make)|"
    r"i can(?:no|')t (?:provide|give|offer|make|help with) (?:a |any )?(?:medical )?(?:diagnos|advice|interpret)|"
    r"i cannot (?:provide|give|offer|make) (?:a |any )?(?:medical )?(?:diagnos|advice|interpret)|"
    r"(?:please )?consult (?:a|with a|your) (?:qualified )?(?:radiologist|physician|doctor|healthcare)|"
    r"not (?:able|qualified) to (?:diagnose|interpret medical))",
    re.IGNORECASE,
)


def split_answer(raw: str) -> tuple[str, str]:
    """Return ``(reasoning, answer)``.

    ``<think>r</think>a`` (and the <thinking>/<reasoning>/<thought> variants) gives (r, a); an
    unclosed opening tag gives everything after it as reasoning and an empty answer (a truncated
    completion); a closing tag with no opening one (chat templates that put ``<think>`` in the
    prompt) splits at the closing tag; "Reasoning: r Answer: a" and "... Final answer: a" are
    recognised; anything else is all answer, no reasoning.
    """
    text = (raw or "").strip()
    m = _BLOCK.search(text)
    if m:
        reasoning = m.group(2).strip()
        answer = (text[: m.start()] + " " + text[m.end() :]).strip()
        return reasoning, answer
    m = _CLOSE_ONLY.match(text)
    if m:
        return m.group(1).strip(), text[m.end() :].strip()
    m = _OPEN_ONLY.search(text)
    if m:
        return m.group(2).strip(), ""
    m = _LABELLED.match(text) or _FINAL.match(text)
    if m and m.group(2).strip():
        return m.group(1).strip(), m.group(2).strip()
    return "", text


def is_refusal(text: str) -> bool:
    """True when a completion declines the medical task ("As an AI, I cannot provide ...")."""
    return bool(_REFUSAL.search(text or ""))


def assistant_text(messages) -> str:
    """The text of a conversation's assistant turns (content as a string or a list of typed parts)."""
    parts = []
    for m in messages:
        if m.get("role") == "assistant":
            c = m.get("content")
            parts.extend([c] if isinstance(c, str) else [p.get("text") or "" for p in c or [] if isinstance(p, dict)])
    return " ".join(parts)


def join_answer(reasoning: str, answer: str) -> str:
    """The inverse of :func:`split_answer` in the authors' format: ``<think> r </think>a``."""
    return f"<think> {reasoning.strip()} </think>{answer.strip()}" if reasoning else answer.strip()

"""Ask a student (any image-text-to-text checkpoint) the diagnosis question and score it per finding.

Used by ``recipes/apo.py`` to print the student after each stage beside the teachers. Scoring is
presence accuracy per finding against the truth labels: a finding is predicted present when the
label extractor reads it as positive (1); images whose true label is uncertain (-1) are left out of
that finding. A refusal or an empty answer predicts nothing present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxr_max.evaluation.labeler import label_reports
from cxr_max.trajectories.prompts import IMAGE_TOKEN, render_prompt

# Findings the synthetic world draws, named as in the paper's table where it has them.
TABLE_FINDINGS: tuple[str, ...] = ("Consolidation", "Pleural Effusion", "Pneumothorax", "Edema", "Cardiomegaly", "Atelectasis")


def user_message(prompt: str) -> list[dict]:
    """A chat user turn with the image where ``<image>`` stands (at the start when absent)."""
    before, marker, after = prompt.partition(IMAGE_TOKEN)
    if not marker:
        before, after = "", prompt
    content = ([{"type": "text", "text": before.strip()}] if before.strip() else []) + [{"type": "image"}]
    if after.strip():
        content.append({"type": "text", "text": after.strip()})
    return [{"role": "user", "content": content}]


def generate_answers(
    model_dir: str,
    images: Sequence,
    *,
    prompt: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 192,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[str]:
    """Generate one answer per image with the checkpoint in ``model_dir`` (batched, left padding)."""
    import torch
    from rich.progress import Progress
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    text = processor.apply_chat_template(user_message(prompt or render_prompt("diagnose")), add_generation_prompt=True,
                                         tokenize=False)
    torch.manual_seed(seed)
    out: list[str] = []
    with Progress(transient=True, disable=not progress) as bar, torch.no_grad():
        task = bar.add_task("generating", total=len(images))
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            inputs = processor(text=[text] * len(batch), images=batch, return_tensors="pt", padding=True)
            gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id)
            new = gen[:, inputs["input_ids"].shape[1]:]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
            bar.advance(task, len(batch))
    return out


def finding_accuracy(
    predictions: Sequence[str], truths: Sequence[Mapping[str, float | None]], findings: Sequence[str] = TABLE_FINDINGS
) -> dict[str, float]:
    """Presence accuracy per finding and their mean (``"Avg"``); see the module docstring for the rule."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths")
    pred = label_reports(list(predictions))
    res = {}
    for f in findings:
        t = np.array([tr.get(f) for tr in truths], dtype=object)
        keep = np.array([v != -1.0 for v in t])
        p = np.array([(lab or {}).get(f) == 1.0 for lab in pred])
        y = np.array([v == 1.0 for v in t])
        res[f] = float((p[keep] == y[keep]).mean()) if keep.any() else float("nan")
    res["Avg"] = float(np.nanmean([res[f] for f in findings]))
    return res


def consistency(answers_by_run: Sequence[Sequence[str]], findings: Sequence[str] = TABLE_FINDINGS) -> float:
    """Share of (image, finding) whose extracted presence is the same in every run (samples or prompts)."""
    runs = [label_reports(list(a)) for a in answers_by_run]
    n = len(runs[0])
    same = 0
    for i in range(n):
        for f in findings:
            same += len({(run[i] or {}).get(f) == 1.0 for run in runs}) == 1
    return same / (n * len(findings)) if n else float("nan")

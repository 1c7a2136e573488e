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
    dtype: str | None = "auto",
    device: str | None = None,
) -> list[str]:
    """Generate one answer per image with the checkpoint in ``model_dir`` (batched, left padding), on ``device``
    (default ``cuda`` when visible) in ``dtype`` (``"auto"``: bfloat16 on a GPU, float32 on the CPU)."""
    import torch
    from rich.progress import Progress

    from cxr_max.generation import generate_texts, load_generator

    model, processor = load_generator(model_dir, dtype=dtype, device=device)
    text = processor.apply_chat_template(user_message(prompt or render_prompt("diagnose")), add_generation_prompt=True,
                                         tokenize=False)
    torch.manual_seed(seed)
    out: list[str] = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("generating", total=len(images))
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            answers, _ = generate_texts(model, processor, [text] * len(batch), batch, max_new_tokens=max_new_tokens,
                                        do_sample=do_sample, temperature=temperature)
            out.extend(answers)
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


def image_dependence(model_dir: str, rows: Sequence[Mapping], *, shift: int = 1, batch_size: int = 16) -> dict[str, float]:
    """Does the student read the image? Mean assistant-token loss on SFT ``rows`` (``images`` + ``messages``)
    with each row's own image, with another row's image (``shift`` rows on: pass the number of rows per image
    so the image really differs) and with a black image. A student that ignores the pixels scores the same
    three times; ``"gap"`` is shuffled minus true (nats per token, > 0 when the true image helps).
    """
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "right"
    rows = list(rows)
    if len(rows) <= shift:
        raise ValueError(f"image_dependence needs more than shift={shift} rows, got {len(rows)}")
    images = [(r["images"][0]).convert("RGB") for r in rows]
    texts = [processor.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    prompts = [processor.apply_chat_template([m for m in r["messages"] if m["role"] != "assistant"], tokenize=False,
                                             add_generation_prompt=True) for r in rows]

    # prompt lengths in tokens, image included: the same for every variant (each keeps the row's image size)
    prompt_len = [len(processor(text=[p], images=[im])["input_ids"][0]) for p, im in zip(prompts, images)]

    def mean_loss(imgs) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(rows), batch_size):
                batch = processor(text=texts[s:s + batch_size], images=imgs[s:s + batch_size], return_tensors="pt",
                                  padding=True)
                labels = batch["input_ids"].clone()
                labels[batch["attention_mask"] == 0] = -100
                for i, n in enumerate(prompt_len[s:s + batch_size]):
                    labels[i, :n] = -100  # score the answer only
                logits = model(**batch).logits[:, :-1].float()
                target = labels[:, 1:]
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100,
                                                        reduction="sum")
                total += nll.item()
                count += int((target != -100).sum())
        return total / max(count, 1)

    true = mean_loss(images)
    others = images[shift:] + images[:shift]
    shuffled = mean_loss([o if o.size == im.size else o.resize(im.size) for o, im in zip(others, images)])
    black = mean_loss([Image.new("RGB", im.size) for im in images])
    return {"true": true, "shuffled": shuffled, "black": black, "gap": shuffled - true}


def one_row_per_image(dataset, limit: int | None = None) -> list[dict]:
    """The first non-refusal SFT row of each image (``dicom_id``), in order, at most ``limit``: rows for
    :func:`image_dependence` where the next row always shows another image."""
    from cxr_max.trajectories.parse import assistant_text, is_refusal

    seen: set[str] = set()
    rows: list[dict] = []
    for row in dataset:
        if row["dicom_id"] in seen or is_refusal(assistant_text(row["messages"])):
            continue
        seen.add(row["dicom_id"])
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    return rows

"""Ask a student (any image-text-to-text checkpoint) the diagnosis question.

Used by ``recipes/apo.py`` to print the student after each stage beside the teachers. The answers are
scored by :func:`cxr_max.evaluation.runner.presence_accuracy` (presence accuracy per finding, with
intervals) and :func:`cxr_max.evaluation.runner.agreement` (consistency across runs); this module
only asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cxr_max.labels import TABLE_FINDINGS
from cxr_max.trajectories.prompts import chat_content, render_prompt



def user_message(prompt: str) -> list[dict]:
    """A chat user turn with the image where ``<image>`` stands (:func:`~cxr_max.trajectories.prompts.chat_content`:
    at the start when absent)."""
    return [{"role": "user", "content": chat_content(prompt)}]


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


def answer_losses(model_dir: str, rows: Sequence[Mapping], images: Sequence | None = None, *,
                  batch_size: int = 16, model=None, processor=None) -> list[tuple[float, int]]:
    """Per row of SFT-style ``rows`` (``messages`` with an assistant turn, ``images``): the summed negative
    log-likelihood of the assistant answer's tokens given the image and the prompt, and the number of those
    tokens. ``images`` replaces the rows' own images (same count and sizes); ``model``/``processor`` reuse
    what is already loaded from ``model_dir``."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = processor or AutoProcessor.from_pretrained(model_dir)
    model = model or AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "right"
    rows = list(rows)
    imgs = [im.convert("RGB") for im in (images if images is not None else [r["images"][0] for r in rows])]
    texts = [processor.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    prompts = [processor.apply_chat_template([m for m in r["messages"] if m["role"] != "assistant"], tokenize=False,
                                             add_generation_prompt=True) for r in rows]
    # prompt lengths in tokens, image included
    prompt_len = [len(processor(text=[p], images=[im])["input_ids"][0]) for p, im in zip(prompts, imgs)]
    out: list[tuple[float, int]] = []
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
                                                    reduction="none").sum(1)
            out.extend(zip(nll.tolist(), (target != -100).sum(1).tolist()))
    return out


def image_dependence(model_dir: str, rows: Sequence[Mapping], *, shift: int = 1, batch_size: int = 16) -> dict[str, float]:
    """Does the student read the image? Mean assistant-token loss on SFT ``rows`` (``images`` + ``messages``)
    with each row's own image, with another row's image (``shift`` rows on: pass the number of rows per image
    so the image really differs) and with a black image. A student that ignores the pixels scores the same
    three times; ``"gap"`` is shuffled minus true (nats per token, > 0 when the true image helps).
    """
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    rows = list(rows)
    if len(rows) <= shift:
        raise ValueError(f"image_dependence needs more than shift={shift} rows, got {len(rows)}")
    images = [(r["images"][0]).convert("RGB") for r in rows]

    def mean_loss(imgs) -> float:
        got = answer_losses(model_dir, rows, imgs, batch_size=batch_size, model=model, processor=processor)
        return sum(n for n, _ in got) / max(sum(c for _, c in got), 1)

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

"""``model`` consensus (the paper's method): the learn-stage student reads all N trajectories and writes one.

For each image the student gets the image and :data:`DEFAULT_TEMPLATE` filled with the original
prompt and the usable teachers' trajectories (anonymised as [1]..[N], in an order shuffled per image with a
seeded generator, so no teacher always sits first and position bias cannot favour one; refusals and
trajectories with nothing extractable are left out), through the processor's chat template. Generation
is batched (left padding), greedy by default, on the model's device and in its dtype (a GPU and bfloat16 when
one is visible; :mod:`cxr_max.generation`). The generated text is the positive; its findings are
read back with the same label extractor as the teachers', so its agreement with each teacher, its
support and confidence are measured exactly as for ``vote`` (support = share of usable teachers that
voted the state the student wrote; no ties).

Two checks on the generated text:

- a generation that never finished (no end token within ``max_new_tokens``) is cut mid-sentence -- often
  before its final answer -- so it is dropped: its text is ``None``, the image gets no preference row, and
  the count is in ``Consensus.unfinished`` (the preference writer counts the skips);
- a finding the student wrote present or uncertain that no usable teacher reported is *unsupported* (a
  hallucination of the consensus): ``Consensus.unsupported`` ``[I, 14]`` flags it and the image is marked
  ``low_confidence``.

Works with any model ``AutoModelForImageTextToText`` + ``AutoProcessor`` load (the tiny LLaVA of
:func:`cxr_max.training.tiny_vlm` or the tiny Qwen2.5-VL of :func:`cxr_max.training.tiny_qwen25vl` on CPU,
Qwen2.5-VL on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxr_max.drift.consensus import Consensus, finish_consensus, agreement_with, informative_agreement_with
from cxr_max.drift.findings import (
    ABSENT, LATERAL_INDEX, NEG, NM, POS, PRESENT, UNC, UNCERTAIN, Extractor, Panel, extract_codes, shared_extractor,
)
from cxr_max.errors import DataError
from cxr_max.trajectories.prompts import IMAGE_TOKEN

DEFAULT_TEMPLATE = (
    "{prompt}\n"
    "Here are {n} reasoning trajectories that different assistants wrote for this image:\n"
    "{trajectories}"
    "Write one consensus trajectory: keep the findings the trajectories agree on and drop claims that are "
    "unsupported or contradict each other. Reason step by step inside <think></think>, then answer "
    "'The disease of this patient is X.'"
)
TRAJECTORY_TEMPLATE = "[{k}] {text}\n"


def consensus_prompt(prompt: str, texts: list[str], template: str = DEFAULT_TEMPLATE,
                     trajectory_template: str = TRAJECTORY_TEMPLATE) -> str:
    """The student's instruction for one image (without the image marker; the chat template places the image)."""
    body = "".join(trajectory_template.format(k=k + 1, text=t.strip()) for k, t in enumerate(texts))
    clean = (prompt or "").replace(IMAGE_TOKEN, "").replace("  ", " ").strip()
    return template.format(prompt=clean, n=len(texts), trajectories=body)


def mimic_image_loader(data_dir: str | Path) -> Callable[[str, str, str], Any]:
    """Load ``files/p{sid[:2]}/p{sid}/s{study}/{dicom}.jpg`` under a MIMIC-CXR-JPG root as an RGB PIL image."""
    from PIL import Image

    root = Path(data_dir)
    if not (root / "files").is_dir() and (root / "mimic-cxr-jpg" / "files").is_dir():
        root = root / "mimic-cxr-jpg"

    def load(subject_id: str, study_id: str, dicom_id: str):
        path = root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"
        if not path.is_file():
            raise DataError("image not found", path=path)
        with Image.open(path) as im:
            return im.convert("RGB")

    return load


def model_consensus(
    panel: Panel,
    *,
    model: Any,
    processor: Any = None,
    data_dir: str | Path | None = None,
    image_loader: Callable[[str, str, str], Any] | None = None,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    extractor: Extractor | None = None,
    progress: bool = True,
    min_confident_teachers: int = 3,
    low_confidence_below: float = 0.6,
    seed: int = 0,
    shuffle_teachers: bool = True,
    dtype: str | None = "auto",
    device: str | None = None,
    **generate_kwargs: Any,
) -> Consensus:
    """Generate a consensus trajectory per image with a VLM and measure it like the other methods.

    ``model``/``processor``: loaded objects or a folder path (then both load on ``device`` -- default ``cuda``
    when visible -- in ``dtype``, ``"auto"`` = bfloat16 on a GPU, float32 on the CPU). A loaded model is used on
    the device and in the dtype it has. Images come from ``image_loader(subject_id, study_id, dicom_id)`` or the
    MIMIC layout under ``data_dir``. ``seed`` drives the per-image teacher order (``shuffle_teachers=False``
    keeps teacher-name order) and sampling.
    """
    import torch

    from cxr_max.generation import generate_texts, load_generator

    if isinstance(model, (str, Path)):
        loaded, loaded_processor = load_generator(model, dtype=dtype, device=device)
        model, processor = loaded, processor or loaded_processor
    if processor is None:
        raise ValueError("model consensus needs a processor (or a model folder path)")
    if image_loader is None:
        if data_dir is None:
            raise ValueError("model consensus needs images: pass data_dir (MIMIC-CXR-JPG root) or image_loader")
        image_loader = mimic_image_loader(data_dir)
    extractor = extractor or shared_extractor()
    if extractor is None:
        raise DataError("model consensus reads the generated text's findings: cxr_max.evaluation is not importable")
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    model.eval()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    texts_out: list[str | None] = []
    starts = range(0, panel.n_images, batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description=f"model consensus on {panel.n_images} images")
    for s in starts:
        idx = range(s, min(s + batch_size, panel.n_images))
        chats, images = [], []
        for i in idx:
            teachers = [t for t in range(len(panel.teachers)) if panel.usable[i, t]]
            if shuffle_teachers:
                teachers = [teachers[j] for j in rng.permutation(len(teachers))]
            instruction = consensus_prompt(panel.prompt[i], [panel.raw[i, t] for t in teachers], template)
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
            chats.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            images.append(image_loader(str(panel.subject_id[i]), str(panel.study_id[i]), str(panel.dicom_id[i])))
        texts, finished = generate_texts(model, processor, chats, images, max_new_tokens=max_new_tokens,
                                         do_sample=do_sample, **generate_kwargs)
        texts_out.extend(t.strip() if done else None for t, done in zip(texts, finished))

    unfinished = np.array([t is None for t in texts_out], dtype=bool)
    labels, side, _ = extract_codes([t or "" for t in texts_out], extractor)
    state = np.full(labels.shape, ABSENT, dtype=np.int8)
    state[labels == POS] = PRESENT
    state[labels == UNC] = UNCERTAIN
    votes = panel.state
    n_usable = np.maximum(panel.usable.sum(axis=1), 1)
    support = (votes == state[:, None, :]).sum(axis=1) / n_usable[:, None]
    tie = np.zeros(state.shape, dtype=bool)
    cons = finish_consensus(panel, "model", state, support, tie, min_confident_teachers=min_confident_teachers,
                   low_confidence_below=low_confidence_below, texts=np.array(texts_out, dtype=object))
    # the student's own sides and explicit negations (not the teachers') define the model consensus
    cons.side = np.where(cons.state[:, list(LATERAL_INDEX)] != ABSENT, side, 0).astype(np.int8)
    cons.side_tie = np.zeros_like(cons.side_tie)
    cons.labels = np.where((labels == NEG) & (cons.state == ABSENT), NEG, np.where(cons.state == ABSENT, NM, cons.labels))
    cons.labels = cons.labels.astype(np.int8)
    cons.agreement = agreement_with(panel, cons.state, cons.side)
    cons.informative_agreement = informative_agreement_with(panel, cons.state, cons.side)
    cons.unsupported = unsupported_findings(panel, cons.state)
    cons.low_confidence = cons.low_confidence | cons.unsupported.any(axis=1)
    cons.unfinished = unfinished
    return cons


def unsupported_findings(panel: Panel, state: np.ndarray) -> np.ndarray:
    """``[I, 14]`` bool: the consensus holds a finding present or uncertain that no usable teacher held present or
    uncertain (Support Devices and No Finding are not findings here)."""
    from cxr_max.drift.consensus import NOT_PATHOLOGY

    said = ((panel.state == PRESENT) | (panel.state == UNCERTAIN)) & panel.usable[:, :, None]
    out = ((state == PRESENT) | (state == UNCERTAIN)) & ~said.any(axis=1)
    out[:, list(NOT_PATHOLOGY)] = False
    return out

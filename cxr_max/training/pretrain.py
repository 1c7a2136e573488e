"""A pretrained vision side for the tiny student, built offline once and cached like downloaded weights.

Every real VLM starts from a vision encoder pretrained on image-text pairs; the tiny LLaVA student of
:mod:`cxr_max.training.tiny` starts random, and its SFT data (a few hundred images) is too small to learn to
see subtle findings from scratch. :func:`pretrained_vision` trains the same CLIP vision tower (same sizes as
the student's, so the weights drop in) on a **separate synthetic cohort**: another world seed of
:mod:`cxr_max.synthetic`, so none of its patients is in the benchmark world's train, validation or test split.

The objective is report supervision: each image's target is the 14 CheXpert labels its radiology report
states (present = 1, absent or not mentioned = 0, hedged = left out), plus the side of the four lateral
findings (left / right present), predicted from the **mean of the patch tokens** of the last layer, which is
exactly what the LLaVA projector reads (``vision_feature_layer=-1``, CLS dropped). Labels stated in reports
are the same information CheXpert-style encoders are pretrained on; no teacher output and no benchmark image
is used. A contrastive (CLIP) objective over reports would need a text tower and large batches to separate
reports that differ by one finding; with a few thousand images the supervised head is the cheaper lever.

The result is a folder under ``$CXR_MAX_CACHE/pretrained/`` holding ``vision.safetensors`` (the
``CLIPVisionModel`` state dict), ``config.json`` and a model card ``README.md`` saying what it saw (cohort
seed, patients, images, label counts, epochs, held-out balanced accuracy on the cohort's own test split).
The folder name hashes every option, so a change rebuilds it; a complete folder is reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxr_max.evaluation.probe import balanced_accuracy_of
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS
from cxr_max.training.tiny import tiny_image_processor, vision_config

# A world seed no benchmark or recipe uses for its own data (they use 0 and small training seeds).
PRETRAIN_WORLD_SEED = 900_001
VERSION = "v2"


@dataclasses.dataclass
class PretrainOptions:
    """What the vision tower is pretrained on and for how long."""

    world_seed: int = PRETRAIN_WORLD_SEED
    n_patients: int = 1500
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    shift_pixels: int = 3  # random translation (augmentation); no flips: they would swap left and right
    seed: int = 0


def _targets(labels: dict, laterality: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """[14 + 2*4] targets and a mask (hedged labels and unknown sides are masked out)."""
    y = np.zeros(len(CHEXPERT_LABELS) + 2 * len(LATERAL_FINDINGS), dtype=np.float32)
    m = np.ones_like(y)
    for k, name in enumerate(CHEXPERT_LABELS):
        v = labels.get(name)
        if v == 1.0:
            y[k] = 1.0
        elif v == -1.0:
            m[k] = 0.0
    base = len(CHEXPERT_LABELS)
    for j, name in enumerate(LATERAL_FINDINGS):
        side = (laterality or {}).get(name)
        if labels.get(name) == 1.0 and side in ("left", "right", "bilateral"):
            y[base + 2 * j] = float(side in ("left", "bilateral"))
            y[base + 2 * j + 1] = float(side in ("right", "bilateral"))
        elif labels.get(name) == 1.0:
            m[base + 2 * j: base + 2 * j + 2] = 0.0
    return y, m


def _cohort(options: PretrainOptions, processor, split: str | None = None):
    """Pixel tensors, targets and masks of the cohort's frontal images (all splits, or one)."""
    import cxr_max
    from cxr_max.synthetic import ensure_synthetic, load_truth

    root = Path(ensure_synthetic(seed=options.world_seed, n_patients=options.n_patients, teachers=False))
    truth = load_truth(root)
    splits = [split] if split else ["train", "validation", "test"]
    pixels, ys, ms, ids = [], [], [], []
    for s in splits:
        ds = cxr_max.load_dataset("mimic", split=s, views="frontal", data_dir=str(root / "mimic-cxr-jpg"))
        for row in ds:
            t = truth[row["dicom_id"]]
            pixels.append(processor(images=[row["image"].convert("RGB")], return_tensors="pt")["pixel_values"][0])
            y, m = _targets(t.labels, t.laterality)
            ys.append(y)
            ms.append(m)
            ids.append(row["dicom_id"])
    return torch.stack(pixels), torch.tensor(np.stack(ys)), torch.tensor(np.stack(ms)), ids, root


class _Probe(torch.nn.Module):
    def __init__(self, tower, n_out: int):
        super().__init__()
        self.tower = tower
        self.head = torch.nn.Linear(tower.config.hidden_size, n_out)

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # patch tokens, as LLaVA reads
        return self.head(hidden.mean(1))


def _shift(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    if k <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-k, k + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_vision(vision_config, processor, options: PretrainOptions, *, progress: bool = True):
    """Train a ``CLIPVisionModel(vision_config)`` on the cohort; returns ``(tower, card_facts)``."""
    from transformers import CLIPVisionModel

    torch.manual_seed(options.seed)
    g = torch.Generator().manual_seed(options.seed)
    t0 = time.perf_counter()
    x_all, y_all, m_all, ids, root = _cohort(options, processor)
    import cxr_max

    test_ids = set(cxr_max.load_dataset("mimic", split="test", views="frontal", images="path",
                                        data_dir=str(root / "mimic-cxr-jpg"))["dicom_id"])
    is_test = torch.tensor([d in test_ids for d in ids])
    tr = (~is_test).nonzero().squeeze(1)
    tower = CLIPVisionModel(vision_config)
    probe = _Probe(tower, y_all.shape[1])
    opt = torch.optim.AdamW(probe.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    steps = options.epochs * int(np.ceil(len(tr) / options.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.learning_rate, total_steps=steps,
                                                pct_start=0.1)
    # rare findings (pneumothorax ~9 % of images) would be learned as "never" at an unweighted BCE: weight the
    # positives of each target by its negative/positive ratio (at most 10) so every finding shapes the features
    pos = (y_all[tr] * m_all[tr]).sum(0)
    neg = ((1 - y_all[tr]) * m_all[tr]).sum(0)
    pos_weight = (neg / pos.clamp(min=1)).clamp(1.0, 10.0)
    probe.train()
    loss_hist = []
    for epoch in range(options.epochs):
        order = tr[torch.randperm(len(tr), generator=g)]
        total = 0.0
        for s in range(0, len(order), options.batch_size):
            b = order[s:s + options.batch_size]
            logits = probe(_shift(x_all[b], options.shift_pixels, g))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_all[b], weight=m_all[b],
                                                                        pos_weight=pos_weight,
                                                                        reduction="sum") / m_all[b].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        loss_hist.append(total / len(tr))
        if progress and (epoch % 10 == 9 or epoch == options.epochs - 1):
            print(f"vision pretraining: epoch {epoch + 1}/{options.epochs} loss {loss_hist[-1]:.4f}")
    probe.eval()
    held_out = {}
    with torch.no_grad():
        te = is_test.nonzero().squeeze(1)
        p = torch.sigmoid(probe(x_all[te])).numpy() > 0.5
        y = y_all[te].numpy() > 0.5
        for k, name in enumerate(CHEXPERT_LABELS):
            keep = m_all[te, k].numpy() > 0
            held_out[name] = balanced_accuracy_of(p[keep, k], y[keep, k])
    label_counts = {name: int(y_all[:, k].sum()) for k, name in enumerate(CHEXPERT_LABELS)}
    facts = {"cohort_root_name": root.name, "world_seed": options.world_seed, "n_patients": options.n_patients,
             "n_images": len(ids), "n_train_images": int(len(tr)), "n_held_out_images": int(is_test.sum()),
             "label_counts": label_counts, "final_train_loss": loss_hist[-1],
             "held_out_balanced_accuracy": held_out, "seconds": round(time.perf_counter() - t0, 1),
             "options": dataclasses.asdict(options)}
    return tower, facts


def cache_key(vision_config, options: PretrainOptions) -> str:
    """Folder name of a pretrained tower: the options, the tower's sizes and the renderer's code, hashed."""
    sizes = {k: getattr(vision_config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads", "image_size", "patch_size")}
    import inspect

    from cxr_max.synthetic import build, render

    # the renderer's code and the world format are part of what the tower saw: a change rebuilds it
    world = hashlib.sha256((inspect.getsource(render) + build.FORMAT_VERSION).encode()).hexdigest()[:12]
    blob = json.dumps({"v": VERSION, "sizes": sizes, "options": dataclasses.asdict(options), "world": world},
                      sort_keys=True)
    tag = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"tiny-vision-{vision_config.image_size}px-p{vision_config.patch_size}-{tag}"


def pretrained_vision(vision_config, processor, options: PretrainOptions | None = None,
                      cache: str | Path | None = None) -> Path:
    """The cached pretrained tower for ``vision_config`` (built now when missing); returns its folder."""
    import fcntl

    from cxr_max.synthetic import cache_dir

    options = options or PretrainOptions()
    folder = Path(cache or cache_dir() / "pretrained") / cache_key(vision_config, options)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two recipes starting at once build it once
        try:
            if not ((folder / "vision.safetensors").is_file() and (folder / "README.md").is_file()):
                _build(folder, vision_config, processor, options)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def _build(folder: Path, vision_config, processor, options: PretrainOptions) -> None:
    from safetensors.torch import save_file

    tower, facts = train_vision(vision_config, processor, options)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(tmp / "vision.safetensors"))
    (tmp / "config.json").write_text(json.dumps(vision_config.to_dict(), indent=1, default=str))
    (tmp / "pretraining.json").write_text(json.dumps(facts, indent=1))
    (tmp / "README.md").write_text(model_card(facts))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)


def model_card(facts: dict) -> str:
    """The model card of a pretrained tower: what it saw and how well it reads its own held-out images."""
    held = facts["held_out_balanced_accuracy"]
    rows = "\n".join(f"| {n} | {facts['label_counts'][n]} | {held[n]:.2f} |" for n in CHEXPERT_LABELS
                     if not np.isnan(held[n]))
    o = facts["options"]
    return f"""# Tiny CLIP vision tower, report-supervised on a synthetic cohort

Built offline by `cxr_max.training.pretrain` (nothing downloaded). Drop-in vision tower of the tiny LLaVA
student (`cxr_max.training.tiny`).

## What it saw

- Synthetic world seed {facts['world_seed']} ({facts['n_patients']} patients, folder `{facts['cohort_root_name']}`):
  {facts['n_images']} frontal images, of which {facts['n_train_images']} trained it and {facts['n_held_out_images']}
  (that world's test split) were held out. No image, patient or teacher trajectory of any other world
  (in particular the benchmark world, seed 0) was used.
- Targets: the 14 CheXpert labels each image's report states, and the side of the four lateral findings.
- {o['epochs']} epochs, batch {o['batch_size']}, AdamW lr {o['learning_rate']} (one-cycle), weight decay
  {o['weight_decay']}, random shifts of up to {o['shift_pixels']} px; final training loss {facts['final_train_loss']:.4f};
  {facts['seconds']} s.

## Held-out balanced accuracy (linear head on the mean patch token)

| label | positives (all images) | balanced accuracy |
|---|---|---|
{rows}

## Limits

Synthetic images only: it knows this simulator's renderer, not real radiographs.
"""


def vision_sizes(model) -> Sequence[int]:
    """(hidden, layers, image, patch) of a LLaVA model's vision tower (for messages and tests)."""
    c = model.config.vision_config
    return (c.hidden_size, c.num_hidden_layers, c.image_size, c.patch_size)


def pretrained_tower_for(spec, options: PretrainOptions | None = None) -> Path:
    """The cached pretrained tower of a :class:`cxr_max.training.tiny.TinyVLMSpec` (built when missing)."""
    return pretrained_vision(vision_config(spec), tiny_image_processor(spec), options)

"""Can a small model see the synthetic findings? A probe trained on the TRUE labels of synthetic frontal images.

This is the perceptual ceiling of the synthetic world at the student's resolution: if a small CNN
trained on the ground truth cannot read a finding from the pixels, no student distilled from teachers
can. The world's frontal images (PA and AP, both domains) are rendered exactly as the builder renders
them (same generator seeds, ``DEFAULT_IMAGE_SIZE`` pixels, JPEG quality 92), then resized to ``--size``
pixels with bicubic interpolation, as the tiny student's image processor does.

Two probes: ``--arch cnn`` (default), a small CNN; ``--arch vit``, the tiny student's own vision tower
(``cxr_max.training.tiny.vision_config``, random init) with a linear head on its mean token.

Labels are the report's statements (``ImageTruth.labels``): a finding is positive when stated (1.0,
severity >= 0.35) and negative when negated or not mentioned; hedged images (-1.0, severity 0.2-0.35)
are left out of that finding, in training (masked loss) and in scoring, like the student's scoring in
``cxr_max.evaluation.predict``. Train = the train split's patients, test = validate + test patients
(patient-disjoint). Balanced accuracy per finding (mean of sensitivity and specificity; majority = 0.5)
at the threshold 0.5 of the sigmoid output, overall and per domain. Seeded; ~3-5 minutes on one CPU
thread at the defaults (measured on a loaded 2-core machine).

    python benchmarks/probe_perception.py                # 64 px, writes benchmarks/results/perception.json
    python benchmarks/probe_perception.py --arch vit     # the student's tower, writes perception_vit.json
    python benchmarks/probe_perception.py --size 128 --out /tmp/p128.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cxr_max.evaluation.probe import balanced_accuracy_of
from cxr_max.synthetic.build import DEFAULT_IMAGE_SIZE, FORMAT_VERSION, generate_world
from cxr_max.synthetic.render import render

FINDINGS = ("Consolidation", "Pleural Effusion", "Pneumothorax", "Edema", "Cardiomegaly", "Atelectasis")
RESULTS = Path(__file__).parent / "results" / "perception.json"
TARGET = 0.92


def frontal_images(seed: int, n_patients: int, size: int, render_size: int = DEFAULT_IMAGE_SIZE):
    """Render every frontal image of the world: ``(images [N, size, size] float32, labels [N, 6], split, domain)``.

    ``labels`` holds 1 (stated), 0 (negated or not mentioned) and NaN (hedged). Rendering uses the
    builder's generator seeds, so the pixels are those of ``ensure_synthetic`` (before its JPEG step,
    which is reproduced here).
    """
    patients = generate_world(seed=seed, n_patients=n_patients)
    imgs, labels, split, domain = [], [], [], []
    for p in patients:
        for s in p.studies:
            for j, view in enumerate(s.views):
                if view == "LATERAL":
                    continue
                rng = np.random.default_rng([seed, 31337, p.index, s.index, j])
                img = render(s.severity, p.anatomy, view, s.domain, render_size, rng)
                buf = io.BytesIO()
                Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L").save(buf, format="JPEG", quality=92)
                small = Image.open(io.BytesIO(buf.getvalue())).resize((size, size), Image.BICUBIC)
                imgs.append(np.asarray(small, dtype=np.float32) / 255.0)
                labels.append([1.0 if s.labels.get(f) == 1.0 else np.nan if s.labels.get(f) == -1.0 else 0.0
                               for f in FINDINGS])
                split.append(p.split)
                domain.append(s.domain)
    return np.stack(imgs), np.asarray(labels, dtype=np.float32), np.asarray(split), np.asarray(domain)


class ProbeViT(nn.Module):
    """The tiny student's vision tower (its ``CLIPVisionConfig``, random init) with a linear head on the pooled output."""

    def __init__(self, n_out: int, size: int, patch_size: int):
        super().__init__()
        from transformers import CLIPVisionModel

        from cxr_max.training.tiny import TinyVLMSpec, vision_config

        cfg = vision_config(TinyVLMSpec(image_size=size, patch_size=patch_size))
        self.tower = CLIPVisionModel(cfg)
        self.head = nn.Linear(cfg.hidden_size, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values=x.expand(-1, 3, -1, -1))
        return self.head(out.last_hidden_state.mean(dim=1))


class ProbeCNN(nn.Module):
    """Four conv blocks (stride-2 downsampling), global average pooling, one logit per finding."""

    def __init__(self, n_out: int, width: int = 24):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1, stride=2), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def train_probe(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, arch: str = "cnn", batch_size: int = 32,
                lr: float = 2e-3, width: int = 16, patch_size: int = 16) -> nn.Module:
    """Train the probe with a masked, class-balanced BCE (hedged labels masked) and light augmentation."""
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    if arch == "cnn":
        model: nn.Module = ProbeCNN(y.shape[1], width)
    elif arch == "vit":
        model = ProbeViT(y.shape[1], x.shape[-1], patch_size)
    else:
        raise ValueError(f"arch must be 'cnn' or 'vit', got {arch!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    mask = ~np.isnan(y)
    pos_rate = np.nansum(y, axis=0) / mask.sum(axis=0)
    pos_weight = torch.tensor((1 - pos_rate) / np.maximum(pos_rate, 1e-3), dtype=torch.float32)
    xt = torch.from_numpy(x)[:, None]
    yt = torch.from_numpy(np.nan_to_num(y))
    mt = torch.from_numpy(mask.astype(np.float32))
    model.train()
    for _ in range(epochs):
        order = gen.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = torch.from_numpy(order[start : start + batch_size])
            xb = xt[idx]
            # augmentation that keeps laterality: small shifts and brightness/contrast jitter (no flips)
            dx, dy = (int(v) for v in gen.integers(-2, 3, size=2))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            xb = xb * float(gen.uniform(0.9, 1.1)) + float(gen.uniform(-0.05, 0.05))
            logits = model(xb)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, yt[idx], pos_weight=pos_weight,
                                                                  reduction="none")
            loss = (loss * mt[idx]).sum() / mt[idx].sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, dict]:
    """Balanced accuracy, sensitivity, specificity and counts per finding (hedged images left out)."""
    with torch.no_grad():
        p = torch.sigmoid(torch.cat([model(torch.from_numpy(x[i : i + 256])[:, None]) for i in range(0, len(x), 256)]))
    pred = p.numpy() >= 0.5
    out = {}
    for k, f in enumerate(FINDINGS):
        keep = ~np.isnan(y[:, k])
        yy, pp = y[keep, k] == 1.0, pred[keep, k]
        out[f] = {"balanced_accuracy": balanced_accuracy_of(pp, yy),
                  "sensitivity": float(pp[yy].mean()) if yy.any() else float("nan"),
                  "specificity": float((~pp[~yy]).mean()) if (~yy).any() else float("nan"),
                  "n_pos": int(yy.sum()), "n_neg": int((~yy).sum())}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="image side the probe sees (px)")
    ap.add_argument("--patients", type=int, default=900, help="patients in the probe's world")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--epochs", type=int, default=None, help="default 20 (cnn) or 40 (vit)")
    ap.add_argument("--arch", choices=("cnn", "vit"), default="cnn",
                    help="cnn: a small CNN; vit: the tiny student's vision tower (16 px patches by default)")
    ap.add_argument("--patch-size", type=int, default=16, help="patch size of the vit probe")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 cnn, 1e-3 vit)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None,
                    help="default benchmarks/results/perception.json (cnn) or perception_vit.json (vit)")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 20 if args.arch == "cnn" else 40
    if args.out is None:
        args.out = RESULTS if args.arch == "cnn" else RESULTS.with_name("perception_vit.json")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    x, y, split, domain = frontal_images(args.world_seed, args.patients, args.size)
    t_render = time.perf_counter() - t0
    train = split == "train"
    mean, std = float(x[train].mean()), float(x[train].std())
    x = (x - mean) / std
    t1 = time.perf_counter()
    lr = args.lr or (2e-3 if args.arch == "cnn" else 1e-3)
    model = train_probe(x[train], y[train], epochs=args.epochs, seed=args.seed, arch=args.arch, lr=lr,
                        patch_size=args.patch_size)
    t_train = time.perf_counter() - t1
    test = ~train
    overall = evaluate(model, x[test], y[test])
    by_domain = {d: evaluate(model, x[test & (domain == d)], y[test & (domain == d)])
                 for d in ("default", "shifted") if (test & (domain == d)).any()}
    result = {
        "what": "CNN trained on the true labels of synthetic frontal images; balanced accuracy per finding on "
                "held-out patients (hedged truth left out)",
        "arch": args.arch, "patch_size": args.patch_size if args.arch == "vit" else None, "lr": lr,
        "format_version": FORMAT_VERSION, "size": args.size, "render_size": DEFAULT_IMAGE_SIZE,
        "patients": args.patients, "world_seed": args.world_seed, "seed": args.seed, "epochs": args.epochs,
        "n_train": int(train.sum()), "n_test": int(test.sum()),
        "n_test_by_domain": {d: int((test & (domain == d)).sum()) for d in ("default", "shifted")},
        "target": TARGET,
        "balanced_accuracy": {f: round(overall[f]["balanced_accuracy"], 4) for f in FINDINGS},
        "mean_balanced_accuracy": round(float(np.mean([overall[f]["balanced_accuracy"] for f in FINDINGS])), 4),
        "meets_target": {f: bool(overall[f]["balanced_accuracy"] >= TARGET) for f in FINDINGS},
        "per_finding": overall,
        "by_domain": {d: {f: round(v[f]["balanced_accuracy"], 4) for f in FINDINGS} for d, v in by_domain.items()},
        "seconds": {"render": round(t_render, 1), "train": round(t_train, 1)},
        "threads": args.threads, "machine": platform.machine(), "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.arch} probe, {args.size} px, train {result['n_train']} / test {result['n_test']} frontal images "
          f"(render {t_render:.0f} s, train {t_train:.0f} s)")
    for f in FINDINGS:
        dom = "  ".join(f"{d} {by_domain[d][f]['balanced_accuracy']:.3f}" for d in by_domain)
        flag = "" if overall[f]["balanced_accuracy"] >= TARGET else f"  (below {TARGET})"
        print(f"  {f:17s} {overall[f]['balanced_accuracy']:.3f}  [{dom}]  n+ {overall[f]['n_pos']}{flag}")
    print(f"  mean {result['mean_balanced_accuracy']:.3f} -> {args.out}")
    return result


if __name__ == "__main__":
    main()

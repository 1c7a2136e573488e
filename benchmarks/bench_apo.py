"""Benchmark: one APO step vs the pairwise expansion through stock ``trl.DPOTrainer``, on the tiny student.

Identical synthetic image rows with K = 7 negatives. Variants, measured side by side in one process
(alternating, several repeats, medians), each time = collate + ``training_step`` (forward, backward) on the
same prompts:

- ``apo``: APOTrainer, live frozen reference model, 1 + 7 sequences per prompt;
- ``apo_precomputed``: APOTrainer, reference log-probs precomputed once (cached parquet), no reference forward;
- ``dpo_pairwise``: stock ``trl.DPOTrainer`` on the 7 (positive, teacher) pairs of each prompt (14 sequences
  per prompt, reference forward included).

Target: APO time per prompt <= 0.6 x pairwise, and peak memory no higher. Peak memory is the peak RSS of a fresh
subprocess per variant (VmHWM, reset through ``/proc/self/clear_refs`` just before the steps, when the model, data and
imports are loaded), reported as the rise over the RSS at that point and as the peak itself.

    python benchmarks/bench_apo.py [--prompts-per-step 2] [--repeats 5]

Writes benchmarks/results/apo.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K = 7
PROMPT = "This is a patient's chest DR image. Please help me determine the patient's disease."
FINDINGS = ["cardiomegaly", "pleural effusion", "atelectasis", "pneumothorax", "edema", "consolidation",
            "pneumonia", "no finding"]
TEACHERS = ["claude", "gpt", "glm", "gemini", "moonshot", "qwen", "grok"]


def _trajectory(i: int, j: int) -> str:
    side = "left" if (i + j) % 2 else "right"
    finding = FINDINGS[(i + j) % len(FINDINGS)]
    return (f"<think> The {side} lower zone shows increased opacity; the cardiac silhouette is "
            f"{'enlarged' if j % 3 == 0 else 'normal'}; the costophrenic angle is {'blunted' if j % 2 else 'sharp'}. "
            f"These features suggest {finding}. </think>The disease of this patient is {finding}.")


def make_rows(n: int):
    """``n`` APO rows with a synthetic 64x64 image each and K = 7 negatives."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).convert("RGB")
        rows.append({
            "images": [img],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "<think> Consensus: " + _trajectory(i, 99)[8:]}]}],
            "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": _trajectory(i, j)}]}]
                         for j in range(K)],
            "rejected_teachers": TEACHERS, "rejected_weights": [1.0] * K,
        })
    return rows


def build_student(folder: Path) -> None:
    from cxr_max.training.tiny import tiny_vlm

    texts = [_trajectory(i, j) for i in range(20) for j in range(K + 1)] + [PROMPT]
    tiny_vlm(texts, folder, seed=0)


def make_trainer(variant: str, student: Path, rows, prompts_per_step: int, workdir: Path):
    """The trainer of ``variant`` and the list of its per-step example batches (same prompts for all variants)."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    from cxr_max.training import APOConfig, APOTrainer
    from cxr_max.training.pairwise import expand_pairwise

    common = dict(bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none", save_strategy="no",
                  max_length=512, learning_rate=1e-5, seed=0, disable_tqdm=True)
    model = AutoModelForImageTextToText.from_pretrained(student)
    processor = AutoProcessor.from_pretrained(student)
    ds = Dataset.from_list(rows)
    if variant.startswith("apo"):
        pre = variant == "apo_precomputed"
        args = APOConfig(str(workdir / variant), per_device_train_batch_size=prompts_per_step,
                         precompute_ref_log_probs=pre, **common)
        ref = None if pre else AutoModelForImageTextToText.from_pretrained(student)
        trainer = APOTrainer(model, ref_model=ref, args=args, train_dataset=ds, processing_class=processor)
        per_step = prompts_per_step
    else:
        pairs = expand_pairwise(ds).remove_columns("rejected_teacher")
        args = DPOConfig(str(workdir / variant), per_device_train_batch_size=prompts_per_step * K,
                         loss_type=["sigmoid"], **common)
        trainer = DPOTrainer(model, ref_model=AutoModelForImageTextToText.from_pretrained(student), args=args,
                             train_dataset=pairs, processing_class=processor)
        per_step = prompts_per_step * K
    data = trainer.train_dataset
    batches = [[data[i] for i in range(s, s + per_step)] for s in range(0, len(data) - per_step + 1, per_step)]
    trainer.current_gradient_accumulation_steps = 1  # normally set by the training loop
    trainer.model.train()
    return trainer, batches


def timed_step(trainer, examples) -> float:
    """Seconds for collate + one training step (forward, backward; optimizer step excluded for all variants)."""
    t0 = time.perf_counter()
    batch = trainer.data_collator([dict(e) for e in examples])
    trainer.training_step(trainer.model, batch)
    trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """VmHWM (peak RSS since start or the last reset) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(variant: str, student: str, prompts_per_step: int, steps: int) -> None:
    """Run in a fresh process: build one variant, run ``steps`` steps, print peak RSS as JSON."""
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_rows(prompts_per_step * steps)
        trainer, batches = make_trainer(variant, Path(student), rows, prompts_per_step, Path(tmp))
        import gc

        gc.collect()
        reset = _reset_peak_rss()
        before = _rss_mb()
        for b in batches[:steps]:
            timed_step(trainer, b)
        peak = _peak_rss_mb()
    print(json.dumps({"variant": variant, "rss_before_steps_mb": before, "peak_rss_during_steps_mb": peak,
                      "peak_reset": reset, "peak_rise_mb": peak - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = least noise on a shared machine)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "apo.json"))
    parser.add_argument("--memory-child", nargs=2, metavar=("VARIANT", "STUDENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], args.prompts_per_step, args.memory_steps)
        return

    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    torch.manual_seed(0)
    console = Console()
    variants = ["apo", "apo_precomputed", "dpo_pairwise"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student = tmp / "student"
        build_student(student)
        n_steps = args.warmup + args.repeats
        rows = make_rows(args.prompts_per_step * n_steps)
        setups = {v: make_trainer(v, student, rows, args.prompts_per_step, tmp) for v in variants}
        times: dict[str, list[float]] = {v: [] for v in variants}
        with Progress(console=console) as progress:
            task = progress.add_task("timing (alternating variants)", total=n_steps * len(variants))
            for step in range(n_steps):
                order = variants if step % 2 == 0 else variants[::-1]
                for v in order:
                    trainer, batches = setups[v]
                    dt = timed_step(trainer, batches[step])
                    if step >= args.warmup:
                        times[v].append(dt / args.prompts_per_step)
                    progress.advance(task)
        memory = {}
        for v in variants:
            console.print(f"peak memory: {v} (fresh subprocess)")
            proc = subprocess.run([sys.executable, __file__, "--memory-child", v, str(student),
                                   "--prompts-per-step", str(args.prompts_per_step),
                                   "--memory-steps", str(args.memory_steps), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            memory[v] = json.loads(proc.stdout.strip().splitlines()[-1])

    from cxr_max.training.tiny import TinyVLMSpec

    spec = TinyVLMSpec()  # the student _build_student makes
    med = {v: statistics.median(times[v]) for v in variants}
    ratio = med["apo"] / med["dpo_pairwise"]
    result = {
        "setup": {"student": f"tiny LLaVA (CLIP {spec.vision_layers}x{spec.vision_hidden} + Llama "
                             f"{spec.text_layers}x{spec.text_hidden}, {spec.image_size}x{spec.image_size} images, "
                             f"{spec.patch_size}x{spec.patch_size} patches)", "K": K,
                  "prompts_per_step": args.prompts_per_step, "repeats": args.repeats, "warmup": args.warmup,
                  "threads": torch.get_num_threads(),
                  "timed": "collate + training_step (forward+backward), seconds per prompt, median",
                  "memory": "fresh subprocess per variant: peak RSS (VmHWM, reset via /proc/self/clear_refs just "
                            "before the steps) minus the RSS at that point"},
        "seconds_per_prompt": {v: {"median": med[v], "all": times[v]} for v in variants},
        "apo_over_pairwise_time": ratio,
        "apo_precomputed_over_apo_time": med["apo_precomputed"] / med["apo"],
        "target_time_ratio": 0.6,
        "time_target_met": ratio <= 0.6,
        "memory": memory,
        "memory_target_met": memory["apo"]["peak_rise_mb"] <= memory["dpo_pairwise"]["peak_rise_mb"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    table = Table(title=f"APO vs pairwise DPO, K = {K}, {args.prompts_per_step} prompts/step, tiny student (CPU)")
    for col in ("variant", "s / prompt (median)", "x pairwise", "peak RSS rise MB", "peak RSS MB"):
        table.add_column(col)
    for v in variants:
        table.add_row(v, f"{med[v]:.4f}", f"{med[v] / med['dpo_pairwise']:.2f}",
                      f"{memory[v]['peak_rise_mb']:.0f}", f"{memory[v]['peak_rss_during_steps_mb']:.0f}")
    console.print(table)
    console.print(f"APO / pairwise time: {ratio:.2f} (target <= 0.6: {'met' if ratio <= 0.6 else 'MISSED'}); "
                  f"memory target: {'met' if result['memory_target_met'] else 'MISSED'}; wrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark: pairwise DPO (stock ``trl.DPOTrainer``), APO as one sequence per candidate, and shared-prefix APO.

A tiny LLaVA with paper-like proportions: a 256x256 image = 256 image tokens, a short text prompt, completions of
about 48 tokens (reported as measured), K = 7 negatives -- many more prefix tokens than completion tokens, as
at the paper's scale (~1,050 prefix tokens, ~200-token completions). Identical synthetic rows for all variants,
measured side by side in one process (alternating, several repeats, medians), each time = collate +
``training_step`` (forward, backward) on the same prompts, live frozen reference model in all three:

- ``dpo_pairwise``: stock ``trl.DPOTrainer`` on the 7 (positive, teacher) pairs of each prompt (14 sequences per
  prompt, each with the image and the prompt);
- ``apo``: APOTrainer with ``shared_prefix=False``: 1 + 7 sequences per prompt, each with the image and prompt;
- ``apo_shared``: APOTrainer with the default ``shared_prefix`` (on for LLaVA): one packed sequence per prompt,
  image and prompt once.

Also measured per prompt: language-model tokens forwarded by the policy (the reference forwards the same again)
and images through the vision tower. Targets: ``apo_shared`` at most 0.25 x the pairwise time and 0.5 x ``apo``;
peak memory no higher than ``apo``'s. Peak memory is the peak RSS of a fresh subprocess per variant (VmHWM,
reset through ``/proc/self/clear_refs`` just before the steps, when the model, data and imports are loaded),
reported as the rise over the RSS at that point and as the peak itself.

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

K = 7
IMAGE_SIDE = 256  # 16-pixel patches: 256 image tokens per prompt
PROMPT = "This is a patient's chest DR image. Please help me determine the patient's disease."
FINDINGS = ["cardiomegaly", "pleural effusion", "atelectasis", "pneumothorax", "edema", "consolidation",
            "pneumonia", "no finding"]
TEACHERS = ["claude", "gpt", "glm", "gemini", "moonshot", "qwen", "grok"]


def _trajectory(i: int, j: int) -> str:
    side = "left" if (i + j) % 2 else "right"
    finding = FINDINGS[(i + j) % len(FINDINGS)]
    zone = ["upper", "middle", "lower"][(i * 3 + j) % 3]
    return (f"<think> Step {j + 1}: the {side} {zone} zone shows {'increased' if j % 2 else 'reduced'} opacity "
            f"of about {10 + (i * 7 + j * 3) % 40} mm; the cardiac silhouette is "
            f"{'enlarged' if j % 3 == 0 else 'normal'}; the costophrenic angle is {'blunted' if j % 2 else 'sharp'}; "
            f"the trachea is {'midline' if (i + j) % 3 else 'deviated'}. These features suggest {finding}. "
            f"</think>The disease of this patient is {finding}.")


def apo_rows(n: int, image_side: int, text) -> list[dict]:
    """``n`` APO rows, each a random ``image_side`` px image, the prompt and K = 7 negatives;
    ``text(i, j)`` is row ``i``'s candidate ``j`` (``j == 99``: the chosen one). Also used by
    ``gpu_apo_qwen25vl.py``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (image_side, image_side), dtype=np.uint8)).convert("RGB")
        rows.append({
            "images": [img],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": text(i, 99)}]}],
            "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": text(i, j)}]}]
                         for j in range(K)],
            "rejected_teachers": TEACHERS, "rejected_weights": [1.0] * K,
        })
    return rows


def make_rows(n: int):
    """``n`` APO rows at this benchmark's proportions (``IMAGE_SIDE`` px images, K = 7 negatives)."""
    return apo_rows(n, IMAGE_SIDE, lambda i, j: "<think> Consensus: " + _trajectory(i, 99)[8:] if j == 99
                    else _trajectory(i, j))


def student_spec():
    """The benchmark's tiny LLaVA: 256 image tokens, a 4-layer Llama of width 128 (compute, not Python overhead,
    dominates a step at this size)."""
    from cxr_max.training.tiny import TinyVLMSpec

    return TinyVLMSpec(image_size=IMAGE_SIDE, patch_size=16, vision_hidden=64, vision_layers=2, vision_heads=4,
                       text_hidden=128, text_layers=4, text_heads=4, text_intermediate=512, vocab_size=1024)


def build_student(folder: Path) -> None:
    from cxr_max.training.tiny import tiny_vlm

    texts = [_trajectory(i, j) for i in range(20) for j in range(K + 1)] + [PROMPT]
    tiny_vlm(texts, folder, spec=student_spec(), seed=0)


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
        args = APOConfig(str(workdir / variant), per_device_train_batch_size=prompts_per_step,
                         shared_prefix=None if variant == "apo_shared" else False, **common)
        ref = AutoModelForImageTextToText.from_pretrained(student)
        trainer = APOTrainer(model, ref_model=ref, args=args, train_dataset=ds, processing_class=processor)
        if trainer.shared_prefix != (variant == "apo_shared"):
            raise RuntimeError(f"{variant}: shared_prefix resolved to {trainer.shared_prefix}")
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


def forwarded(trainer, examples) -> dict:
    """Language-model tokens the policy forwards, images through the vision tower and completion / prompt tokens,
    for one step's examples (the reference forwards the same again)."""
    batch = trainer.data_collator([dict(e) for e in examples])
    if "segment_ids" in batch:
        tokens = int((batch["segment_ids"] >= 0).sum())
    else:
        tokens = int(batch["attention_mask"].sum())
    return {"lm_tokens": tokens, "images": int(batch["pixel_values"].shape[0])}


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
    console = Console(width=160)  # never truncate the variant names or numbers
    variants = ["dpo_pairwise", "apo", "apo_shared"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student = tmp / "student"
        build_student(student)
        n_steps = args.warmup + args.repeats
        rows = make_rows(args.prompts_per_step * n_steps)
        setups = {v: make_trainer(v, student, rows, args.prompts_per_step, tmp) for v in variants}
        per_prompt = {}
        for v in variants:
            trainer, batches = setups[v]
            counts = [forwarded(trainer, b) for b in batches[args.warmup:]]
            per_prompt[v] = {k: statistics.mean(c[k] for c in counts) / args.prompts_per_step for k in counts[0]}
        # the data's proportions, from the per-candidate APO batches
        apo_trainer, apo_batches = setups["apo"]
        probe = apo_trainer.data_collator([dict(e) for e in apo_batches[0]])
        comp_tokens = float(probe["completion_mask"].sum(1).float().mean())
        prefix_tokens = float((probe["attention_mask"].sum(1) - probe["completion_mask"].sum(1)).float().mean())
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
        del setups
        memory = {}
        for v in variants:
            console.print(f"peak memory: {v} (fresh subprocess)")
            proc = subprocess.run([sys.executable, __file__, "--memory-child", v, str(student),
                                   "--prompts-per-step", str(args.prompts_per_step),
                                   "--memory-steps", str(args.memory_steps), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            memory[v] = json.loads(proc.stdout.strip().splitlines()[-1])

    spec = student_spec()
    med = {v: statistics.median(times[v]) for v in variants}
    shared_vs_dpo = med["apo_shared"] / med["dpo_pairwise"]
    shared_vs_apo = med["apo_shared"] / med["apo"]
    memory_met = memory["apo_shared"]["peak_rise_mb"] <= memory["apo"]["peak_rise_mb"]
    result = {
        "setup": {"student": f"tiny LLaVA (CLIP {spec.vision_layers}x{spec.vision_hidden} + Llama "
                             f"{spec.text_layers}x{spec.text_hidden}, {spec.image_size}x{spec.image_size} images, "
                             f"{spec.patch_size}x{spec.patch_size} patches = {(spec.image_size // spec.patch_size) ** 2}"
                             " image tokens)", "K": K,
                  "prefix_tokens_mean": prefix_tokens, "completion_tokens_mean": comp_tokens,
                  "prompts_per_step": args.prompts_per_step, "repeats": args.repeats, "warmup": args.warmup,
                  "threads": torch.get_num_threads(), "device": "cpu", "dtype": "float32",
                  "timed": "collate + training_step (forward+backward, live reference forward), seconds per prompt, "
                           "median",
                  "memory": "fresh subprocess per variant: peak RSS (VmHWM, reset via /proc/self/clear_refs just "
                            "before the steps) minus the RSS at that point"},
        "seconds_per_prompt": {v: {"median": med[v], "all": times[v]} for v in variants},
        "policy_forward_per_prompt": per_prompt,
        "ratios": {"apo_over_pairwise_time": med["apo"] / med["dpo_pairwise"],
                   "apo_shared_over_pairwise_time": shared_vs_dpo, "apo_shared_over_apo_time": shared_vs_apo,
                   "apo_shared_over_apo_peak_rise": memory["apo_shared"]["peak_rise_mb"] /
                   max(memory["apo"]["peak_rise_mb"], 1e-9)},
        "targets": {"apo_shared_over_pairwise_time <= 0.25": shared_vs_dpo <= 0.25,
                    "apo_shared_over_apo_time <= 0.5": shared_vs_apo <= 0.5,
                    "apo_shared_peak_rise <= apo_peak_rise": memory_met},
        "memory": memory,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    table = Table(title=f"Pairwise DPO vs APO vs shared-prefix APO, K = {K}, {args.prompts_per_step} prompts/step, "
                        f"~{prefix_tokens:.0f} prefix / ~{comp_tokens:.0f} completion tokens (CPU)")
    for col in ("variant", "s / prompt (median)", "x pairwise", "LM tokens / prompt", "images / prompt",
                "peak RSS rise MB", "peak RSS MB"):
        table.add_column(col)
    for v in variants:
        table.add_row(v, f"{med[v]:.4f}", f"{med[v] / med['dpo_pairwise']:.2f}",
                      f"{per_prompt[v]['lm_tokens']:.0f}", f"{per_prompt[v]['images']:.0f}",
                      f"{memory[v]['peak_rise_mb']:.0f}", f"{memory[v]['peak_rss_during_steps_mb']:.0f}")
    console.print(table)

    def verdict(ok):
        return "met" if ok else "MISSED"

    console.print(f"shared / pairwise time {shared_vs_dpo:.2f} (target <= 0.25: {verdict(shared_vs_dpo <= 0.25)}); "
                  f"shared / apo time {shared_vs_apo:.2f} (target <= 0.5: {verdict(shared_vs_apo <= 0.5)}); "
                  f"peak memory vs apo: {verdict(memory_met)}; wrote {out}")


if __name__ == "__main__":
    main()

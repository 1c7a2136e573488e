"""Pairwise DPO vs APO vs shared-prefix APO at real scale, through the trainers and their collators (GPU).

A randomly initialised model with Qwen2.5-VL-7B-Instruct's architecture (the published sizes are written below;
nothing is downloaded) and a real ``Qwen2_5_VLProcessor`` (the project's offline tokenizer and Qwen's image
processor, bounded so a 448x448 image = 256 visual tokens). Synthetic rows: one image, a short prompt, a positive
and K = 7 negatives of ~``--completion-words`` words. bf16, LoRA r8/alpha32 on all linear layers of the language
model (the released setting), gradient checkpointing; the reference is the same model with the adapter disabled
(what the critique recipe does with PEFT). Variants, each a real trainer stepping real collated batches:

- ``dpo_pairwise``: stock ``trl.DPOTrainer`` on the 7 (positive, negative) pairs of each prompt
  (``--dpo-pairs`` pairs per micro-batch, gradient accumulation over the rest of the prompt's pairs);
- ``apo``: :class:`~cxr_max.training.APOTrainer` with ``shared_prefix=False`` (1 + 7 sequences per prompt);
- ``apo_shared``: ``APOTrainer`` with the default ``shared_prefix`` (one packed sequence per prompt, the image
  encoded once).

Timed: collate + ``training_step`` (forward, backward, reference forward) per prompt, alternating variants,
medians. Reported: seconds per prompt, language-model tokens forwarded per prompt (policy; the reference the same
again) and tokens/s, peak GPU memory per variant over its first step (``torch.cuda.max_memory_allocated``, and its
rise over what was allocated when the step began, since the variants built earlier stay resident), and MFU =
model FLOPs / time / the GPU's dense bf16 peak (``--peak-tflops``), with model FLOPs counted as 2 N per token for
each forward (policy and reference) and 2 N per policy token for the backward (LoRA: no weight gradients of the
frozen matrices), N = the language model's non-embedding parameters, plus the vision tower likewise per patch;
attention and the gradient-checkpointing recompute are not counted (so MFU is conservative).

    python benchmarks/gpu_apo_qwen25vl.py                 # GPU, real size (needs torchvision for the processor)
    python benchmarks/gpu_apo_qwen25vl.py --tiny          # CPU proof that it runs: tiny Qwen2.5-VL config

Writes benchmarks/results/gpu_apo_qwen25vl.json (``_tiny.json`` with --tiny).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_apo import FINDINGS, K, PROMPT, apo_rows  # noqa: E402  (the CPU benchmark's rows, at other sizes)

WORDS = ("the left right upper middle lower zone shows increased reduced opacity cardiac silhouette is enlarged "
         "normal costophrenic angle blunted sharp trachea midline deviated these features suggest").split()


def trajectory(i: int, j: int, n_words: int) -> str:
    """A synthetic reasoning trajectory of ``n_words`` words ending with a final answer."""
    g = torch.Generator().manual_seed(1000 * i + j)
    body = " ".join(WORDS[int(t)] for t in torch.randint(0, len(WORDS), (n_words,), generator=g))
    finding = FINDINGS[(i + j) % len(FINDINGS)]
    return f"<think> {body}. </think>The disease of this patient is {finding}."


def make_rows(n: int, image_side: int, n_words: int) -> list[dict]:
    return apo_rows(n, image_side, lambda i, j: trajectory(i, j, n_words))


def qwen25vl_7b_text_vision() -> tuple[dict, dict]:
    """Qwen2.5-VL-7B-Instruct's published text and vision sizes."""
    text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31])
    return text, vision


def build_student(folder: Path, tiny: bool, image_side: int, device, dtype):
    """Model folder + processor: the tiny Qwen2.5-VL, or (not tiny) its processor with a random 7B-sized model."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from cxr_max.training.tiny_qwen import TinyQwenSpec, tiny_qwen25vl

    pixels = image_side * image_side
    texts = [trajectory(i, j, 60) for i in range(20) for j in range(K + 1)] + [PROMPT]
    spec = TinyQwenSpec(min_pixels=pixels, max_pixels=pixels, vocab_size=1024)
    small, processor = tiny_qwen25vl(texts, folder, spec=spec, seed=0)
    if tiny:
        return small.to(device=device, dtype=dtype), processor
    text, vision = qwen25vl_7b_text_vision()
    base = small.config
    tc = base.get_text_config()
    text.update(vocab_size=152064, eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id, bos_token_id=None)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=base.image_token_id,
                              video_token_id=base.video_token_id, vision_start_token_id=base.vision_start_token_id,
                              vision_end_token_id=base.vision_end_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    return model, processor


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                      target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")


def make_trainer(variant: str, model, processor, rows, args, workdir: Path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from cxr_max.training import APOConfig, APOTrainer
    from cxr_max.training.pairwise import expand_pairwise

    gpu = torch.cuda.is_available() and not args.tiny
    common = dict(bf16=gpu, use_cpu=not gpu, gradient_checkpointing=not args.tiny, report_to="none",
                  save_strategy="no", max_length=4096, learning_rate=1e-5, seed=0, disable_tqdm=True,
                  gradient_checkpointing_kwargs={"use_reentrant": False})
    ds = Dataset.from_list(rows)
    if variant.startswith("apo"):
        cfg = APOConfig(str(workdir / variant), per_device_train_batch_size=1,
                        shared_prefix=None if variant == "apo_shared" else False, **common)
        trainer = APOTrainer(model, args=cfg, train_dataset=ds, processing_class=processor, peft_config=lora_config())
        if trainer.shared_prefix != (variant == "apo_shared"):
            raise RuntimeError(f"{variant}: shared_prefix resolved to {trainer.shared_prefix}")
        steps = [[[i]] for i in range(len(rows))]  # one prompt per step, one micro-batch
    else:
        pairs = expand_pairwise(ds).remove_columns("rejected_teacher")
        cfg = DPOConfig(str(workdir / variant), per_device_train_batch_size=args.dpo_pairs, loss_type=["sigmoid"],
                        **common)
        trainer = DPOTrainer(model, args=cfg, train_dataset=pairs, processing_class=processor,
                             peft_config=lora_config())
        steps = [[list(range(i * K + s, i * K + min(s + args.dpo_pairs, K))) for s in range(0, K, args.dpo_pairs)]
                 for i in range(len(rows))]  # each prompt's 7 pairs in micro-batches, accumulated
    trainer.model.train()
    return trainer, steps


def forwarded(trainer, micro_batches) -> dict:
    lm = images = patches = 0
    for idx in micro_batches:
        batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in idx])
        lm += int((batch["segment_ids"] >= 0).sum()) if "segment_ids" in batch else int(batch["attention_mask"].sum())
        images += int(batch["image_grid_thw"].shape[0])
        patches += int(batch["pixel_values"].shape[0])
    return {"lm_tokens": lm, "images": images, "vision_patches": patches}


def step(trainer, micro_batches, device) -> float:
    """Seconds for collate + training_step of every micro-batch of one prompt (gradients accumulated)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.current_gradient_accumulation_steps = len(micro_batches)
    for idx in micro_batches:
        batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in idx])
        trainer.training_step(trainer.model, batch)
    trainer.model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def parameter_counts(model) -> dict:
    lm = vision = 0
    for name, p in model.named_parameters():
        if "lora_" in name or "embed_tokens" in name or "lm_head" in name:
            continue
        if ".visual." in name or name.startswith("visual") or "model.visual" in name:
            vision += p.numel()
        elif "language_model" in name:
            lm += p.numel()
    return {"lm_non_embedding": lm, "vision": vision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU proof that it runs, tiny Qwen2.5-VL config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dpo-pairs", type=int, default=2, help="pairs per DPO micro-batch")
    parser.add_argument("--image-side", type=int, default=448, help="448 = 256 visual tokens")
    parser.add_argument("--completion-words", type=int, default=120)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200)")
    parser.add_argument("--variants", default="dpo_pairwise,apo,apo_shared")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_apo_qwen25vl.json"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        torch.set_num_threads(1)
        args.image_side, args.completion_words = 112, 30
    variants = args.variants.split(",")
    n_prompts = args.warmup + args.repeats
    rows = make_rows(n_prompts, args.image_side, args.completion_words)
    times = {v: [] for v in variants}
    peak, per_prompt, params = {}, {}, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, processor = build_student(tmp / "student", args.tiny, args.image_side, device, dtype)
        params = parameter_counts(model)
        setups = {}
        for v in variants:  # a fresh model per trainer (each trainer adds its own LoRA adapter)
            if len(setups):
                model, processor = build_student(tmp / f"student_{v}", args.tiny, args.image_side, device, dtype)
            setups[v] = make_trainer(v, model, processor, rows, args, tmp)
            trainer, steps = setups[v]
            per_prompt[v] = forwarded(trainer, steps[-1])
            before = 0
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            step(trainer, steps[0], device)  # warm-up, and the variant's peak memory
            if device.type == "cuda":
                # the rise over what was allocated when the step began (the variants built before stay resident)
                peak[v] = {"peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                           "rise_gib": (torch.cuda.max_memory_allocated() - before) / 2**30}
            else:
                peak[v] = None
        for r in range(args.warmup, n_prompts):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                trainer, steps = setups[v]
                times[v].append(step(trainer, steps[r], device))

    med = {v: statistics.median(times[v]) for v in variants}

    def flops(v):
        f = per_prompt[v]
        lm = params["lm_non_embedding"] * f["lm_tokens"] * (2 + 2 + 2)  # policy fwd + bwd (activations), ref fwd
        vis = params["vision"] * f["vision_patches"] * (2 + 2 + 2)
        return lm + vis

    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tiny": args.tiny, "K": K, "dtype": str(dtype), "image_side": args.image_side,
        "completion_words": args.completion_words, "dpo_pairs_per_microbatch": args.dpo_pairs,
        "repeats": args.repeats, "warmup": args.warmup, "parameters": params,
        "timed": "collate + training_step (LoRA policy forward+backward, adapter-disabled reference forward) of "
                 "every micro-batch of one prompt; median seconds per prompt",
        "seconds_per_prompt": med,
        "policy_forward_per_prompt": per_prompt,
        "lm_tokens_per_second": {v: 2 * per_prompt[v]["lm_tokens"] / med[v] for v in variants},
        "peak_gpu_memory_gib": peak,
        "mfu": ({v: flops(v) / med[v] / (args.peak_tflops * 1e12) for v in variants}
                if device.type == "cuda" else None),
        "ratios": {f"{a}_over_{b}_time": med[a] / med[b] for a in variants for b in variants if a != b},
        "all_seconds": times,
    }
    out = Path(args.out)
    if args.tiny:
        out = out.with_name(out.stem + "_tiny.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "all_seconds"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

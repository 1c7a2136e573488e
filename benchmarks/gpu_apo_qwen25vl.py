"""APO vs pairwise DPO at real scale: a randomly initialised model with Qwen2.5-VL-7B's architecture (GPU).

No downloads: the config is written below (Qwen2.5-VL-7B-Instruct's published sizes), the weights are random,
the inputs synthetic (a 448x448 image = 256 visual tokens, a ~40-token prompt, ~300-token trajectories). bf16,
LoRA r8/alpha32 on all linear layers of the language model (the released setting), gradient checkpointing; the
reference is the same model with the adapter disabled (what the critique recipe does with PEFT).

Per prompt with K = 7 negatives:
- ``apo``: one forward+backward over 1 + 7 sequences (``--apo-prompts`` prompts per micro-batch), one no-grad
  reference forward, the APO loss (``cxr_max.training.apo_loss``);
- ``dpo_pairwise``: the 7 (positive, negative) pairs in micro-batches of ``--dpo-pairs`` pairs (2 sequences
  each), each a forward+backward plus a reference forward, TRL's sigmoid loss.
Both use TRL's fused LM head (per-token log-probs without the full logits), as the trainers do. Collation is not
timed (Qwen2.5-VL's processor needs torchvision); this measures the model step. Reports tokens/s (all tokens
forwarded through the policy, per second) and peak GPU memory, alternating variants, medians.

    python benchmarks/gpu_apo_qwen25vl.py                 # GPU, real size
    python benchmarks/gpu_apo_qwen25vl.py --tiny          # CPU smoke test, tiny Qwen2.5-VL config
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_max.training.loss import apo_loss  # noqa: E402

K = 7


def qwen25vl_config(tiny: bool):
    """Qwen2.5-VL-7B-Instruct's architecture (or a tiny one with the same structure for --tiny)."""
    from transformers import Qwen2_5_VLConfig

    if tiny:
        text = dict(vocab_size=1000, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[1])
    else:
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                    rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31])
    image_token_id = text["vocab_size"] - 5
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=image_token_id,
                            video_token_id=text["vocab_size"] - 4, vision_start_token_id=text["vocab_size"] - 3,
                            vision_end_token_id=text["vocab_size"] - 2, tie_word_embeddings=False)


def make_batch(config, n_seq: int, image_side: int, prompt_len: int, completion_lens: list[int], device, seed=0):
    """Synthetic Qwen2.5-VL inputs: ``n_seq`` sequences, each [vision start, image pads, vision end, prompt,
    completion], right-padded; one image per sequence."""
    g = torch.Generator().manual_seed(seed)
    v = config.vision_config
    grid = image_side // v.patch_size
    n_patches = grid * grid
    n_img_tokens = n_patches // (v.spatial_merge_size ** 2)
    vocab = config.text_config.vocab_size - 10
    seqs, comp = [], []
    for i in range(n_seq):
        c = completion_lens[i % len(completion_lens)]
        ids = ([config.vision_start_token_id] + [config.image_token_id] * n_img_tokens + [config.vision_end_token_id]
               + torch.randint(0, vocab, (prompt_len + c,), generator=g).tolist())
        seqs.append(ids)
        comp.append([0] * (len(ids) - c) + [1] * c)
    width = max(len(s) for s in seqs)
    input_ids = torch.zeros(n_seq, width, dtype=torch.long)
    attention = torch.zeros(n_seq, width, dtype=torch.long)
    completion = torch.zeros(n_seq, width, dtype=torch.long)
    for i, (s, c) in enumerate(zip(seqs, comp)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
        completion[i, : len(c)] = torch.tensor(c)
    pixel_dim = 3 * v.temporal_patch_size * v.patch_size ** 2
    batch = {
        "input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
        "pixel_values": torch.randn(n_seq * n_patches, pixel_dim, generator=g),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * n_seq),
        "mm_token_type_ids": (input_ids == config.image_token_id).long(),
    }
    return {k: t.to(device) for k, t in batch.items()}


def seq_logps(model, batch, dtype):
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    kwargs = {k: v for k, v in batch.items() if k != "completion_mask"}
    kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype)
    out = model(**kwargs, labels=labels, fused_lm_head=True)
    return out.log_probs.sum(dim=1)


def apo_step(model, batch, beta=0.1):
    dtype = next(model.parameters()).dtype
    with torch.no_grad(), model.disable_adapter():
        ref = seq_logps(model, batch, dtype)
    pol = seq_logps(model, batch, dtype)
    loss = apo_loss(pol.view(-1, 1 + K), ref.view(-1, 1 + K), beta=beta)
    loss.backward()


def dpo_step(model, batches, beta=0.1):
    dtype = next(model.parameters()).dtype
    for batch in batches:  # each: [chosen..., rejected...] halves
        with torch.no_grad(), model.disable_adapter():
            ref = seq_logps(model, batch, dtype)
        pol = seq_logps(model, batch, dtype)
        pc, pr = pol.chunk(2)
        rc, rr = ref.chunk(2)
        loss = -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean() / len(batches)
        loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke mode with a tiny Qwen2.5-VL config")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--apo-prompts", type=int, default=1, help="prompts per APO micro-batch (1 + K sequences each)")
    parser.add_argument("--dpo-pairs", type=int, default=2, help="pairs per DPO micro-batch (per-device batch 2)")
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--prompt-len", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_apo_qwen25vl.json"))
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration
    from trl.trainer.utils import add_fused_lm_head

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.image_side, args.prompt_len = 56, 8
    completion_lens = [32, 40, 24, 36] if args.tiny else [300, 340, 260, 320, 280, 310, 290, 330]
    torch.manual_seed(0)
    config = qwen25vl_config(args.tiny)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    add_fused_lm_head(model)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()

    n = args.apo_prompts
    apo_batch = make_batch(config, n * (1 + K), args.image_side, args.prompt_len, completion_lens, device)
    pairs = []
    for s in range(0, K * n, args.dpo_pairs):
        m = min(args.dpo_pairs, K * n - s)
        chosen = make_batch(config, m, args.image_side, args.prompt_len, completion_lens[:1], device, seed=1)
        rejected = make_batch(config, m, args.image_side, args.prompt_len, completion_lens[1:], device, seed=2 + s)
        width = max(chosen["input_ids"].shape[1], rejected["input_ids"].shape[1])
        merged = {}
        for key in ("input_ids", "attention_mask", "completion_mask", "mm_token_type_ids"):
            a, b = (F.pad(t[key], (0, width - t[key].shape[1])) for t in (chosen, rejected))
            merged[key] = torch.cat([a, b])
        merged["pixel_values"] = torch.cat([chosen["pixel_values"], rejected["pixel_values"]])
        merged["image_grid_thw"] = torch.cat([chosen["image_grid_thw"], rejected["image_grid_thw"]])
        pairs.append(merged)
    tokens = {"apo": int(apo_batch["attention_mask"].sum()) * 2,  # policy + reference forwards
              "dpo_pairwise": sum(int(p["attention_mask"].sum()) for p in pairs) * 2}

    def run(variant: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        apo_step(model, apo_batch) if variant == "apo" else dpo_step(model, pairs)
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    variants = ["apo", "dpo_pairwise"]
    times = {v: [] for v in variants}
    peak = {}
    for v in variants:  # warm-up and peak memory, one variant at a time
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        run(v)
        peak[v] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    for r in range(args.repeats):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            times[v].append(run(v))
    med = {v: statistics.median(times[v]) for v in variants}
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tiny": args.tiny, "K": K, "apo_prompts_per_microbatch": n, "dpo_pairs_per_microbatch": args.dpo_pairs,
        "image_side": args.image_side, "dtype": str(dtype),
        "seconds_per_prompt": {v: med[v] / n for v in variants},
        "tokens_per_second": {v: tokens[v] / med[v] for v in variants},
        "peak_gpu_memory_gib": peak,
        "apo_over_pairwise_time": med["apo"] / med["dpo_pairwise"],
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

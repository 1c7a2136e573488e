"""Evaluate a checkpoint, or a teacher's trajectories, on a split of any cxr_max builder config.

    python recipes/evaluate.py --model_name_or_path outputs/apo/critique             # a student, test split
    python recipes/evaluate.py --teacher sim-glm-4.5v                                # a teacher's trajectories
    python recipes/evaluate.py --model_name_or_path outputs/apo/critique --dataset_config ms_cxr_t   # temporal pairs
    python recipes/evaluate.py --config my_eval.yaml                                 # every flag from YAML

Writes ``<output_dir>/predictions.jsonl`` (one line per image keyed by dicom_id, appended per batch: a rerun
skips the images already answered), ``metrics.json`` (presence accuracy per finding with 95 % bootstrap
intervals, label F1, report metrics when the images have reports, MS-CXR-T accuracy for ``ms_cxr_t``),
``metrics.md`` and ``accuracy.png``. On ``ms_cxr_t`` a one-image model answers each image of a pair alone and
the progression is derived from the two answers (see :mod:`cxr_max.evaluation.runner`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trl import TrlParser  # noqa: E402

from cxr_max.evaluation import runner  # noqa: E402


@dataclass
class EvaluateArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Checkpoint folder to evaluate."})
    teacher: str | None = field(default=None, metadata={"help": "Evaluate this teacher's stored trajectories instead."})
    dataset_config: str = field(default="mimic", metadata={"help": f"Builder config: {runner.CONFIGS}."})
    split: str = field(default="test", metadata={"help": "Split (ignored by ms_cxr_t, which has none)."})
    data_dir: str | None = field(default=None, metadata={"help": "MIMIC-CXR-JPG root (None: embedded synthetic)."})
    trajectories: str | None = field(default=None, metadata={"help": "Teacher trajectories (file or folder)."})
    ms_cxr_t: str | None = field(default=None, metadata={"help": "MS-CXR-T CSV or its folder (config ms_cxr_t)."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where predictions, metrics and plots go."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N images (pairs for ms_cxr_t)."})
    batch_size: int = field(default=16, metadata={"help": "Generation batch size."})
    max_new_tokens: int = field(default=192)
    prompt: str | None = field(default=None, metadata={"help": "User prompt with <image> (default: the diagnose prompt)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0)
    seed: int = field(default=0, metadata={"help": "Sampling, bootstrap and synthetic-world seed."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples per interval."})
    on_error: str = field(default="raise", metadata={"help": "raise | skip (bad answers counted, not scored)."})
    plots: bool = field(default=True, metadata={"help": "Write accuracy.png."})


def main(a: EvaluateArguments) -> dict:
    """Evaluate and print the per-finding table; returns the metrics dict (also in metrics.json)."""
    metrics = runner.evaluate(
        a.model_name_or_path, teacher=a.teacher, out_dir=a.output_dir, config=a.dataset_config, split=a.split,
        data_dir=a.data_dir, trajectories=a.trajectories, ms_cxr_t=a.ms_cxr_t, limit=a.limit,
        batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, prompt=a.prompt, do_sample=a.do_sample,
        temperature=a.temperature, seed=a.seed, n_boot=a.n_boot, on_error=a.on_error, plots=a.plots,
    )
    print((Path(a.output_dir) / "metrics.md").read_text())
    f1 = metrics["label_f1"]["labels_14"]["micro_f1"]
    print(f"label micro-F1 (14 labels): {runner.fmt_ci(f1)}")
    if metrics.get("ms_cxr_t"):
        print(f"MS-CXR-T top-1 accuracy: {runner.fmt_ci(metrics['ms_cxr_t']['avg_top1'])}")
    print(f"results: {Path(a.output_dir) / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main(*TrlParser((EvaluateArguments,)).parse_args_and_config())

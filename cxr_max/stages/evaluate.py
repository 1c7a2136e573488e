"""Evaluate a checkpoint, or a teacher's trajectories, on a split of any cxr_max builder config or ready rows.

    python recipes/evaluate.py --model_name_or_path outputs/apo/critique             # a student, test split
    python recipes/evaluate.py --teacher sim-glm-4.5v                                # a teacher's trajectories
    python recipes/evaluate.py --model_name_or_path outputs/apo/critique --dataset_config ms_cxr_t   # temporal pairs
    python recipes/evaluate.py --model_name_or_path outputs/apo/critique --dataset_name <export> # exported images
    python recipes/evaluate.py --config my_eval.yaml                                 # every flag from YAML

Writes ``<output_dir>/predictions.jsonl`` (one line per image keyed by dicom_id, appended per batch: a rerun
skips the images already answered), ``metrics.json`` (presence accuracy per finding with 95 % bootstrap
intervals, label F1, report metrics when the images have reports, MS-CXR-T accuracy for ``ms_cxr_t``),
``metrics.md`` and ``accuracy.png``; the summary numbers also go to the trackers of ``--report_to``
(:mod:`cxr_max.stages.tracking`). On ``ms_cxr_t`` a one-image model answers each image of a pair alone and the
progression is derived from the two answers (see :mod:`cxr_max.evaluation.runner`).

``--dataset_name`` other than ``cxr_max`` (an export folder, a rows file, a Hub id) evaluates on the rows of
``--dataset_test_split`` as they are: they need ``dicom_id``, ``image`` and ``labels`` (a ``report`` column adds
the report metrics), as the builder's ``mimic`` config has; the builder path keeps frontal views only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from cxr_max.stages.data import BUILDER, load_dataset_dict, pick_split, uses_builder
from cxr_max.stages.tracking import Tracker, report_to_field

NAME = "evaluate"
HELP = "Score a checkpoint or a teacher per finding on a split (predictions, metrics, plot)"


@dataclass
class EvaluateArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Checkpoint folder to evaluate."})
    teacher: str | None = field(default=None, metadata={"help": "Evaluate this teacher's stored trajectories instead."})
    dataset_name: str = field(default=BUILDER, metadata={"help": "'cxr_max' (the builder), a local export folder or "
                              "rows file, or a Hub dataset id; read with datasets.load_dataset."})
    dataset_config: str = field(default="mimic", metadata={"help": "Builder config: mimic, studies, trajectories, "
                                "sft, ms_cxr_t (or the dataset's own config)."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate (ignored by ms_cxr_t, "
                                    "which has none)."})
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
    report_to: list[str] = report_to_field()
    run_name: str | None = field(default=None, metadata={"help": "Tracker run name (None: <output_dir>'s name)."})


DATACLASS_TYPES = (EvaluateArguments,)


def main(a: EvaluateArguments) -> dict:
    """Evaluate and print the per-finding table; returns the metrics dict (also in metrics.json)."""
    from cxr_max.evaluation import runner

    tracker = Tracker(a.report_to, run_name=a.run_name or Path(a.output_dir).name, output_dir=a.output_dir)
    data = None if uses_builder(a.dataset_name) else rows_eval_data(a)
    metrics = runner.evaluate(
        a.model_name_or_path, teacher=a.teacher, out_dir=a.output_dir, config=a.dataset_config,
        split=a.dataset_test_split, data_dir=a.data_dir, trajectories=a.trajectories, ms_cxr_t=a.ms_cxr_t,
        limit=a.limit, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, prompt=a.prompt,
        do_sample=a.do_sample, temperature=a.temperature, seed=a.seed, n_boot=a.n_boot, on_error=a.on_error,
        plots=a.plots, data=data,
    )
    print((Path(a.output_dir) / "metrics.md").read_text())
    f1 = metrics["label_f1"]["labels_14"]["micro_f1"]
    print(f"label micro-F1 (14 labels): {runner.fmt_ci(f1)}")
    if metrics.get("ms_cxr_t"):
        print(f"MS-CXR-T top-1 accuracy: {runner.fmt_ci(metrics['ms_cxr_t']['avg_top1'])}")
    print(f"results: {Path(a.output_dir) / 'metrics.json'}")
    tracker.log(summary(metrics))
    return metrics


def rows_eval_data(a: EvaluateArguments):
    """:class:`cxr_max.evaluation.runner.EvalData` from ready rows (``--dataset_name`` not the builder)."""
    from cxr_max.evaluation.runner import EvalData

    if a.teacher is not None or a.dataset_config == "ms_cxr_t":
        raise ValueError("--teacher and --dataset_config ms_cxr_t read the cxr_max builder: use --dataset_name cxr_max")
    for name, value in (("data_dir", a.data_dir), ("trajectories", a.trajectories), ("ms_cxr_t", a.ms_cxr_t)):
        if value is not None:
            raise ValueError(f"--{name} is an option of the cxr_max builder, but --dataset_name {a.dataset_name} "
                             "names ready rows")
    rows = pick_split(load_dataset_dict(a, file_split=a.dataset_test_split), a.dataset_test_split,
                      f"--dataset_name {a.dataset_name}")
    missing = sorted({"dicom_id", "image", "labels"} - set(rows.column_names))
    if missing:
        raise ValueError(f"--dataset_name {a.dataset_name} ({a.dataset_test_split}): rows need dicom_id, image and "
                         f"labels columns; missing {', '.join(missing)}")
    if a.limit:
        rows = rows.select(range(min(a.limit, rows.num_rows)))
    return EvalData(keys=list(rows["dicom_id"]), images=list(rows["image"]),
                    truths=[dict(x) for x in rows["labels"]],
                    reports=rows["report"] if "report" in rows.column_names else None)


def summary(metrics: dict) -> dict[str, float]:
    """The numbers of an evaluation for a tracker (``test_*`` keys: trackers file them under the test split):
    presence accuracy per finding and on average, label micro-F1, MS-CXR-T top-1 accuracy."""
    out = {f"test_presence_accuracy/{finding}": v.get("value") for finding, v in metrics.get("accuracy", {}).items()
           if isinstance(v, dict)}
    out["test_label_micro_f1"] = metrics["label_f1"]["labels_14"]["micro_f1"].get("value")
    out["test_images"] = metrics.get("n_images")
    if metrics.get("ms_cxr_t"):
        out["test_ms_cxr_t_top1"] = metrics["ms_cxr_t"]["avg_top1"].get("value")
    return {k: v for k, v in out.items() if v is not None}


def make_parser(subparsers=None, prog: str | None = None):
    """``(EvaluateArguments,)``; every flag also works from ``--config file.yaml``."""
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, dataclass_types=DATACLASS_TYPES)
    return TrlParser(DATACLASS_TYPES, prog=prog)

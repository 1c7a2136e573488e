"""Learn -> compare -> critique -> evaluate: the paper's method end to end.

    python recipes/apo.py                                  # embedded synthetic data, tiny student, CPU
    python recipes/apo.py --consensus dawid_skene --negative_weighting drift --output_dir outputs/apo-drift
    python recipes/apo.py --config my_apo.yaml             # every flag below also works from YAML

Stages whose output already exists are reused (delete the folder or pass --force to redo them); a stage
killed mid-way resumes from its last checkpoint with --resume_from_checkpoint. The learn and critique
hyperparameters come from --learn_config / --critique_config (the YAML files of recipes/learn.py and
recipes/critique.py). At the end a table shows each teacher and the student after each stage, per finding.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trl import TrlParser  # noqa: E402

import critique  # noqa: E402
import learn  # noqa: E402
from cxr_max.drift.compare import run_compare  # noqa: E402
from cxr_max.evaluation.predict import (  # noqa: E402
    TABLE_FINDINGS,
    finding_accuracy,
    generate_answers,
    image_dependence,
    one_row_per_image,
)

HERE = Path(__file__).resolve().parent


@dataclass
class APOArguments:
    output_dir: str = field(default="outputs/apo", metadata={"help": "Folder for every stage's output."})
    data_dir: str | None = field(default=None, metadata={"help": "MIMIC-CXR-JPG root (None: embedded synthetic)."})
    trajectories: str | None = field(default=None, metadata={"help": "Teacher trajectories (None: simulated teachers)."})
    consensus: str = field(default="vote", metadata={"help": "Compare stage: vote | dawid_skene | model."})
    negative_weighting: str = field(default="uniform", metadata={"help": "uniform (paper) | reliability | drift."})
    learn_config: str = field(default=str(HERE / "configs/learn_tiny.yaml"))
    critique_config: str = field(default=str(HERE / "configs/critique_tiny.yaml"))
    learn_epochs: float | None = field(default=None, metadata={"help": "Learn-stage epochs (None: the learn config's)."})
    critique_epochs: float = field(default=1.0, metadata={"help": "Critique-stage epochs."})
    max_steps: int = field(default=-1, metadata={"help": "Cap the steps of learn and critique (smoke runs)."})
    eval_split: str = field(default="test", metadata={"help": "Split the table is computed on."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate on the first N images only."})
    resume_from_checkpoint: bool = field(default=False, metadata={"help": "Resume a killed learn/critique run."})
    force: bool = field(default=False, metadata={"help": "Redo stages whose output exists."})
    seed: int = field(default=0, metadata={"help": "Training seed (the synthetic world is always seed 0; "
                                                   "`cxr-max synth --seed N` + --data_dir for another)."})


def stage_args(parser_types, config: str, **overrides) -> tuple:
    """Parse a stage's YAML config with its own TrlParser, then apply overrides."""
    args = ["--config", config] + [x for k, v in overrides.items() if v is not None for x in (f"--{k}", str(v))]
    return TrlParser(parser_types).parse_args_and_config(args=args)


def done(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def main(a: APOArguments) -> dict:
    out = Path(a.output_dir)
    t0 = time.perf_counter()
    if a.data_dir is None:  # the embedded synthetic world; every stage reads the same explicit folders
        from cxr_max.synthetic import ensure_synthetic

        root = Path(ensure_synthetic())
        a.data_dir, a.trajectories = str(root / "mimic-cxr-jpg"), a.trajectories or str(root / "trajectories")
    data = {"data_dir": a.data_dir, "trajectories": a.trajectories}
    resume = "true" if a.resume_from_checkpoint else None

    # 1. learn: SFT on the union of all teachers' trajectories -> pi_st (also the reference)
    learn_dir = out / "learn"
    if a.force or not done(learn_dir):
        learn.main(*stage_args((learn.LearnArguments, learn.SFTConfig, learn.ModelConfig), a.learn_config,
                               output_dir=learn_dir, seed=a.seed, resume_from_checkpoint=resume,
                               num_train_epochs=a.learn_epochs, max_steps=a.max_steps, **data))

    # 2. compare: a consensus positive per image; every teacher's trajectory a (weighted) negative
    prefs = out / "compare"
    if a.force or not any(prefs.glob("preferences*")):
        run_compare(a.trajectories, data_dir=a.data_dir, out=prefs,
                    report_dir=out / "drift_report", consensus=a.consensus, negative_weighting=a.negative_weighting,
                    model_consensus_kwargs={"model": str(learn_dir)} if a.consensus == "model" else None)

    # 3. critique: APO (Plackett-Luce over the consensus and all teachers) from pi_st
    critique_dir = out / "critique"
    if a.force or not done(critique_dir):
        critique.main(*stage_args((critique.CritiqueArguments, critique.APOConfig, critique.ModelConfig), a.critique_config,
                                  output_dir=critique_dir, model_name_or_path=learn_dir, preferences=prefs,
                                  data_dir=a.data_dir, seed=a.seed, resume_from_checkpoint=resume,
                                  num_train_epochs=a.critique_epochs, max_steps=a.max_steps))

    # 4. evaluate: every teacher and the student after each stage, same images, same scoring
    results = evaluate(a, {"student (learn)": learn_dir, "student (APO)": critique_dir})
    results["wall_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results, out / "results.md")
    return results


def evaluate(a: APOArguments, students: dict[str, Path]) -> dict:
    import cxr_max

    kw = {"data_dir": a.data_dir, "trajectories": a.trajectories}
    split = a.eval_split
    images = cxr_max.load_dataset("mimic", split=split, views="frontal", data_dir=a.data_dir)
    if a.eval_limit:
        images = images.select(range(min(a.eval_limit, images.num_rows)))
    truth = dict(zip(images["dicom_id"], images["labels"]))
    table: dict[str, dict] = {}
    traj = cxr_max.load_dataset("trajectories", split=split, images="path", **kw).select_columns(["dicom_id", "teacher", "raw", "sample"])
    for teacher in sorted(set(traj["teacher"])):
        rows = [r for r in traj if r["teacher"] == teacher and r["sample"] == 0 and r["dicom_id"] in truth]
        table[teacher] = finding_accuracy([r["raw"] or "" for r in rows], [truth[r["dicom_id"]] for r in rows])
    for name, folder in students.items():
        answers = generate_answers(str(folder), images["image"])
        table[name] = finding_accuracy(answers, [truth[d] for d in images["dicom_id"]])
    # does each student read the image? its loss on validation answers with the true, another and a black image
    rows = one_row_per_image(cxr_max.load_dataset("sft", split="validation", **kw), limit=48)
    pixels = {name: image_dependence(str(folder), rows) for name, folder in students.items()} if len(rows) > 1 else {}
    return {"split": split, "images": images.num_rows, "findings": list(TABLE_FINDINGS), "accuracy": table,
            "image_dependence": pixels}


def print_table(results: dict, md_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = results["findings"] + ["Avg"]
    short = {"Consolidation": "Con.", "Pleural Effusion": "PE", "Pneumothorax": "Pnx.", "Edema": "Ede.",
             "Cardiomegaly": "Card.", "Atelectasis": "Atel."}  # the paper's column names
    t = Table(title=f"Top-1 presence accuracy per finding ({results['split']} split, {results['images']} images)")
    t.add_column("model", no_wrap=True)
    for c in cols:
        t.add_column(short.get(c, c), justify="right")
    lines = ["| model | " + " | ".join(short.get(c, c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, acc in results["accuracy"].items():
        cells = [f"{acc[c]:.2f}" for c in cols]
        t.add_row(name, *cells, style="bold" if name.startswith("student") else None)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    Console().print(t)
    pixels = results.get("image_dependence", {})
    if pixels:
        lines += ["", "Loss per answer token on validation images (lower is better): with the true image / another "
                  "image / a black one. Equal values mean the student ignores the pixels.", ""]
    for name, d in pixels.items():
        line = f"{name}: {d['true']:.3f} / {d['shuffled']:.3f} / {d['black']:.3f} (gap {d['gap']:+.3f})"
        print(line)
        lines.append(f"- {line}")
    md_path.write_text("\n".join(lines) + "\n")
    print(f"results: {md_path.with_suffix('.json')}  ({results.get('wall_seconds', 0):.0f} s)")


if __name__ == "__main__":
    main(*TrlParser((APOArguments,)).parse_args_and_config())

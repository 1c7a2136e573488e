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
    positive_text: str = field(default="closest", metadata={"help": "Compare stage's positive: closest (the teacher "
                               "trajectory closest to the consensus, in the teachers' own words) | "
                               "closest-or-rendered | rendered."})
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
    compare_split: str | None = field(default="train", metadata={"help": "Split whose trajectories the compare stage "
                                      "reads (consensus, drift points, weights); None: every split."})
    oracle: bool | None = field(default=None, metadata={"help": "Also train the oracle student (the learn recipe on "
                                "truth-rendered trajectories: the ceiling of the table). None: on the embedded "
                                "synthetic world only (real data has no ground truth)."})


def stage_args(parser_types, config: str, **overrides) -> tuple:
    """Parse a stage's YAML config with its own TrlParser, then apply overrides."""
    args = ["--config", config] + [x for k, v in overrides.items() if v is not None for x in (f"--{k}", str(v))]
    return TrlParser(parser_types).parse_args_and_config(args=args)


def done(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def main(a: APOArguments) -> dict:
    out = Path(a.output_dir)
    t0 = time.perf_counter()
    world = None
    if a.data_dir is None:  # the embedded synthetic world; every stage reads the same explicit folders
        from cxr_max.synthetic import ensure_synthetic

        world = Path(ensure_synthetic())
        a.data_dir, a.trajectories = str(world / "mimic-cxr-jpg"), a.trajectories or str(world / "trajectories")
    elif (Path(a.data_dir).parent / "truth.jsonl").is_file():  # a synthetic world passed explicitly
        world = Path(a.data_dir).parent
    if a.oracle is None:
        a.oracle = world is not None
    if a.oracle and world is None:
        raise ValueError("--oracle needs a synthetic world (its truth.jsonl); real data has no ground truth")
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
        run_compare(compare_input(a), data_dir=a.data_dir, out=prefs,
                    report_dir=out / "drift_report", consensus=a.consensus, negative_weighting=a.negative_weighting,
                    positive_text=a.positive_text,
                    model_consensus_kwargs={"model": str(learn_dir)} if a.consensus == "model" else None)

    # 3. critique: APO (Plackett-Luce over the consensus and all teachers) from pi_st
    critique_dir = out / "critique"
    if a.force or not done(critique_dir):
        critique.main(*stage_args((critique.CritiqueArguments, critique.APOConfig, critique.ModelConfig), a.critique_config,
                                  output_dir=critique_dir, model_name_or_path=learn_dir, preferences=prefs,
                                  data_dir=a.data_dir, seed=a.seed, resume_from_checkpoint=resume,
                                  num_train_epochs=a.critique_epochs, max_steps=a.max_steps))

    students = {"student (learn)": learn_dir, "student (APO)": critique_dir}
    # 3b. the oracle ceiling (a control, not the method): the same learn recipe on truth-rendered trajectories
    if a.oracle:
        from cxr_max.drift.controls import write_truth_trajectories
        from cxr_max.synthetic import load_truth

        truth_dir = out / "truth-trajectories"
        if a.force or not (truth_dir / ".complete").exists():
            write_truth_trajectories(a.trajectories, load_truth(world), truth_dir)
            (truth_dir / ".complete").write_text("ok")
        oracle_dir = out / "oracle"
        if a.force or not done(oracle_dir):
            learn.main(*stage_args((learn.LearnArguments, learn.SFTConfig, learn.ModelConfig), a.learn_config,
                                   output_dir=oracle_dir, seed=a.seed, resume_from_checkpoint=resume,
                                   num_train_epochs=a.learn_epochs, max_steps=a.max_steps, data_dir=a.data_dir,
                                   trajectories=str(truth_dir)))
        students["oracle ceiling (learn on the truth)"] = oracle_dir

    # 4. evaluate: every teacher, the consensus, the majority answer and the students, same images and scoring
    results = evaluate(a, students)
    results["wall_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results, out / "results.md")
    return results


def split_ids(data_dir: str, split: str) -> set[str]:
    """dicom_ids of ``split`` in the MIMIC-CXR-JPG root (every view)."""
    import cxr_max

    return set(cxr_max.load_dataset("mimic", split=split, images="path", data_dir=data_dir)["dicom_id"])


def compare_input(a: APOArguments):
    """The compare stage's input: the trajectories of ``--compare_split`` only (a table), or all of them."""
    if a.compare_split is None:
        return a.trajectories
    import pyarrow as pa

    from cxr_max.drift import io as drift_io

    table = drift_io.read_trajectories(a.trajectories)
    ids = split_ids(a.data_dir, a.compare_split)
    return table.filter(pa.array([d in ids for d in table.column("dicom_id").to_pylist()]))


def evaluate(a: APOArguments, students: dict[str, Path]) -> dict:
    """Per finding balanced accuracy, accuracy and macro-F1 of every teacher, the consensus (vote, computed on
    the evaluated split's trajectories), the image-blind majority answer and each student."""
    import cxr_max
    import pyarrow as pa

    from cxr_max.drift import io as drift_io
    from cxr_max.evaluation.labeler import label_reports
    from cxr_max.evaluation.probe import finding_metrics

    kw = {"data_dir": a.data_dir, "trajectories": a.trajectories}
    split = a.eval_split
    images = cxr_max.load_dataset("mimic", split=split, views="frontal", data_dir=a.data_dir)
    if a.eval_limit:
        images = images.select(range(min(a.eval_limit, images.num_rows)))
    ids = list(images["dicom_id"])
    truth = dict(zip(ids, images["labels"]))
    truths = [truth[d] for d in ids]
    table: dict[str, dict] = {}

    def score(texts: list[str]) -> dict:
        return finding_metrics(label_reports(texts), truths, n_boot=200)

    traj = cxr_max.load_dataset("trajectories", split=split, images="path", **kw).select_columns(["dicom_id", "teacher", "raw", "sample"])
    for teacher in sorted(set(traj["teacher"])):
        got = {r["dicom_id"]: r["raw"] or "" for r in traj if r["teacher"] == teacher and r["sample"] == 0}
        table[teacher] = score([got.get(d, "") for d in ids])
    whole = drift_io.read_trajectories(a.trajectories)
    wanted = set(ids)
    sub = whole.filter(pa.array([d in wanted for d in whole.column("dicom_id").to_pylist()]))
    cons = run_compare(sub, data_dir=a.data_dir, consensus="vote", plots=False, progress=False)
    by_id = {r["dicom_id"]: r["consensus_labels"] for r in cons.rows}
    table["consensus (vote)"] = finding_metrics([by_id.get(d, {}) for d in ids], truths, n_boot=200)
    calls = {f: 1.0 if sum(t.get(f) == 1.0 for t in truths) > sum(t.get(f) not in (1.0, -1.0) for t in truths)
             else 0.0 for f in TABLE_FINDINGS}
    table["majority answer"] = finding_metrics([calls] * len(truths), truths, n_boot=200)
    for name, folder in students.items():
        table[name] = score(generate_answers(str(folder), images["image"]))
    # does each student read the image? its loss on validation answers with the true, another and a black image
    rows = one_row_per_image(cxr_max.load_dataset("sft", split="validation", **kw), limit=48)
    pixels = {name: image_dependence(str(folder), rows) for name, folder in students.items()} if len(rows) > 1 else {}
    return {"split": split, "images": images.num_rows, "findings": list(TABLE_FINDINGS), "metrics": table,
            "image_dependence": pixels}


def print_table(results: dict, md_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from cxr_max.evaluation.bench_report import SHORT as short  # the paper's column names

    cols = results["findings"] + ["Avg"]
    title = (f"Balanced accuracy per finding ({results['split']} split, {results['images']} images; "
             "an image-blind answer scores .50); Acc and F1: Avg accuracy and macro-F1")
    t = Table(title=title)
    t.add_column("model", no_wrap=True)
    for c in cols + ["Acc", "F1"]:
        t.add_column(short.get(c, c), justify="right")
    lines = [title, "", "| model | " + " | ".join(short.get(c, c) for c in cols) + " | Acc | F1 |",
             "|---" * (len(cols) + 3) + "|"]
    for name, m in results["metrics"].items():
        cells = [f"{m[c]['balanced_accuracy']['value']:.2f}" for c in cols]
        cells += [f"{m['Avg']['accuracy']['value']:.2f}", f"{m['Avg']['macro_f1']['value']:.2f}"]
        t.add_row(name, *cells, style="bold" if name.startswith("student") else None)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    console = Console()
    Console(width=max(console.width, 132)).print(t)  # never truncate the numbers (piped output is 80 wide)
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

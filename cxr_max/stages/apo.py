"""Learn -> compare -> critique -> evaluate: the paper's method end to end (docs/method.md).

    python recipes/apo.py                                  # embedded synthetic data, tiny student, CPU
    python recipes/apo.py --consensus dawid_skene --negative_weighting drift --output_dir outputs/apo-drift
    python recipes/apo.py --config my_apo.yaml             # every flag below also works from YAML

Each stage is the library function of its module (:mod:`cxr_max.stages.learn`, ``compare``, ``critique``)
called with its dataclasses: the learn and critique hyperparameters come from ``--learn_config`` /
``--critique_config`` (the YAML files of those stages), with this pipeline's values set on top. Stages whose
output already exists are reused (delete the folder or pass ``--force`` to redo them); a stage killed mid-way
resumes from its last checkpoint with ``--resume_from_checkpoint``. At the end a table shows each teacher and the
student after each stage, per finding; ``--report_to`` sends the training logs, the compare summary and that
table to the trackers.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trl import TrlParser

from cxr_max.stages import compare, critique, learn
from cxr_max.stages.config import from_config
from cxr_max.stages.tracking import Tracker, report_to_field

NAME = "apo"
HELP = "The method end to end: learn, compare, critique, then the per-finding table"
# The stage configs live in the project's recipes/configs/; a wheel carries a copy as cxr_max/stages/configs/
# (copied there at build time by build_hooks.py). An installed package reads its copy; a checkout reads
# recipes/configs/.
INSTALLED_CONFIGS = Path(__file__).resolve().parent / "configs"
CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
DEFAULT_CONFIGS = ("learn_tiny.yaml", "critique_tiny.yaml")


def config_dir() -> Path:
    """The folder the default stage configs are read from: the installed copy, else a checkout's
    ``recipes/configs/`` (returned as well when neither holds them; reading the file then names it)."""
    for folder in (INSTALLED_CONFIGS, CHECKOUT_CONFIGS):
        if all((folder / name).is_file() for name in DEFAULT_CONFIGS):
            return folder
    return CHECKOUT_CONFIGS


CONFIGS = config_dir()
ORACLE = "oracle ceiling (learn on the truth)"


@dataclass
class APOArguments:
    output_dir: str = field(default="outputs/apo", metadata={"help": "Folder for every stage's output."})
    data_dir: str | None = field(default=None, metadata={"help": "MIMIC-CXR-JPG root (None: embedded synthetic)."})
    trajectories: str | None = field(default=None, metadata={"help": "Teacher trajectories (None: simulated teachers)."})
    consensus: Literal["vote", "dawid_skene", "model"] = field(default="vote", metadata={
        "help": "Compare stage: vote | dawid_skene | model."})
    negative_weighting: Literal["uniform", "reliability", "drift"] = field(default="uniform", metadata={
        "help": "uniform (paper) | reliability | drift."})
    positive_text: Literal["closest-or-rendered", "closest", "rendered"] = field(default="closest", metadata={
        "help": "Compare stage's positive: closest (the teacher trajectory closest to the consensus, in the "
                "teachers' own words) | closest-or-rendered | rendered."})
    learn_config: str = field(default=str(CONFIGS / "learn_tiny.yaml"))
    critique_config: str = field(default=str(CONFIGS / "critique_tiny.yaml"))
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
    report_to: list[str] = report_to_field()


DATACLASS_TYPES = (APOArguments,)


def main(a: APOArguments) -> dict:
    """Run the pipeline; returns the table's numbers (also in ``<output_dir>/results.json`` and ``results.md``)."""
    out, t0 = Path(a.output_dir), time.perf_counter()
    a, world = with_world(a)
    tracker = Tracker(a.report_to, run_name=f"{out.name}/results", output_dir=out)
    data = {"data_dir": a.data_dir, "trajectories": a.trajectories}
    run = {"seed": a.seed, "max_steps": a.max_steps, "report_to": a.report_to,
           "resume_from_checkpoint": "true" if a.resume_from_checkpoint else None}

    # 1. learn: SFT on the union of all teachers' trajectories -> pi_st (also the reference)
    learn_dir = out / "learn"
    if a.force or not done(learn_dir):
        learn.main(*from_config(learn.DATACLASS_TYPES, a.learn_config, output_dir=learn_dir,
                                num_train_epochs=a.learn_epochs, **data, **run))

    # 2. compare: a consensus positive per image; every teacher's trajectory a (weighted) negative
    prefs = out / "compare"
    if a.force or not any(prefs.glob("preferences*")):
        compare.main(compare.CompareArguments(
            **data, output_dir=str(prefs), report_dir=str(out / "drift_report"), split=a.compare_split,
            consensus=a.consensus, negative_weighting=a.negative_weighting, positive_text=a.positive_text,
            model=str(learn_dir) if a.consensus == "model" else None, report_to=a.report_to,
            run_name=f"{out.name}/compare"))

    # 3. critique: APO (Plackett-Luce over the consensus and all teachers) from pi_st
    critique_dir = out / "critique"
    if a.force or not done(critique_dir):
        critique.main(*from_config(critique.DATACLASS_TYPES, a.critique_config, output_dir=critique_dir,
                                   model_name_or_path=learn_dir, preferences=prefs, data_dir=a.data_dir,
                                   num_train_epochs=a.critique_epochs, **run))
    students = {"student (learn)": learn_dir, "student (APO)": critique_dir}

    # 3b. the oracle ceiling (a control, not the method): the same learn recipe on truth-rendered trajectories
    if (world is not None) if a.oracle is None else a.oracle:
        oracle_dir, truth = out / "oracle", truth_trajectories(a, world, out / "truth-trajectories")
        if a.force or not done(oracle_dir):
            learn.main(*from_config(learn.DATACLASS_TYPES, a.learn_config, output_dir=oracle_dir,
                                    num_train_epochs=a.learn_epochs, data_dir=a.data_dir, trajectories=truth, **run))
        students[ORACLE] = oracle_dir

    # 4. evaluate: every teacher, the consensus, the majority answer and the students, same images and scoring
    results = evaluate_all(a, students)
    results["wall_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results, out / "results.md")
    tracker.log(table_summary(results))
    return results


def with_world(a: APOArguments) -> tuple[APOArguments, Path | None]:
    """``a`` with explicit data folders (every stage then reads the same ones), and the synthetic world's root
    (None for real data). Where they come from is :func:`cxr_max.sources.resolve_source`'s rule: no
    ``--data_dir`` means the embedded synthetic world; a real ``--data_dir`` needs ``--trajectories``; a synthetic
    world's own ``mimic-cxr-jpg`` brings that world's trajectories and truth."""
    from cxr_max.sources import resolve_source

    src = resolve_source(a.data_dir, a.trajectories, stage="apo", needs=("images", "trajectories"))
    a = dataclasses.replace(a, data_dir=str(src.data_dir), trajectories=str(src.trajectories))
    world = src.world
    if a.oracle and world is None:
        raise ValueError("--oracle needs a synthetic world (its truth.jsonl); real data has no ground truth")
    return a, world


def done(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def truth_trajectories(a: APOArguments, world: Path, folder: Path) -> str:
    """The teachers' trajectories rewritten from the synthetic world's truth (what the oracle learns from)."""
    from cxr_max.drift.controls import write_truth_trajectories
    from cxr_max.synthetic import load_truth

    if a.force or not (folder / ".complete").exists():
        write_truth_trajectories(a.trajectories, load_truth(world), folder)
        (folder / ".complete").write_text("ok")
    return str(folder)


def evaluate_all(a: APOArguments, students: dict[str, Path]) -> dict:
    """Per finding balanced accuracy, accuracy and macro-F1 of every teacher, the consensus (vote, computed on
    the evaluated split's trajectories), the image-blind majority answer and each student."""
    import pyarrow as pa

    import cxr_max
    from cxr_max.drift import io as drift_io
    from cxr_max.drift.compare import run_compare
    from cxr_max.evaluation.labeler import label_reports
    from cxr_max.evaluation.predict import TABLE_FINDINGS, generate_answers, image_dependence, one_row_per_image
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

    traj = cxr_max.load_dataset("trajectories", split=split, images="path", **kw).select_columns(
        ["dicom_id", "teacher", "raw", "sample"])
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


def table_summary(results: dict) -> dict[str, float]:
    """The table's numbers for a tracker: ``test_<model>/<finding>`` balanced accuracy, and Avg accuracy/F1."""
    out: dict[str, float] = {}
    for name, m in results["metrics"].items():
        for col in results["findings"] + ["Avg"]:
            out[f"test_{name}/{col}/balanced_accuracy"] = m[col]["balanced_accuracy"]["value"]
        out[f"test_{name}/Avg/accuracy"] = m["Avg"]["accuracy"]["value"]
        out[f"test_{name}/Avg/macro_f1"] = m["Avg"]["macro_f1"]["value"]
    for name, d in results.get("image_dependence", {}).items():
        out[f"test_{name}/image_gap"] = d["gap"]
    return out


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


def make_parser(subparsers=None, prog: str | None = None):
    """``(APOArguments,)``; every flag also works from ``--config file.yaml``."""
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, dataclass_types=DATACLASS_TYPES)
    return TrlParser(DATACLASS_TYPES, prog=prog)

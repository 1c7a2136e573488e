"""The drift benchmark: seven simulated drifting teachers, students trained several ways, and controls.

    python recipes/benchmark.py                                    # default CPU run (5 seeds; see the README)
    python recipes/benchmark.py --seeds 0 1 2 3 4 --synthetic_patients 1200  # scale up
    python recipes/benchmark.py --config my_bench.yaml             # every flag also works from YAML

For every training seed one learn stage (SFT on the union of all teachers, train split) is shared by the
preference-trained students, all with the same data, seed and number of optimizer steps:

- ``learn``         learn only;
- ``dpo``           learn + the authors' released preference stage (pairwise DPO on consensus/teacher pairs);
- ``apo-uniform``   learn + compare + critique (Plackett-Luce over all teachers, equal weights: the paper);
- ``apo-drift``     the same with drift-aware negative weights;
- ``apo-positive``  positive control: APO whose positive is the teacher trajectory closest to the truth (must beat learn);
- ``apo-negative``  negative control: APO whose positive is a random teacher's trajectory (must not);
- ``oracle``        the ceiling: the learn recipe (same student, rows, steps) on truth-rendered trajectories.

The compare stage (consensus, drift points, negative weights) sees the train split only. Every teacher, the
consensus (vote and Dawid-Skene, on the test images), the image-blind majority answer and every student are
scored on the test split per finding: balanced accuracy (an image-blind answer scores .5), accuracy and
macro-F1 of the extracted findings, bootstrap intervals over images; students also by the likelihood probe
(:mod:`cxr_max.evaluation.probe`). Then the paper's three claims: consistency (agreement across paraphrased
prompts and sampling seeds), robustness (a sweep over teacher mixes with 0/3, 1/3, 2/3 drifting teachers)
and generalisation (the same test images rendered as by another hospital). Results go to ``--results_dir``
(results.json, results.md); checkpoints and predictions to ``--work_dir``. Every stage's output is reused
when present, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import TrlParser

from cxr_max.evaluation import runner

HERE = Path(__file__).resolve().parent
VARIANTS = ("learn", "dpo", "apo-uniform", "apo-drift", "apo-positive", "apo-negative", "oracle")
# Which preference file each preference-trained variant reads.
PREFERENCES = {"dpo": "uniform", "apo-uniform": "uniform", "apo-drift": "drift", "apo-positive": "positive",
               "apo-negative": "negative"}
RESULTS_FORMAT = "drift-benchmark/3"  # results.json of another layout is started over, never mixed in
# Teacher mixes of the robustness sweep: three teachers each, a growing share with planted stream drift.
MIXES: dict[str, tuple[str, ...]] = {
    "0/3 drifting": ("sim-glm-4.5v", "sim-sonnet-4", "sim-gpt-5-nano"),
    "1/3 drifting": ("sim-glm-4.5v", "sim-sonnet-4", "sim-gemini-2.5-flash-lite"),
    "2/3 drifting": ("sim-glm-4.5v", "sim-gemini-2.5-flash-lite", "sim-grok-4"),
}


@dataclass
class BenchArguments:
    results_dir: str = field(default="benchmarks/results/science", metadata={"help": "JSON and markdown."})
    work_dir: str = field(default="outputs/bench-science", metadata={"help": "Checkpoints, preferences, predictions."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4],
                             metadata={"help": "Training seeds (one learn stage each)."})
    world_seed: int = field(default=0, metadata={"help": "Seed of the synthetic world (fixed across training seeds)."})
    synthetic_patients: int = field(default=600, metadata={"help": "Size of the synthetic world (600: 1,448 train "
                                    "images; see the README for why 600 and two learn epochs)."})
    test_patients: int = field(default=0, metadata={"help": "More patients, all in the test split (a larger test "
                               "set at the same training size; the first --synthetic_patients keep their splits)."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"help": f"Students: {VARIANTS}."})
    learn_config: str = field(default=str(HERE / "configs/learn_tiny.yaml"))
    critique_config: str = field(default=str(HERE / "configs/critique_tiny.yaml"))
    dpo_config: str = field(default=str(HERE / "configs/dpo_baseline_tiny.yaml"))
    learn_epochs: float | None = field(default=2.0, metadata={"help": "Learn-stage epochs (None: the learn config's, "
                                       "3); 2 on the 600-patient world keeps the steps of 3 epochs on 400 patients."})
    critique_epochs: float = field(default=1.0, metadata={"help": "APO epochs over the preference rows."})
    preference_rows: int | None = field(default=None, metadata={"help": "Preference rows per run (None: all)."})
    matched_steps: bool = field(default=True, metadata={"help": "DPO runs as many optimizer steps as APO (its pairs "
                                "are K per row, so it sees a share of them); false: one DPO epoch over all pairs."})
    learn_max_steps: int | None = field(default=None, metadata={"help": "Cap on learn steps (smoke tests)."})
    critique_max_steps: int | None = field(default=None, metadata={"help": "Cap on preference steps (smoke tests)."})
    consensus: str = field(default="vote", metadata={"help": "Compare-stage consensus: vote | dawid_skene."})
    positive_text: str = field(default="closest", metadata={"help": "Compare-stage positive: closest (the teacher "
                               "trajectory closest to the consensus) | closest-or-rendered | rendered."})
    control_positive: str = field(default="closest", metadata={"help": "Positive control's positive: closest (the "
                                  "teacher trajectory closest to the truth, in the teachers' words) | rendered (the "
                                  "truth-rendered trajectory; measured to displace the teachers' text, see the README)."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate on the first N test images (None: all)."})
    probe: bool = field(default=True, metadata={"help": "Score students with the likelihood probe too."})
    consistency_images: int = field(default=24, metadata={"help": "Images for the consistency runs (0: none)."})
    consistency_samples: int = field(default=3, metadata={"help": "Sampled runs (seeds) for sampling consistency."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the consistency runs."})
    shifted: bool = field(default=True, metadata={"help": "Evaluate on the shifted (other hospital) test set."})
    sweep: bool = field(default=True, metadata={"help": "Run the teacher-mix sweep (robustness)."})
    sweep_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Training seeds of the sweep."})
    sweep_variants: list[str] = field(default_factory=lambda: ["learn", "apo-uniform", "apo-drift"])
    batch_size: int = field(default=32, metadata={"help": "Generation batch size."})
    max_new_tokens: int = field(default=192)
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples per interval."})
    jobs: int = field(default=2, metadata={"help": "Training processes run side by side, each with cores/jobs "
                      "threads (the tiny student's steps are too small to use two cores in one process; 1: "
                      "everything in this process)."})
    report_only: bool = field(default=False, metadata={"help": "Train nothing: score the students already trained, "
                                                                    "then write the report."})


def stage_done(folder: Path) -> bool:
    """A stage is done when its final model is saved (``config.json`` at the top of its folder)."""
    return (folder / "config.json").is_file()


def model_fingerprint(folder: Path) -> str:
    """Identity of a saved model (name, size and mtime of its weight files). Scores and predictions are
    reused only for the model they were made with: a retrained student is scored again."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def resume_flag(folder: Path) -> str | None:
    """``"true"`` when a killed stage left a checkpoint to resume from."""
    return "true" if any(folder.glob("checkpoint-*")) else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def weights_differ(a: Path, b: Path) -> float:
    """Largest absolute difference between two saved models' parameters (0.0: the same model)."""
    from safetensors.torch import load_file

    wa, wb = (load_file(str(sorted(p.glob("*.safetensors"))[0])) for p in (a, b))
    return float(max((wa[k].float() - wb[k].float()).abs().max() for k in wa if k in wb))


class Bench:
    """The benchmark's state: data roots, the results dict (saved after every step) and stage runners."""

    def __init__(self, a: BenchArguments, read_results: bool = True):
        from cxr_max.synthetic import ensure_synthetic, load_truth

        bad = [v for v in list(a.variants) + list(a.sweep_variants) if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variant(s) {bad}; choose from {VARIANTS}")
        self.a = a
        self.work, self.res = Path(a.work_dir), Path(a.results_dir)
        self.res.mkdir(parents=True, exist_ok=True)
        self.root = Path(ensure_synthetic(seed=a.world_seed, n_patients=a.synthetic_patients,
                                          test_patients=a.test_patients))
        self.jpg, self.traj = str(self.root / "mimic-cxr-jpg"), str(self.root / "trajectories")
        self.truth = load_truth(self.root)
        self.results_path = self.res / "results.json"
        self.results = json.loads(self.results_path.read_text()) if read_results and self.results_path.exists() \
            else {}
        if self.results.get("format") != RESULTS_FORMAT:  # another benchmark version's results: not mixed in
            self.results = {"format": RESULTS_FORMAT}
        self.results["settings"] = asdict(a)
        self.results.setdefault("timings_s", {})
        self.results.setdefault("budget", {})
        self.t0 = time.perf_counter()

    # -- bookkeeping ------------------------------------------------------------------------------
    def save(self) -> None:
        self.results["elapsed_s_this_invocation"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.results_path.with_name(self.results_path.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=float))
        tmp.replace(self.results_path)  # atomic: a run killed while saving keeps the previous results

    def timed(self, key: str, fn, *args, **kwargs):
        from rich.console import Console

        Console().rule(f"[bold]{key}")
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.results["timings_s"][key] = round(time.perf_counter() - t, 1) + self.results["timings_s"].get(key, 0)
        return out

    # -- data: train-split preferences, controls, truth trajectories --------------------------------
    def preferences(self, mdir: Path, trajectories: str, kinds: set[str]) -> dict[str, Path]:
        """The preference folders of ``kinds`` for one teacher mix, from the train split only."""
        from cxr_max.drift import io as drift_io
        from cxr_max.drift.compare import run_compare
        from cxr_max.drift.controls import control_preferences, split_table
        from cxr_max.drift.preferences import write_preferences

        out = {}
        table = None
        for w in sorted({"uniform"} | {k for k in kinds if k in ("uniform", "drift")}):
            folder = mdir / f"compare-{w}"
            if not any(folder.glob("preferences*")):
                if table is None:
                    table = split_table(drift_io.read_trajectories(trajectories), self.truth, "train")
                run_compare(table, data_dir=self.jpg, out=folder, report_dir=folder / "drift_report",
                            consensus=self.a.consensus, positive_text=self.a.positive_text, negative_weighting=w, plots=False, progress=False)
            out[w] = folder
        for kind in ("positive", "negative"):
            if kind in kinds:
                folder = mdir / f"compare-{kind}"
                if not any(folder.glob("preferences*")):
                    rows = control_preferences(read_jsonl(out["uniform"] / "preferences.jsonl"), self.truth, kind,
                                               seed=self.a.world_seed,
                                               positive=self.a.control_positive)
                    write_preferences(rows, folder)
                out[kind] = folder
        return out

    def truth_trajectories(self) -> str:
        """The oracle's SFT data: every teacher record re-written with the truth-rendered text."""
        from cxr_max.drift.controls import write_truth_trajectories

        folder = self.work / "truth-trajectories"
        if not (folder / ".complete").exists():
            write_truth_trajectories(self.traj, self.truth, folder)
            (folder / ".complete").write_text("ok")
        return str(folder)

    def pretrained_tower(self) -> None:
        """Build the embedded student's pretrained vision tower (cached) when the learn config asks for one."""
        from cxr_max.stages import learn
        from cxr_max.stages.config import from_config as stage_args

        script, _, model = stage_args((learn.LearnArguments, learn.SFTConfig, learn.ModelConfig), self.a.learn_config,
                                      output_dir=str(self.work))
        if model.model_name_or_path is None:
            learn.tiny_vision_init(script)

    def weight_facts(self, prefs: dict[str, Path]) -> dict:
        """How far the drift-aware weights are from uniform (if they never differ, the students cannot)."""
        import numpy as np

        rows = read_jsonl(prefs["drift"] / "preferences.jsonl")
        dev = [abs(w - 1.0) for r in rows for w in r["rejected_weights"]]
        spread = [max(r["rejected_weights"]) - min(r["rejected_weights"]) for r in rows if r["rejected_weights"]]
        return {"rows": len(rows), "mean_abs_deviation_from_uniform": float(np.mean(dev)) if dev else 0.0,
                "rows_with_weight_spread_over_0.1": int(sum(s > 0.1 for s in spread)),
                "max_weight": float(max((max(r["rejected_weights"]) for r in rows), default=0.0))}

    # -- budgets ---------------------------------------------------------------------------------------
    def budget(self, prefs: Path, learn_dir: Path) -> dict:
        """Optimizer steps of an APO run over ``prefs`` and the policy tokens APO and matched-step DPO forward."""
        import yaml
        from transformers import AutoProcessor

        rows = [r for r in read_jsonl(prefs / "preferences.jsonl") if self.truth[r["dicom_id"]].split == "train"]
        if self.a.preference_rows:
            rows = rows[: self.a.preference_rows]
        cfg = yaml.safe_load(Path(self.a.critique_config).read_text())
        bs = int(cfg.get("per_device_train_batch_size", 8)) * int(cfg.get("gradient_accumulation_steps", 1))
        steps = math.ceil(len(rows) / bs) * self.a.critique_epochs
        steps = int(min(steps, self.a.critique_max_steps) if self.a.critique_max_steps else steps)
        tok = AutoProcessor.from_pretrained(learn_dir).tokenizer
        image_tokens = json.loads((learn_dir / "config.json").read_text()).get("image_seq_length", 0)
        length = {}

        def n(text: str) -> int:
            if text not in length:
                length[text] = len(tok(text)["input_ids"]) + image_tokens
            return length[text]

        apo_tokens = sum(n(r["prompt"] + r["chosen"]) + sum(n(r["prompt"] + x) for x in r["rejected"]) for r in rows)
        pairs = [(r["prompt"], r["chosen"], x) for r in rows for x in r["rejected"]]
        pair_tokens = sum(n(p + c) + n(p + x) for p, c, x in pairs)
        dpo_steps = steps if self.a.matched_steps else math.ceil(len(pairs) / bs)
        dpo_share = min(1.0, dpo_steps * bs / max(len(pairs), 1))
        apo_share = steps * bs / max(len(rows), 1)  # epochs, or less under --critique_max_steps
        return {"rows": len(rows), "pairs": len(pairs), "batch_size": bs, "apo_steps": steps, "dpo_steps": dpo_steps,
                "apo_policy_tokens": int(apo_tokens * apo_share),
                "dpo_policy_tokens": int(pair_tokens * dpo_share)}

    # -- training stages ----------------------------------------------------------------------------
    def learn(self, out: Path, seed: int, trajectories: str) -> Path:
        from cxr_max.stages import learn
        from cxr_max.stages.config import from_config as stage_args

        if not stage_done(out):
            learn.main(*stage_args((learn.LearnArguments, learn.SFTConfig, learn.ModelConfig), self.a.learn_config,
                                   output_dir=out, seed=seed, num_train_epochs=self.a.learn_epochs,
                                   max_steps=self.a.learn_max_steps, data_dir=self.jpg, trajectories=trajectories,
                                   resume_from_checkpoint=resume_flag(out)))
        return out

    def prefer(self, variant: str, out: Path, learn_dir: Path, prefs: Path, seed: int, steps: int) -> Path:
        """The preference stage of ``variant``: pairwise DPO (``dpo``) or APO (``apo-*``) from ``learn_dir``."""
        from cxr_max.stages import critique
        from cxr_max.stages import dpo as dpo_baseline
        from cxr_max.stages.config import from_config as stage_args

        if stage_done(out):
            return out
        kw = dict(output_dir=out, model_name_or_path=learn_dir, preferences=prefs, data_dir=self.jpg, seed=seed,
                  num_train_epochs=self.a.critique_epochs, max_steps=self.a.critique_max_steps,
                  max_train_samples=self.a.preference_rows, resume_from_checkpoint=resume_flag(out))
        if variant == "dpo":
            if self.a.matched_steps:
                kw["max_steps"] = steps
            dpo_baseline.main(*stage_args((critique.CritiqueArguments, dpo_baseline.DPOConfig, dpo_baseline.ModelConfig),
                                          self.a.dpo_config, **kw))
        else:
            critique.main(*stage_args((critique.CritiqueArguments, critique.APOConfig, critique.ModelConfig),
                                      self.a.critique_config, **kw))
        return out

    def students(self, base: Path, seed: int, trajectories: str, variants, prefs: dict[str, Path]) -> dict[str, Path]:
        """Train the students of ``variants`` for one seed (one shared learn stage); returns their folders.

        With ``--report_only`` nothing is trained: only the students already saved are returned."""
        if self.a.report_only:
            return {v: base / v for v in variants if stage_done(base / v)}
        tag = base.relative_to(self.work).as_posix()
        dirs = {}
        if any(v != "oracle" for v in variants):  # an oracle-only chain needs no learn stage
            learn_dir = dirs["learn"] = self.timed(f"{tag}/learn", self.learn, base / "learn", seed, trajectories)
        budget = None
        for v in variants:
            if v == "oracle":
                dirs[v] = self.timed(f"{tag}/oracle", self.learn, base / "oracle", seed, self.truth_trajectories())
            elif v != "learn":
                if budget is None:
                    budget = self.budget(prefs["uniform"], learn_dir)
                    self.results["budget"][tag] = budget
                dirs[v] = self.timed(f"{tag}/{v}", self.prefer, v, base / v, learn_dir, prefs[PREFERENCES[v]], seed,
                                     budget["apo_steps"])
        return {v: dirs[v] for v in variants}

    # -- evaluation -----------------------------------------------------------------------------------
    def eval_model(self, folder: Path, out: Path, data: runner.EvalData, *, shifted: runner.EvalData | None,
                   consistency: bool, seed: int, probe: bool = True) -> dict:
        """Generated answers scored per finding (in-domain, optionally shifted), the likelihood probe (when
        ``probe`` and ``--probe``) and the consistency runs of one student."""
        from cxr_max.evaluation.probe import finding_metrics, likelihood_scores, probe_metrics

        a = self.a
        out.mkdir(parents=True, exist_ok=True)
        gen = runner.Generator(folder, max_new_tokens=a.max_new_tokens)
        answers = runner.predict_images(gen, data.keys, data.images, out / "test.jsonl", batch_size=a.batch_size,
                                        description="test answers")
        texts = [answers[k] for k in data.keys]
        labels = runner.extract_labels(texts)
        rec = {"metrics": finding_metrics(labels, data.truths, n_boot=a.n_boot, seed=seed),
               "refusals_or_empty": sum(not t.strip() for t in texts),
               "distinct_label_sets": len({json.dumps(lab, sort_keys=True) for lab in labels})}
        if a.probe and probe:
            scores = likelihood_scores(str(folder), data.images)
            rec["probe"] = probe_metrics(scores, data.truths, n_boot=a.n_boot, seed=seed)
        if shifted is not None:
            got = runner.predict_images(gen, shifted.keys, shifted.images, out / "shifted.jsonl",
                                        batch_size=a.batch_size, description="shifted answers")
            rec["shifted"] = finding_metrics(runner.extract_labels([got[k] for k in shifted.keys]), shifted.truths,
                                             n_boot=a.n_boot, seed=seed)
        if consistency and a.consistency_images > 0:
            n = min(a.consistency_images, len(data.keys))
            keys, images, truths = data.keys[:n], data.images[:n], data.truths[:n]
            prompt_runs = [[answers[k] for k in keys]]
            for i, p in enumerate(runner.PARAPHRASES[1:], start=1):
                got = runner.predict_images(gen, keys, images, out / f"prompt{i}.jsonl", prompt=p,
                                            batch_size=a.batch_size, description=f"paraphrase {i}")
                prompt_runs.append([got[k] for k in keys])
            sample_runs = []
            for s in range(a.consistency_samples):
                got = runner.predict_images(gen, keys, images, out / f"sample{s}.jsonl", do_sample=True,
                                            temperature=a.temperature, seed=1000 * seed + s, batch_size=a.batch_size,
                                            description=f"sampling run {s}")
                sample_runs.append([got[k] for k in keys])
            rec["consistency_prompts"] = runner.agreement([runner.extract_labels(r) for r in prompt_runs], n_boot=a.n_boot)
            rec["consistency_samples"] = runner.agreement([runner.extract_labels(r) for r in sample_runs], n_boot=a.n_boot)
            rec["sampled"] = finding_metrics(runner.extract_labels(sample_runs[0]), truths, n_boot=a.n_boot, seed=seed)
        return rec

    def score(self, table: dict, key: str, folder: Path, out: Path, data, **kw) -> None:
        """``table[key] = eval_model(...)`` unless it already holds this very model's scores (same fingerprint,
        current format); stale predictions of another model under ``out`` are removed first."""
        fingerprint = model_fingerprint(folder)
        old = table.get(key, {})
        if old.get("model_fingerprint") == fingerprint and "metrics" in old:
            return
        if out.exists():
            shutil.rmtree(out)
        table[key] = self.timed(f"eval {key}", self.eval_model, folder, out, data, **kw)
        table[key]["model_fingerprint"] = fingerprint
        self.save()

    def reference_rows(self, data) -> None:
        """Teachers, the consensus (vote, Dawid-Skene) and the majority answer on the test images."""
        from cxr_max.drift import io as drift_io
        from cxr_max.drift.compare import run_compare
        from cxr_max.drift.controls import split_table
        from cxr_max.evaluation.probe import finding_metrics
        from cxr_max.synthetic import SIM_TEACHERS

        a, R = self.a, self.results
        R["teachers"] = {}
        for t in SIM_TEACHERS:
            got = runner.teacher_answers(t, data.keys, split="test", data_dir=self.jpg, trajectories=self.traj,
                                         seed=a.world_seed)
            texts = [got[k] for k in data.keys]
            R["teachers"][t] = {"metrics": finding_metrics(runner.extract_labels(texts), data.truths, n_boot=a.n_boot),
                                "refusals_or_empty": sum(not x.strip() for x in texts)}
        test = split_table(drift_io.read_trajectories(self.traj), self.truth, "test")
        R["consensus"] = {}
        for method in ("vote", "dawid_skene"):
            res = run_compare(test, data_dir=self.jpg, consensus=method, plots=False, progress=False)
            by_id = {r["dicom_id"]: r["consensus_labels"] for r in res.rows}
            pred = [by_id.get(k.split("|")[0], {}) for k in data.keys]
            R["consensus"][method] = {"metrics": finding_metrics(pred, data.truths, n_boot=a.n_boot),
                                      "images_without_consensus": sum(k.split("|")[0] not in by_id for k in data.keys)}
        calls = {}
        for f in runner.TABLE_FINDINGS:
            pos = sum(t.get(f) == 1.0 for t in data.truths)
            neg = sum(t.get(f) not in (1.0, -1.0) for t in data.truths)
            calls[f] = 1.0 if pos > neg else 0.0
        R["majority"] = {"metrics": finding_metrics([calls] * len(data.truths), data.truths, n_boot=a.n_boot)}
        self.save()

    def seed_students(self, seed: int, data, shifted, prefs) -> None:
        """Train one seed's students (shared learn stage) and evaluate them (in-domain, shifted, consistency)."""
        R, base = self.results, self.work / f"seed{seed}"
        dirs = self.students(base, seed, self.traj, self.a.variants, prefs)
        self.score_chain(dirs, base, seed, None, data, shifted)
        if "apo-uniform" in dirs and "apo-drift" in dirs:
            R.setdefault("drift_vs_uniform", {})[f"seed{seed}"] = {
                "max_parameter_difference": weights_differ(dirs["apo-uniform"], dirs["apo-drift"])}
            self.save()

    def mix_preferences(self, i: int, mix: str, teachers: tuple[str, ...]) -> tuple[Path, str, dict[str, Path]]:
        """One sweep mix: its folder, a copy of its teachers' trajectories and its train-split preferences."""
        a, R = self.a, self.results
        mdir = self.work / f"mix{i}"
        tdir = mdir / "trajectories"
        tdir.mkdir(parents=True, exist_ok=True)
        for t in teachers:  # a copy of the chosen teachers' shards (readers do not follow folder links)
            if not (tdir / t).exists():
                shutil.copytree(Path(self.traj) / t, tdir / f".{t}.tmp", dirs_exist_ok=True)
                (tdir / f".{t}.tmp").rename(tdir / t)
        need = {PREFERENCES[v] for v in a.sweep_variants if v in PREFERENCES}
        mprefs = {} if a.report_only else self.timed(f"mix{i}/compare", self.preferences, mdir, str(tdir), need)
        if "drift" in mprefs:
            R.setdefault("sweep_weights", {})[mix] = self.weight_facts(mprefs)
        return mdir, str(tdir), mprefs

    def sweep(self, data, mixes: dict) -> None:
        """Robustness: the same recipe on teacher mixes with a growing share of drifting teachers."""
        a, R = self.a, self.results
        R.setdefault("sweep", {})
        for i, mix in enumerate(MIXES):
            mdir, tdir, mprefs = mixes[i]
            for seed in a.sweep_seeds:
                base = mdir / f"seed{seed}"
                dirs = self.students(base, seed, tdir, a.sweep_variants, mprefs)
                self.score_chain(dirs, base, seed, mix, data, None)

    def score_chain(self, dirs: dict[str, Path], base: Path, seed: int, mix: str | None, data, shifted) -> None:
        """Score one chain's students: the main table (in-domain, shifted, consistency) or, for a sweep ``mix``,
        the sweep table (in-domain only)."""
        R = self.results
        for v, folder in dirs.items():
            if mix is None:
                self.score(R.setdefault("students", {}), f"{v}/seed{seed}", folder, base / "eval" / v, data,
                           shifted=shifted, consistency=True, seed=seed)
            else:
                self.score(R.setdefault("sweep", {}), f"{mix}|{v}/seed{seed}", folder, base / "eval" / v, data,
                           shifted=None, consistency=False, seed=seed, probe=False)

    # -- training side by side --------------------------------------------------------------------------
    def training_jobs(self, prefs: dict[str, Path], mixes: dict) -> list[tuple]:
        """Every student chain: ``(base, seed, trajectories, variants, prefs, mix)``; a chain is one learn stage
        and the preference students trained from it (the oracle is a chain of its own); ``mix`` names a sweep
        mix (None: the main table). Longest first (the seeds' main chains, the sweep's, then the oracles), so
        the processes finish together instead of one waiting on a long chain started last."""
        a = self.a
        chain = [v for v in a.variants if v != "oracle"]
        main = [(self.work / f"seed{seed}", seed, self.traj, chain, prefs, None) for seed in a.seeds if chain]
        sweep = [(mdir / f"seed{seed}", seed, tdir, list(a.sweep_variants), mprefs, mix)
                 for mix, (mdir, tdir, mprefs) in zip(MIXES, mixes.values()) for seed in a.sweep_seeds]
        oracles = [(self.work / f"seed{seed}", seed, self.traj, ["oracle"], prefs, None)
                   for seed in a.seeds if "oracle" in a.variants]
        return main + sweep + oracles

    def train_in_parallel(self, prefs: dict[str, Path], mixes: dict) -> None:
        """Train and score every chain in ``a.jobs`` processes (spawned, ``cores // jobs`` torch threads each);
        the stages' timings, budgets and scores come back here and are saved as each chain ends. The sequential
        pass that follows finds every stage saved and every score current, so it only fills what a failed chain
        left (a killed run resumes the same way: saved stages are never trained again)."""
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        jobs = self.training_jobs(prefs, mixes)
        if not jobs:
            return
        if "oracle" in self.a.variants:
            self.truth_trajectories()  # written once here, read by every oracle chain
        self.pretrained_tower()  # built once here with every core, not by one chain while the others wait
        threads = max(1, (os.cpu_count() or 1) // self.a.jobs)
        print(f"training {len(jobs)} student chain(s) in {self.a.jobs} processes, {threads} thread(s) each")
        with ProcessPoolExecutor(max_workers=self.a.jobs, mp_context=mp.get_context("spawn")) as pool:
            known = {t: self.results.get(t, {}) for t in ("students", "sweep")}
            futures = [pool.submit(_train_chain, asdict(self.a), threads, *job, known) for job in jobs]
            for f in as_completed(futures):
                got = f.result()
                for k, v in got["timings_s"].items():
                    self.results["timings_s"][k] = round(self.results["timings_s"].get(k, 0) + v, 1)
                self.results["budget"].update(got["budget"])
                for table in ("students", "sweep"):
                    self.results.setdefault(table, {}).update(got.get(table, {}))
                self.save()

    def eval_data(self) -> tuple:
        """The test images (and their shifted renderings, when asked for) with their truths."""
        from cxr_max.synthetic import ensure_synthetic

        a = self.a
        data = runner.load_eval_data("mimic", "test", data_dir=self.jpg, limit=a.eval_limit, seed=a.world_seed)
        shifted = None
        if a.shifted:
            sroot = Path(ensure_synthetic(seed=a.world_seed, n_patients=a.synthetic_patients, shifted_test=True,
                                          test_patients=a.test_patients, teachers=False))
            shifted = runner.load_eval_data("mimic", "test", data_dir=str(sroot / "mimic-cxr-jpg"), limit=a.eval_limit,
                                            seed=a.world_seed)
            if shifted.keys != data.keys:
                raise RuntimeError("the shifted world's test images differ from the default world's")
        return data, shifted

    def run(self) -> dict:
        a, R = self.a, self.results
        data, shifted = self.eval_data()
        R["n_test_images"] = len(data.keys)
        self.timed("teachers, consensus, majority", self.reference_rows, data)

        # compare on the train split (the world is fixed, so one set of preferences serves every seed)
        need = {PREFERENCES[v] for v in a.variants if v in PREFERENCES}
        prefs = {} if a.report_only else self.timed("compare", self.preferences, self.work, self.traj, need)
        if "drift" in prefs:
            R["weights"] = self.weight_facts(prefs)

        mixes = {}
        if a.sweep:
            for i, (mix, teachers) in enumerate(MIXES.items()):
                mixes[i] = self.mix_preferences(i, mix, teachers)
        if a.jobs > 1 and not a.report_only:
            self.train_in_parallel(prefs, mixes)

        # students of the first seed, the robustness sweep, the other seeds (in this order, so that a run
        # cut short still has every claim measured once)
        R.setdefault("students", {})
        self.seed_students(a.seeds[0], data, shifted, prefs)
        if a.sweep:
            self.sweep(data, mixes)
        for seed in a.seeds[1:]:
            self.seed_students(seed, data, shifted, prefs)
        self.save()
        return R


def _train_chain(settings: dict, threads: int, base: Path, seed: int, trajectories: str, variants: list[str],
                 prefs: dict[str, Path], mix: str | None, known: dict) -> dict:
    """One process of :meth:`Bench.train_in_parallel`: train and score a chain; returns its timings, budget
    and scores (this process never writes results.json)."""
    import torch

    torch.set_num_threads(threads)
    bench = Bench(BenchArguments(**settings), read_results=False)
    bench.save = lambda: None  # the parent saves what this returns
    bench.results.update(known)  # the scores so far, so a current score is not redone
    dirs = bench.students(base, seed, trajectories, variants, prefs)
    data, shifted = bench.eval_data()
    bench.score_chain(dirs, base, seed, mix, data, shifted if mix is None else None)
    return bench.results


def main(a: BenchArguments) -> dict:
    """Run (or continue) the benchmark, then write results.md."""
    from cxr_max.evaluation.bench_report import write_report

    bench = Bench(a)
    t = time.perf_counter()
    results = bench.run()
    results["wall_s_this_invocation"] = round(time.perf_counter() - t, 1)
    results["summary"] = write_report(results, Path(a.results_dir))
    bench.save()
    print((Path(a.results_dir) / "results.md").read_text())
    return results


if __name__ == "__main__":
    main(*TrlParser((BenchArguments,)).parse_args_and_config())

"""The drift benchmark: seven simulated drifting teachers, and students trained four ways, on the embedded data.

    python recipes/benchmark.py                                    # default CPU run (~30 min on 2 cores)
    python recipes/benchmark.py --seeds 0 1 2 3 --learn_epochs 3   # scale up (GPU)
    python recipes/benchmark.py --config my_bench.yaml             # every flag also works from YAML

For every training seed, one learn stage (SFT on the union of all teachers) is shared by four students,
all trained with the same data, budget and seed:

- ``learn``        learn only;
- ``dpo``          learn + the authors' released preference stage (pairwise DPO, uniform compare rows);
- ``apo-uniform``  learn + compare + critique (Plackett-Luce over all teachers, equal weights: the paper);
- ``apo-drift``    the same with drift-aware negative weights.

Each student and each teacher is scored on the test split (presence accuracy per finding, bootstrap CIs),
then the paper's three claims are tested: consistency (agreement of extracted findings across paraphrased
prompts and sampling seeds), robustness (a sweep over teacher mixes with a growing share of drifting
teachers) and generalisation (the same test images rendered as by another hospital). Results go to
``--results_dir`` (results.json, results.md, PNGs); checkpoints and predictions to ``--work_dir``. Every
stage's output is reused when present, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trl import TrlParser  # noqa: E402

from cxr_max.evaluation import runner  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = ("learn", "dpo", "apo-uniform", "apo-drift")
# Teacher mixes of the robustness sweep: three teachers each, a growing share with planted stream drift.
MIXES: dict[str, tuple[str, ...]] = {
    "0/3 drifting": ("sim-glm-4.5v", "sim-sonnet-4", "sim-gpt-5-nano"),
    "1/3 drifting": ("sim-glm-4.5v", "sim-sonnet-4", "sim-gemini-2.5-flash-lite"),
    "2/3 drifting": ("sim-glm-4.5v", "sim-gemini-2.5-flash-lite", "sim-grok-4"),
}


@dataclass
class BenchArguments:
    results_dir: str = field(default="benchmarks/results/science", metadata={"help": "JSON, markdown and PNGs."})
    work_dir: str = field(default="outputs/bench-science", metadata={"help": "Checkpoints, preferences, predictions."})
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "Training seeds (one learn stage each)."})
    world_seed: int = field(default=0, metadata={"help": "Seed of the synthetic world (fixed across training seeds)."})
    synthetic_patients: int = field(default=160, metadata={"help": "Size of the synthetic world."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"help": f"Students: {VARIANTS}."})
    learn_config: str = field(default=str(HERE / "configs/learn_tiny.yaml"))
    critique_config: str = field(default=str(HERE / "configs/critique_tiny.yaml"))
    dpo_config: str = field(default=str(HERE / "configs/dpo_baseline_tiny.yaml"))
    learn_epochs: float | None = field(default=None, metadata={"help": "Learn-stage epochs (None: the learn config's)."})
    critique_epochs: float = field(default=1.0, metadata={"help": "Preference-stage epochs (DPO and APO alike)."})
    preference_rows: int | None = field(default=64, metadata={"help": "Preference rows per DPO/APO run (None: all)."})
    learn_max_steps: int | None = field(default=None, metadata={"help": "Cap on learn steps (smoke tests)."})
    critique_max_steps: int | None = field(default=None, metadata={"help": "Cap on preference steps (smoke tests)."})
    consensus: str = field(default="vote", metadata={"help": "Compare-stage consensus: vote | dawid_skene."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate on the first N test images (None: all)."})
    consistency_images: int = field(default=24, metadata={"help": "Images for the consistency runs."})
    consistency_samples: int = field(default=3, metadata={"help": "Sampled runs (seeds) for sampling consistency."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the consistency runs."})
    shifted: bool = field(default=True, metadata={"help": "Evaluate on the shifted (other hospital) test set."})
    sweep: bool = field(default=True, metadata={"help": "Run the teacher-mix sweep (robustness)."})
    sweep_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Training seeds of the sweep."})
    sweep_variants: list[str] = field(default_factory=lambda: ["learn", "apo-drift"])
    batch_size: int = field(default=32, metadata={"help": "Generation batch size."})
    max_new_tokens: int = field(default=192)
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples per interval."})
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


class Bench:
    """The benchmark's state: data roots, the results dict (saved after every step) and stage runners."""

    def __init__(self, a: BenchArguments):
        from cxr_max.synthetic import ensure_synthetic

        bad = [v for v in list(a.variants) + list(a.sweep_variants) if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variant(s) {bad}; choose from {VARIANTS}")
        self.a = a
        self.work, self.res = Path(a.work_dir), Path(a.results_dir)
        self.res.mkdir(parents=True, exist_ok=True)
        self.root = Path(ensure_synthetic(seed=a.world_seed, n_patients=a.synthetic_patients))
        self.jpg, self.traj = str(self.root / "mimic-cxr-jpg"), str(self.root / "trajectories")
        self.results_path = self.res / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        self.results["settings"] = asdict(a)
        self.results.setdefault("timings_s", {})
        self.t0 = time.perf_counter()

    # -- bookkeeping ------------------------------------------------------------------------------
    def save(self) -> None:
        self.results["elapsed_s_this_invocation"] = round(time.perf_counter() - self.t0, 1)
        self.results_path.write_text(json.dumps(self.results, indent=1, default=float))

    def timed(self, key: str, fn, *args, **kwargs):
        from rich.console import Console

        Console().rule(f"[bold]{key}")
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.results["timings_s"][key] = round(time.perf_counter() - t, 1) + self.results["timings_s"].get(key, 0)
        return out

    # -- training stages ----------------------------------------------------------------------------
    def learn(self, out: Path, seed: int, trajectories: str) -> Path:
        import learn
        from apo import stage_args

        if not stage_done(out):
            learn.main(*stage_args((learn.LearnArguments, learn.SFTConfig, learn.ModelConfig), self.a.learn_config,
                                   output_dir=out, seed=seed, num_train_epochs=self.a.learn_epochs,
                                   max_steps=self.a.learn_max_steps, data_dir=self.jpg, trajectories=trajectories,
                                   resume_from_checkpoint=resume_flag(out)))
        return out

    def compare(self, out: Path, trajectories: str, weighting: str) -> Path:
        from cxr_max.drift.compare import run_compare

        if not any(out.glob("preferences*")):
            run_compare(trajectories, data_dir=self.jpg, out=out, report_dir=out / "drift_report",
                        consensus=self.a.consensus, negative_weighting=weighting)
        return out

    def prefer(self, variant: str, out: Path, learn_dir: Path, prefs: Path, seed: int) -> Path:
        """The preference stage of ``variant``: pairwise DPO (``dpo``) or APO (``apo-*``) from ``learn_dir``."""
        import critique
        import dpo_baseline
        from apo import stage_args

        if stage_done(out):
            return out
        kw = dict(output_dir=out, model_name_or_path=learn_dir, preferences=prefs, data_dir=self.jpg, seed=seed,
                  num_train_epochs=self.a.critique_epochs, max_steps=self.a.critique_max_steps,
                  max_train_samples=self.a.preference_rows, resume_from_checkpoint=resume_flag(out))
        if variant == "dpo":
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
            found = {v: base / v for v in variants if stage_done(base / v)}
            return found
        tag = base.relative_to(self.work).as_posix()
        learn_dir = self.timed(f"{tag}/learn", self.learn, base / "learn", seed, trajectories)
        dirs = {"learn": learn_dir}
        for v in variants:
            if v != "learn":
                weighting = "drift" if v == "apo-drift" else "uniform"
                dirs[v] = self.timed(f"{tag}/{v}", self.prefer, v, base / v, learn_dir, prefs[weighting], seed)
        return {v: dirs[v] for v in variants}

    # -- evaluation -----------------------------------------------------------------------------------
    def eval_model(self, folder: Path, out: Path, data: runner.EvalData, *, shifted: runner.EvalData | None,
                   consistency: bool, seed: int) -> dict:
        """Greedy accuracy (in-domain, optionally shifted) and consistency runs of one student."""
        a = self.a
        gen = runner.Generator(folder, max_new_tokens=a.max_new_tokens)
        common = dict(batch_size=a.batch_size, n_boot=a.n_boot, plots=False, generator=gen, model=str(folder))
        m = runner.evaluate(out_dir=out / "test", data=data, seed=seed, **common)
        rec = {"accuracy": m["accuracy"], "label_f1_micro": m["label_f1"]["labels_14"]["micro_f1"],
               "refusals_or_empty": m["refusals_or_empty"], "distinct_label_sets": m["distinct_label_sets"]}
        if shifted is not None:
            rec["shifted"] = runner.evaluate(out_dir=out / "shifted", data=shifted, seed=seed, **common)["accuracy"]
        if consistency:
            n = min(a.consistency_images, len(data.keys))
            sub = runner.EvalData(data.keys[:n], data.images[:n], data.truths[:n], None)
            greedy = runner.read_predictions(out / "test" / "predictions.jsonl")
            prompt_runs = [[greedy[k]["answer"] for k in sub.keys]]
            for i, p in enumerate(runner.PARAPHRASES[1:], start=1):
                got = runner.predict_images(gen, sub.keys, sub.images, out / f"prompt{i}.jsonl", prompt=p,
                                            batch_size=a.batch_size, description=f"paraphrase {i}")
                prompt_runs.append([got[k] for k in sub.keys])
            sample_runs = []
            for s in range(a.consistency_samples):
                got = runner.predict_images(gen, sub.keys, sub.images, out / f"sample{s}.jsonl", do_sample=True,
                                            temperature=a.temperature, seed=1000 * seed + s, batch_size=a.batch_size,
                                            description=f"sampling run {s}")
                sample_runs.append([got[k] for k in sub.keys])
            rec["consistency_prompts"] = runner.agreement([runner.extract_labels(r) for r in prompt_runs], n_boot=a.n_boot)
            rec["consistency_samples"] = runner.agreement([runner.extract_labels(r) for r in sample_runs], n_boot=a.n_boot)
            rec["sampled_accuracy"] = runner.presence_accuracy(runner.extract_labels(sample_runs[0]), sub.truths,
                                                               n_boot=a.n_boot)
        return rec

    def seed_students(self, seed: int, data, shifted, prefs) -> None:
        """Train one seed's students (shared learn stage) and evaluate them (in-domain, shifted, consistency)."""
        R, base = self.results, self.work / f"seed{seed}"
        dirs = self.students(base, seed, self.traj, self.a.variants, prefs)
        for v, folder in dirs.items():
            self.score(R["students"], f"{v}/seed{seed}", folder, base / "eval" / v, data, shifted=shifted,
                       consistency=True, seed=seed)

    def score(self, table: dict, key: str, folder: Path, out: Path, data, **kw) -> None:
        """``table[key] = eval_model(...)`` unless it already holds this very model's scores (same fingerprint,
        current format); stale predictions of another model under ``out`` are removed first."""
        fingerprint = model_fingerprint(folder)
        old = table.get(key, {})
        if old.get("model_fingerprint") == fingerprint and "distinct_label_sets" in old:
            return
        if out.exists():
            shutil.rmtree(out)
        table[key] = self.timed(f"eval {key}", self.eval_model, folder, out, data, **kw)
        table[key]["model_fingerprint"] = fingerprint
        self.save()

    def sweep(self, data) -> None:
        """Robustness: the same recipe on teacher mixes with a growing share of drifting teachers."""
        a, R = self.a, self.results
        R.setdefault("sweep", {})
        for i, (mix, teachers) in enumerate(MIXES.items()):
            mdir = self.work / f"mix{i}"
            tdir = mdir / "trajectories"
            tdir.mkdir(parents=True, exist_ok=True)
            for t in teachers:  # a copy of the chosen teachers' shards (readers do not follow folder links)
                if not (tdir / t).exists():
                    shutil.copytree(Path(self.traj) / t, tdir / f".{t}.tmp", dirs_exist_ok=True)
                    (tdir / f".{t}.tmp").rename(tdir / t)
            need = {"drift" if v == "apo-drift" else "uniform" for v in a.sweep_variants if v != "learn"}
            mprefs = {} if a.report_only else {
                w: self.timed(f"mix{i}/compare-{w}", self.compare, mdir / f"compare-{w}", str(tdir), w) for w in need}
            for seed in a.sweep_seeds:
                base = mdir / f"seed{seed}"
                dirs = self.students(base, seed, str(tdir), a.sweep_variants, mprefs)
                for v, folder in dirs.items():
                    self.score(R["sweep"], f"{mix}|{v}/seed{seed}", folder, base / "eval" / v, data, shifted=None,
                               consistency=False, seed=seed)

    def run(self) -> dict:
        from cxr_max.synthetic import SIM_TEACHERS, ensure_synthetic

        a, R = self.a, self.results
        data = runner.load_eval_data("mimic", "test", data_dir=self.jpg, limit=a.eval_limit, seed=a.world_seed)
        shifted = None
        if a.shifted:
            sroot = Path(ensure_synthetic(seed=a.world_seed, n_patients=a.synthetic_patients, shifted_test=True,
                                          teachers=False))
            shifted = runner.load_eval_data("mimic", "test", data_dir=str(sroot / "mimic-cxr-jpg"), limit=a.eval_limit,
                                            seed=a.world_seed)
            if shifted.keys != data.keys:
                raise RuntimeError("the shifted world's test images differ from the default world's")
        R["n_test_images"] = len(data.keys)
        R["majority_baseline"] = runner.majority_baseline(data.truths, n_boot=a.n_boot)

        # 1. teachers (their stored trajectories; the simulator reads the truth, not pixels, so no shifted run)
        R.setdefault("teachers", {})
        for t in SIM_TEACHERS:
            if t not in R["teachers"]:
                m = runner.evaluate(teacher=t, out_dir=self.work / "eval" / "teachers" / t, data=data,
                                    data_dir=self.jpg, trajectories=self.traj, seed=a.world_seed, n_boot=a.n_boot,
                                    plots=False)
                R["teachers"][t] = {"accuracy": m["accuracy"], "refusals_or_empty": m["refusals_or_empty"],
                                    "label_f1_micro": m["label_f1"]["labels_14"]["micro_f1"]}
                self.save()

        # 2. compare (the world is fixed, so one set of preferences serves every seed)
        prefs = {} if a.report_only else {
            w: self.timed(f"compare-{w}", self.compare, self.work / f"compare-{w}", self.traj, w) for w in ("uniform", "drift")}

        # 3. students of the first seed, 4. the robustness sweep, 5. the other seeds (in this order, so that a
        # run cut short still has every claim measured once)
        R.setdefault("students", {})
        self.seed_students(a.seeds[0], data, shifted, prefs)
        if a.sweep:
            self.sweep(data)
        for seed in a.seeds[1:]:
            self.seed_students(seed, data, shifted, prefs)
        self.save()
        return R


def main(a: BenchArguments) -> dict:
    """Run (or continue) the benchmark, then write results.md and the PNGs."""
    bench = Bench(a)
    results = bench.run()
    summary = runner.write_benchmark_report(results, Path(a.results_dir))
    results["summary"] = summary
    bench.save()
    print((Path(a.results_dir) / "results.md").read_text())
    return results


if __name__ == "__main__":
    main(*TrlParser((BenchArguments,)).parse_args_and_config())

"""The drift benchmark's summary and ``results.md`` (from the ``results.json`` of ``recipes/benchmark.py``).

Everything here is arithmetic over stored scores (no model is loaded), so it is tested on hand-made results.
Students are averaged over training seeds (95 % t-interval over seeds); each seed's score has its own
bootstrap interval over images, whose mean bounds are shown beside. The checks compare seed means:

- ``oracle_margin``: oracle student minus the best teacher, per finding (the target is >= .05);
- ``consensus_margin``: each consensus minus the best teacher, per finding;
- ``vs_learn``: every student minus learn-only, paired by seed (the positive control must be clearly
  above: its paired interval above 0; the negative control must not be: its mean not above 0);
- ``disagreements``: where the generated answers and the likelihood probe rank a student against
  learn-only differently, or read a finding more than .10 apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_max.evaluation.probe import TABLE_FINDINGS
from cxr_max.evaluation.runner import mean_interval

SHORT = {"Consolidation": "Con.", "Pleural Effusion": "PE", "Pneumothorax": "Pnx.", "Edema": "Ede.",
         "Cardiomegaly": "Card.", "Atelectasis": "Atel.", "Avg": "Avg"}
LABELS = {"learn": "student, learn only", "dpo": "student, learn + pairwise DPO",
          "apo-uniform": "student, APO uniform", "apo-drift": "student, APO drift-aware",
          "apo-positive": "positive control (APO, truth positive)",
          "apo-negative": "negative control (APO, random-teacher positive)",
          "oracle": "oracle student (learn on the truth)"}


def _value(rec: Mapping | None, finding: str, metric: str = "balanced_accuracy", part: str = "metrics") -> float:
    try:
        v = rec[part][finding][metric]
        return float(v["value"] if isinstance(v, Mapping) else v)
    except (KeyError, TypeError):
        return float("nan")


def by_variant(table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"learn/seed0": rec}`` -> ``{"learn": {"seed0": rec}}`` (sweep keys keep their ``mix|`` prefix)."""
    out: dict[str, dict[str, Any]] = {}
    for key, rec in table.items():
        name, _, seed = key.rpartition("/")
        out.setdefault(name, {})[seed] = rec
    return out


def seed_summary(recs: Mapping[str, Any], findings: Sequence[str], part: str = "metrics",
                 metrics: Sequence[str] = ("balanced_accuracy", "accuracy", "macro_f1")) -> dict:
    """Seed mean [t-interval] and mean bootstrap bounds per finding and metric."""
    out: dict[str, Any] = {}
    for f in list(findings) + ["Avg"]:
        out[f] = {}
        for m in metrics:
            vals = [_value(r, f, m, part) for r in recs.values()]
            cell = mean_interval(vals, bounds=(0.0, 1.0))
            lows, highs = [], []
            for r in recs.values():
                try:
                    lows.append(r[part][f][m]["ci_low"])
                    highs.append(r[part][f][m]["ci_high"])
                except (KeyError, TypeError):
                    pass
            with warnings.catch_warnings():  # a finding without positives has NaN bounds in every seed
                warnings.simplefilter("ignore", RuntimeWarning)
                cell["boot_low"] = float(np.nanmean(lows)) if lows else float("nan")
                cell["boot_high"] = float(np.nanmean(highs)) if highs else float("nan")
            out[f][m] = cell
    return out


def paired(recs: Mapping[str, Any], base: Mapping[str, Any], finding: str = "Avg", part: str = "metrics") -> dict:
    """Mean over shared seeds of (student - base) balanced accuracy, with a t-interval over seeds."""
    seeds = sorted(set(recs) & set(base))
    diffs = [_value(recs[s], finding, part=part) - _value(base[s], finding, part=part) for s in seeds]
    return mean_interval(diffs)


def summarize(results: Mapping[str, Any], findings: Sequence[str] = TABLE_FINDINGS) -> dict[str, Any]:
    """The summary dict written next to results.json (see the module docstring)."""
    students = by_variant(results.get("students", {}))
    teachers = results.get("teachers", {})
    s: dict[str, Any] = {"students": {}, "checks": {}, "claims": {}}
    for v, recs in students.items():
        s["students"][v] = {"seeds": len(recs), "generated": seed_summary(recs, findings)}
        if any("probe" in r for r in recs.values()):
            s["students"][v]["probe"] = seed_summary(recs, findings, part="probe", metrics=("balanced_accuracy", "auc"))
        if any("shifted" in r for r in recs.values()):
            s["students"][v]["shifted"] = seed_summary(recs, findings, part="shifted", metrics=("balanced_accuracy",))
        for c in ("consistency_prompts", "consistency_samples"):
            vals = [r[c]["value"] for r in recs.values() if c in r]
            if vals:
                s["students"][v][c] = mean_interval(vals, bounds=(0.0, 1.0))
    best = {f: max(((t, _value(r, f)) for t, r in teachers.items()), key=lambda x: np.nan_to_num(x[1], nan=-1))
            for f in list(findings) + ["Avg"]} if teachers else {}
    s["best_teacher"] = {f: {"teacher": t, "balanced_accuracy": v} for f, (t, v) in best.items()}
    if "oracle" in s["students"] and best:
        g = s["students"]["oracle"]["generated"]
        margin = {f: g[f]["balanced_accuracy"]["value"] - best[f][1] for f in findings}
        s["checks"]["oracle_margin"] = {"per_finding": margin, "target": 0.05,
                                        "met": bool(all(m >= 0.05 for m in margin.values())),
                                        "findings_missed": [f for f, m in margin.items() if not m >= 0.05]}
    for method, rec in results.get("consensus", {}).items():
        if best:
            margin = {f: _value(rec, f) - best[f][1] for f in findings}
            s["checks"][f"consensus_margin_{method}"] = {"per_finding": margin,
                                                         "above_on_every_finding": bool(all(m > 0 for m in margin.values()))}
    if "learn" in students:
        vs = {}
        for v, recs in students.items():
            if v == "learn":
                continue
            d = paired(recs, students["learn"])
            d["probe"] = paired(recs, students["learn"], part="probe") if "probe" in s["students"][v] else None
            vs[v] = d
        s["checks"]["vs_learn"] = vs
        if "apo-positive" in vs:
            s["checks"]["positive_control_beats_learn"] = bool(vs["apo-positive"]["ci_low"] > 0
                                                               if vs["apo-positive"]["n"] > 1
                                                               else vs["apo-positive"]["value"] > 0)
        if "apo-negative" in vs:
            s["checks"]["negative_control_not_above_learn"] = bool(not vs["apo-negative"]["value"] > 0)
        flags = []
        for v, d in vs.items():
            pr = d.get("probe")
            if pr and np.isfinite(pr["value"]) and abs(d["value"]) > 0.01 and abs(pr["value"]) > 0.01 \
                    and np.sign(d["value"]) != np.sign(pr["value"]):
                flags.append(f"{v} vs learn: generated answers {d['value']:+.3f}, likelihood probe {pr['value']:+.3f}")
        for v, st in s["students"].items():
            if "probe" not in st:
                continue
            for f in findings:
                g, p = st["generated"][f]["balanced_accuracy"]["value"], st["probe"][f]["balanced_accuracy"]["value"]
                if abs(g - p) > 0.10:
                    flags.append(f"{v} on {f}: generated {g:.2f}, probe {p:.2f}")
        s["checks"]["disagreements"] = flags
    sweep = by_variant(results.get("sweep", {}))
    rob: dict[str, dict[str, Any]] = {}
    for key, recs in sweep.items():
        mix, _, v = key.partition("|")
        rob.setdefault(v, {})[mix] = mean_interval([_value(r, "Avg") for r in recs.values()], bounds=(0.0, 1.0))
    s["claims"]["robustness"] = rob
    s["claims"]["generalisation"] = {
        v: {"in_domain": st["generated"]["Avg"]["balanced_accuracy"]["value"],
            "shifted": st["shifted"]["Avg"]["balanced_accuracy"]["value"]}
        for v, st in s["students"].items() if "shifted" in st}
    s["claims"]["consistency"] = {v: {c: st[c]["value"] for c in ("consistency_prompts", "consistency_samples")
                                      if c in st} for v, st in s["students"].items()}
    return s


def _f(x: float) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.2f}".replace("0.", ".", 1) if x >= 0 else f"{x:.2f}"


def markdown(results: Mapping[str, Any], s: Mapping[str, Any], findings: Sequence[str] = TABLE_FINDINGS) -> str:
    cols = list(findings) + ["Avg"]
    head = "| model | " + " | ".join(SHORT.get(c, c) for c in cols) + " |\n" + "|---" * (len(cols) + 1) + "|\n"
    n = results.get("n_test_images", "?")
    out = [f"# Drift benchmark ({n} test images)", "",
           "## Balanced accuracy per finding (image-blind answer = .50)", "",
           "Teachers, consensus and majority: one value; students: mean over training seeds.", "", head.rstrip()]

    def row(name: str, vals: Sequence[float], bold: bool = False) -> None:
        label = f"**{name}**" if bold else name
        out.append(f"| {label} | " + " | ".join(_f(v) for v in vals) + " |")

    for t, rec in results.get("teachers", {}).items():
        row(t, [_value(rec, c) for c in cols])
    for method, rec in results.get("consensus", {}).items():
        row(f"consensus ({method})", [_value(rec, c) for c in cols])
    if "majority" in results:
        row("majority answer (image-blind)", [_value(results["majority"], c) for c in cols])
    for v in LABELS:
        if v in s["students"]:
            g = s["students"][v]["generated"]
            row(f"{LABELS[v]} ({s['students'][v]['seeds']} seeds)", [g[c]["balanced_accuracy"]["value"] for c in cols],
                bold=v not in ("oracle", "apo-positive", "apo-negative"))
    out += ["", "## Students: Avg over the six findings", "",
            "| student | balanced acc. [seed interval] | image bootstrap | accuracy | macro-F1 | probe balanced acc. "
            "| probe AUC | shifted balanced acc. | consistency prompts / samples |",
            "|---|---|---|---|---|---|---|---|---|"]
    for v in LABELS:
        st = s["students"].get(v)
        if not st:
            continue
        g = st["generated"]["Avg"]
        b = g["balanced_accuracy"]
        pr = st.get("probe", {}).get("Avg", {})
        sh = st.get("shifted", {}).get("Avg", {}).get("balanced_accuracy", {})
        cons = f"{_f(st.get('consistency_prompts', {}).get('value'))} / {_f(st.get('consistency_samples', {}).get('value'))}"
        out.append(f"| {v} | {_f(b['value'])} [{_f(b['ci_low'])}, {_f(b['ci_high'])}] | "
                   f"[{_f(b['boot_low'])}, {_f(b['boot_high'])}] | {_f(g['accuracy']['value'])} | "
                   f"{_f(g['macro_f1']['value'])} | {_f(pr.get('balanced_accuracy', {}).get('value'))} | "
                   f"{_f(pr.get('auc', {}).get('value'))} | {_f(sh.get('value'))} | {cons} |")
    c = s["checks"]
    out += ["", "## Checks", ""]
    if "oracle_margin" in c:
        m = c["oracle_margin"]
        out.append("- oracle minus best teacher (target >= .05): " + ", ".join(
            f"{SHORT[f]} {m['per_finding'][f]:+.2f}" for f in findings) + (" -- met" if m["met"] else
                                                                            f" -- missed on {', '.join(m['findings_missed'])}"))
    for k in [k for k in c if k.startswith("consensus_margin_")]:
        m = c[k]
        out.append(f"- consensus ({k.removeprefix('consensus_margin_')}) minus best teacher: " + ", ".join(
            f"{SHORT[f]} {m['per_finding'][f]:+.2f}" for f in findings))
    for v, d in c.get("vs_learn", {}).items():
        pr = d.get("probe")
        out.append(f"- {v} minus learn (Avg balanced acc., paired over {d['n']} seeds): {d['value']:+.3f} "
                   f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" + (f"; probe {pr['value']:+.3f}" if pr else ""))
    if "positive_control_beats_learn" in c:
        out.append(f"- positive control clearly above learn-only: {'yes' if c['positive_control_beats_learn'] else 'NO'}")
    if "negative_control_not_above_learn" in c:
        out.append(f"- negative control not above learn-only: {'yes' if c['negative_control_not_above_learn'] else 'NO'}")
    for flag in c.get("disagreements", []):
        out.append(f"- generated vs probe disagree: {flag}")
    w = results.get("weights")
    if w:
        out.append(f"- drift-aware weights: mean |w - 1| {w['mean_abs_deviation_from_uniform']:.3f}, "
                   f"{w['rows_with_weight_spread_over_0.1']} of {w['rows']} rows with a spread > .1, max {w['max_weight']:.2f}")
    for seed, d in results.get("drift_vs_uniform", {}).items():
        out.append(f"- apo-drift vs apo-uniform, {seed}: largest parameter difference {d['max_parameter_difference']:.2e}")
    for tag, b in results.get("budget", {}).items():
        out.append(f"- budget {tag}: {b['rows']} preference rows, APO {b['apo_steps']} steps / "
                   f"{b['apo_policy_tokens']:,} policy tokens; DPO {b['dpo_steps']} steps over {b['pairs']} pairs / "
                   f"{b['dpo_policy_tokens']:,} policy tokens")
    rob = s["claims"]["robustness"]
    if rob:
        mixes = sorted({m for d in rob.values() for m in d})
        out += ["", "## Robustness (Avg balanced accuracy by teacher mix)", "",
                "| student | " + " | ".join(mixes) + " |", "|---" * (len(mixes) + 1) + "|"]
        for v, d in rob.items():
            out.append(f"| {v} | " + " | ".join(_f(d.get(m, {}).get("value")) for m in mixes) + " |")
        for mix, wf in results.get("sweep_weights", {}).items():
            out.append(f"\n{mix}: drift weights mean |w - 1| {wf['mean_abs_deviation_from_uniform']:.3f}, "
                       f"{wf['rows_with_weight_spread_over_0.1']} of {wf['rows']} rows with a spread > .1")
    t = results.get("timings_s", {})
    if t:
        out += ["", f"Stage time: {sum(t.values()) / 60:.1f} min in all (results.json: timings_s)."]
    return "\n".join(out) + "\n"


def plot_rows(results: Mapping[str, Any], s: Mapping[str, Any], findings: Sequence[str] = TABLE_FINDINGS) -> dict:
    """The bars of ``balanced_accuracy.png``: best teacher, consensus, majority (one value each; the best
    teacher is taken per finding) and each student (seed mean with its t-interval over seeds)."""
    cols = list(findings) + ["Avg"]
    one = lambda v: {"value": v, "ci_low": v, "ci_high": v}  # noqa: E731
    rows: dict[str, dict] = {}
    if s.get("best_teacher"):
        rows["best teacher (per finding)"] = {c: one(s["best_teacher"][c]["balanced_accuracy"]) for c in cols}
    for method, rec in results.get("consensus", {}).items():
        rows[f"consensus ({method})"] = {c: one(_value(rec, c)) for c in cols}
    if "majority" in results:
        rows["majority answer"] = {c: one(_value(results["majority"], c)) for c in cols}
    for v in LABELS:
        if v in s["students"]:
            g = s["students"][v]["generated"]
            rows[f"student: {v}"] = {c: g[c]["balanced_accuracy"] for c in cols}
    return rows


def write_report(results: Mapping[str, Any], out_dir: str | Path, findings: Sequence[str] = TABLE_FINDINGS) -> dict:
    """Write ``results.md`` and ``balanced_accuracy.png`` under ``out_dir``; returns the summary dict."""
    from cxr_max.evaluation.plots import plot_finding_bars

    s = summarize(results, findings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(results, s, findings))
    rows = plot_rows(results, s, findings)
    if rows:
        plot_finding_bars(rows, out / "balanced_accuracy.png", findings=findings, ylabel="balanced accuracy",
                          title="Balanced accuracy per finding (students: seed mean, t-interval over seeds)")
    return s

"""Measure the rule-based labeler (cxr_max.evaluation.label_report) on real and synthetic report text.

1. **Real text: IU-Xray (Open-i) reports.** 3,955 report XMLs ship inside the ``torchxrayvision``
   wheel (``torchxrayvision/data/NLMCXR_reports.tgz``, licence CC BY-NC-ND 4.0). torchxrayvision must
   NOT be installed (it pulls torchvision); this script only reads the wheel as a zip. Explicit step,
   run once (the package index is reachable)::

       .venv/bin/pip download torchxrayvision==1.5.7 --no-deps -d ~/.cache/cxr_max/wheels

   (or pass ``--download`` to let this script run exactly that command). The FINDINGS and
   IMPRESSION sections are labelled; the radiologists' MeSH "major" tags are the weak truth, mapped
   to CheXpert labels by :data:`MESH_TO_CHEXPERT` below (tags are positive-only: a label is true when
   a mapped tag is present, false otherwise; No Finding is true when the only tag is "normal").
   Reports tagged only "No Indexing" are left out. Laterality is checked where the tag names a side.
   In the same run a plain keyword + negation baseline (:func:`baseline_label`) is scored with the
   labeler, per label with support >= 20 (on all reports), precision/recall/F1 under both uncertainty
   policies, on the development half (odd report numbers: the only half whose errors may be read while
   writing rules), the held-out half (even numbers: scored, never read) and all reports. Every label,
   split and policy where the labeler's F1 is not above the baseline's is listed in
   ``labeler_loses_or_ties`` (the target is an empty list). For Pneumonia and Lung Lesion, whose
   CheXpert phrase lists are wider than what the indexers tag ("infection", "nodular opacity"), the
   uncertain-as-positive false positives are broken down per split (:func:`convention_errors`).
2. **Synthetic reports** (cxr_max.synthetic): the per-study reports against the world's CheXpert CSV
   (four states: 1 / 0 / -1 / not mentioned), and the simulated teachers' raw completions
   ("<think> ... </think>The disease of this patient is X.") against the labels and laterality each
   teacher asserted.

Per-label precision/recall of "positive" are printed for two conventions (strict: only 1.0 is
positive; lenient: uncertain counts as positive), and written to benchmarks/results/labeler.json.
Set CXR_MAX_CACHE to a folder of your own to build the synthetic part in a private world.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import track
from rich.table import Table

from cxr_max.evaluation import label_report_full
from cxr_max.evaluation.labeler import clause_statuses, clauses
from cxr_max.evaluation.clinical import label_f1
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS

WHEEL = "torchxrayvision-1.5.7-py3-none-any.whl"
TGZ = "torchxrayvision/data/NLMCXR_reports.tgz"
RESULTS = Path(__file__).parent / "results" / "labeler.json"
console = Console()

# MeSH "major" tag (first part, lower case) -> CheXpert label; optional qualifier that must also appear.
MESH_TO_CHEXPERT: dict[str, list[tuple[str, str | None]]] = {
    "Atelectasis": [("pulmonary atelectasis", None)],
    "Cardiomegaly": [("cardiomegaly", None), ("cardiac shadow", "enlarged"), ("heart", "enlarged")],
    "Consolidation": [("consolidation", None)],
    "Edema": [("pulmonary edema", None), ("pulmonary congestion", None)],
    "Enlarged Cardiomediastinum": [("mediastinum", "prominent"), ("mediastinum", "enlarged"), ("mediastinum", "widened")],
    "Fracture": [("fractures, bone", None)],
    "Lung Lesion": [("nodule", None), ("mass", None)],
    "Lung Opacity": [("opacity", None), ("airspace disease", None), ("infiltrate", None), ("density", "lung"),
                     ("markings", "interstitial"), ("lung diseases, interstitial", None), ("pulmonary fibrosis", None),
                     ("cicatrix", "lung")],
    "Pleural Effusion": [("pleural effusion", None), ("costophrenic angle", "blunted")],
    "Pleural Other": [("thickening", "pleura"), ("cicatrix", "pleura")],
    "Pneumonia": [("pneumonia", None)],
    "Pneumothorax": [("pneumothorax", None)],
    "Support Devices": [("catheters, indwelling", None), ("implanted medical device", None), ("tube, inserted", None),
                        ("medical device", None), ("stents", None), ("surgical instruments", None), ("sutures", None)],
}


def _tag_labels(tags: list[str]) -> tuple[dict, dict]:
    labels: dict[str, float | None] = {n: 0.0 for n in CHEXPERT_LABELS}
    sides: dict[str, str | None] = {n: None for n in LATERAL_FINDINGS}
    for tag in tags:
        parts = [p.strip().lower() for p in tag.split("/")]
        for name, rules in MESH_TO_CHEXPERT.items():
            if any(parts[0] == term and (qual is None or qual in parts[1:]) for term, qual in rules):
                labels[name] = 1.0
                if name in sides:
                    side = next((s for s in ("bilateral", "left", "right") if s in parts[1:]), None)
                    sides[name] = side or sides[name]
    labels["No Finding"] = 1.0 if [t.lower() for t in tags] == ["normal"] else 0.0
    return labels, sides


def read_iu_xray(wheel_dir: Path) -> list[dict]:
    """IU-Xray reports from the wheel: [{"id", "text", "tags"}], FINDINGS + IMPRESSION only."""
    with zipfile.ZipFile(wheel_dir / WHEEL) as z:
        tgz = z.read(TGZ)
    out = []
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            root = ET.parse(tar.extractfile(member)).getroot()
            sections = {a.get("Label"): (a.text or "") for a in root.iter("AbstractText")}
            text = "\n".join(f"{k}: {sections[k]}" for k in ("FINDINGS", "IMPRESSION") if sections.get(k))
            tags = [e.text for e in root.find("MeSH") if e.tag == "major" and e.text]
            out.append({"id": member.name, "text": text, "tags": tags})
    return out


def _pr_table(title: str, preds: list[dict], truth: list[dict], labels=CHEXPERT_LABELS) -> dict:
    strict = label_f1(preds, truth, labels=labels, uncertain="negative", n_boot=200)
    lenient = label_f1(preds, truth, labels=labels, uncertain="positive", n_boot=200)
    table = Table(title=title)
    for col in ("label", "support", "P strict", "R strict", "P unc+", "R unc+"):
        table.add_column(col, justify="right" if col != "label" else "left")
    per = {}
    for name in labels:
        s, l_ = strict["per_label"][name], lenient["per_label"][name]
        per[name] = {"support": s["support"], "precision_strict": s["precision"], "recall_strict": s["recall"],
                     "precision_uncertain_positive": l_["precision"], "recall_uncertain_positive": l_["recall"]}
        table.add_row(name, str(s["support"]), f"{s['precision']:.3f}", f"{s['recall']:.3f}",
                      f"{l_['precision']:.3f}", f"{l_['recall']:.3f}")
    console.print(table)
    summary = {"micro_f1_strict": strict["micro_f1"], "macro_f1_strict": strict["macro_f1"],
               "micro_f1_uncertain_positive": lenient["micro_f1"], "macro_f1_uncertain_positive": lenient["macro_f1"]}
    console.print({k: round(v["value"], 3) for k, v in summary.items()})
    return {"n": len(preds), "per_label": per, **summary}


# A plain keyword + negation baseline (NegEx-lite): what a rule labeler has to beat on real text.
BASELINE_TERMS: dict[str, str] = {
    "Atelectasis": r"atelecta\w*", "Cardiomegaly": r"cardiomegaly|enlarged (?:heart|cardiac)|heart is enlarged",
    "Consolidation": r"consolidat\w*", "Edema": r"edema|vascular congestion", "Fracture": r"fractures?",
    "Enlarged Cardiomediastinum": r"widened mediastinum|mediastinal widening|enlarged mediastinum",
    "Lung Lesion": r"nodules?|mass|lesions?", "Lung Opacity": r"opacit\w*|infiltrates?|densit\w*",
    "Pleural Effusion": r"effusions?", "Pleural Other": r"pleural thickening", "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothorax", "Support Devices": r"tubes?|catheters?|pacemaker|lines?|wires?",
}
_BASE_RX = {k: re.compile(r"\b(?:" + v + r")\b") for k, v in BASELINE_TERMS.items()}
_BASE_NEG = re.compile(r"\b(?:no|not|without|negative for|free of)\b")
_BASE_UNC = re.compile(r"\b(?:may|might|possible|possibly|likely|probable|suggest\w*|versus|questionable)\b")


def baseline_label(text: str) -> dict[str, float | None]:
    """Keyword + negation: a label is negative when "no/not/without/..." precedes its keyword in the
    sentence, uncertain when a hedge word is in the sentence, else positive; positive > uncertain > negative."""
    labels: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
    rank = {None: 0, 0.0: 1, -1.0: 2, 1.0: 3}
    for sentence in re.split(r"[.;\n]", text.lower()):
        for name, rx in _BASE_RX.items():
            for m in rx.finditer(sentence):
                v = 0.0 if _BASE_NEG.search(sentence, 0, m.start()) else -1.0 if _BASE_UNC.search(sentence) else 1.0
                labels[name] = v if rank[v] > rank[labels[name]] else labels[name]
    findings = [labels[n] for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    labels["No Finding"] = None if any(v in (1.0, -1.0) for v in findings) else 1.0
    return labels


def report_number(report_id: str) -> int:
    """The number of an IU-Xray report file ("ecgen-radiology/123.xml" -> 123)."""
    m = re.search(r"(\d+)\.xml$", report_id)
    if m is None:
        raise ValueError(f"unexpected IU-Xray member name {report_id!r}")
    return int(m.group(1))


def _scores(preds: list[dict], truth: list[dict], labels, uncertain: str) -> dict[str, dict]:
    res = label_f1(preds, truth, labels=labels, uncertain=uncertain, n_boot=200)
    out = {n: {"support": v["support"], "precision": v["precision"], "recall": v["recall"], "f1": v["f1"]["value"],
               "f1_ci": [v["f1"]["ci_low"], v["f1"]["ci_high"]]} for n, v in res["per_label"].items()}
    out["_micro_f1"], out["_macro_f1"] = res["micro_f1"], res["macro_f1"]
    return out


def compare_on(name: str, reports: list[dict], labeler_preds: list[dict], baseline_preds: list[dict],
               truth: list[dict], labels) -> dict:
    """Per-label precision/recall/F1 of the baseline and the labeler on one split, both policies."""
    out: dict = {"n": len(reports)}
    for policy in ("positive", "negative"):
        base, lab = (_scores(p, truth, labels, policy) for p in (baseline_preds, labeler_preds))
        table = Table(title=f"IU-Xray {name} (n={len(reports)}), uncertain as {policy}")
        for col in ("label", "support", "base P", "base R", "base F1", "labeler P", "labeler R", "labeler F1", "beats"):
            table.add_column(col, justify="left" if col == "label" else "right")
        for n in labels:
            b, l_ = base[n], lab[n]
            table.add_row(n, str(l_["support"]), *(f"{b[k]:.3f}" for k in ("precision", "recall", "f1")),
                          *(f"{l_[k]:.3f}" for k in ("precision", "recall", "f1")), "yes" if l_["f1"] > b["f1"] else "NO")
        console.print(table)
        micro = {k: {"baseline": base.pop(f"_{k}"), "labeler": lab.pop(f"_{k}")} for k in ("micro_f1", "macro_f1")}
        console.print({k: {m: round(v[m]["value"], 3) for m in v} for k, v in micro.items()})
        out[f"uncertain_{policy}"] = {"baseline": base, "labeler": lab, **micro,
                                      "labeler_beats_baseline": {n: lab[n]["f1"] > base[n]["f1"] for n in labels}}
    return out


# The findings where the CheXpert labeler's phrase list is wider than what IU-Xray's indexers tag: for each,
# the words that name the finding itself; the rest of its lexicon is CheXpert's convention ("infection",
# "infectious process" are Pneumonia; "nodular opacity", "nodular density" are Lung Lesion).
CONVENTION_SPLITS: dict[str, tuple[str, re.Pattern[str]]] = {
    "Pneumonia": ("infection, infectious (process)", re.compile(r"\b(?:pneumonias?|bronchopneumonia|pneumonitis|pna)\b")),
    "Lung Lesion": ("nodular opacity/density", re.compile(
        r"\b(?:nodules?|masse?s?|mass-like|tumou?rs?|lesions?|carcinomas?|neoplasm\w*|cancer|lump)\b")),
}


def convention_errors(label: str, texts: list[str], preds: list[dict], baseline: list[dict], truth: list[dict]) -> dict:
    """One label under uncertain-as-positive, where the labeler and the MeSH tags disagree: false positives
    by what carries them (hedged or asserted; a clause naming the finding itself, or only the rest of the
    CheXpert lexicon, e.g. only "infection" for Pneumonia), false negatives, the baseline's errors, and, as
    a diagnosis of the gap (not the labeler's score), the labeler's F1 if only clauses that name the
    finding itself were read."""
    other, core = CONVENTION_SPLITS[label]
    fp = {"hedged, names the finding": 0, "asserted, names the finding": 0,
          "hedged, convention phrase only": 0, "asserted, convention phrase only": 0}
    out = {"convention_phrases": other, "labeler_fn": 0, "baseline_fp": 0, "baseline_fn": 0,
           "tp_carried_only_by_convention_phrases": 0}
    tp_c = fp_c = fn_c = 0
    for text, p, b, t in zip(texts, preds, baseline, truth):
        pos, true = p[label] in (1.0, -1.0), t[label] == 1.0
        out["baseline_fp"] += b[label] in (1.0, -1.0) and not true
        out["baseline_fn"] += b[label] not in (1.0, -1.0) and true
        named = pos and any(core.search(c) for c in clauses(text)
                            if any(v in (1.0, -1.0) for v in clause_statuses(c, label)))
        tp_c += named and true
        fp_c += named and not true
        fn_c += true and not named
        if pos and not true:
            fp[("hedged, " if p[label] == -1.0 else "asserted, ") + ("names the finding" if named else "convention phrase only")] += 1
        elif pos and true and not named:
            out["tp_carried_only_by_convention_phrases"] += 1
        elif true and not pos:
            out["labeler_fn"] += 1
    out["labeler_fp"] = fp
    out["f1_if_convention_phrases_were_not_read"] = 2 * tp_c / (2 * tp_c + fp_c + fn_c) if tp_c else 0.0
    return out


def bench_iu(wheel_dir: Path, min_support: int = 20) -> dict:
    """Labeler vs the keyword baseline on IU-Xray against MeSH, on the development half (odd report
    numbers: the only half the labeler's rules were tuned on), the held-out half (even) and all."""
    reports = [r for r in read_iu_xray(wheel_dir) if r["text"].strip() and r["tags"] and r["tags"] != ["No Indexing"]]
    t0 = time.perf_counter()
    results = [label_report_full(r["text"]) for r in track(reports, description="labelling IU-Xray")]
    elapsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline = [baseline_label(r["text"]) for r in reports]
    elapsed_base = time.perf_counter() - t0
    truth, sides = zip(*(_tag_labels(r["tags"]) for r in reports))
    support = {n: sum(t[n] == 1.0 for t in truth) for n in CHEXPERT_LABELS}
    labels = [n for n in CHEXPERT_LABELS if support[n] >= min_support]
    out: dict = {"n": len(reports), "labels_compared": labels, "min_support": min_support, "support_all": support}
    preds = [r.labels for r in results]
    for split, keep in (("development (odd ids)", lambda i: i % 2 == 1), ("held-out (even ids)", lambda i: i % 2 == 0),
                        ("all", lambda i: True)):
        idx = [j for j, r in enumerate(reports) if keep(report_number(r["id"]))]
        out[split.split()[0]] = compare_on(split, [reports[j] for j in idx], [preds[j] for j in idx],
                                           [baseline[j] for j in idx], [truth[j] for j in idx], labels)
        out[split.split()[0]]["uncertain_positive_errors"] = {}
        for name in CONVENTION_SPLITS:
            errors = convention_errors(name, [reports[j]["text"] for j in idx], [preds[j] for j in idx],
                                       [baseline[j] for j in idx], [truth[j] for j in idx])
            out[split.split()[0]]["uncertain_positive_errors"][name] = errors
            console.print(f"{name} (unc+) on {split}: {errors}")
    losses = [f"{split}/{policy}/{n}" for split in ("development", "held-out", "all")
              for policy in ("positive", "negative")
              for n, ok in out[split][f"uncertain_{policy}"]["labeler_beats_baseline"].items() if not ok]
    out["labeler_loses_or_ties"] = losses
    out["labeler_beats_baseline_everywhere"] = not losses
    console.print(("[green]labeler beats the baseline on every label, split and policy" if not losses else
                   f"[red]labeler does not beat the baseline on: {', '.join(losses)}"))
    agree = total = 0
    for res, side in zip(results, sides):
        for name in LATERAL_FINDINGS:
            if side[name] and res.laterality[name]:
                total += 1
                agree += res.laterality[name] == side[name]
    out["laterality_agreement"] = {"agree": agree, "compared": total, "rate": agree / total if total else None}
    out["seconds_labeler"], out["seconds_baseline"] = elapsed, elapsed_base
    out["mapping"] = {k: [f"{t}" + (f" + {q}" if q else "") for t, q in v] for k, v in MESH_TO_CHEXPERT.items()}
    console.print(f"laterality agreement where both name a side: {agree}/{total}; {len(reports)} reports in "
                  f"{elapsed:.2f}s (baseline {elapsed_base:.2f}s)")
    return out


def bench_synthetic(n_patients: int) -> dict:
    try:
        from cxr_max.synthetic import ensure_synthetic
    except ImportError as e:  # the synthetic package is built by another part of the project
        console.print(f"[yellow]synthetic part skipped: cxr_max.synthetic not importable ({e})")
        return {"skipped": f"cxr_max.synthetic not importable: {e}"}
    root = ensure_synthetic(n_patients=n_patients, pixels="none", teachers=True)
    csv = pd.read_csv(root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype={"subject_id": str, "study_id": str})
    from cxr_max.mimic.reports import ReportStore, find_report_source

    from cxr_max.errors import SkipLog

    texts, truth = [], []
    skips = SkipLog()  # a labelled study whose report is missing is counted, not labelled
    with ReportStore(find_report_source(root / "mimic-cxr"), on_error="skip", skips=skips) as store:
        for row in csv.to_dict("records"):
            text = store.text(row["subject_id"], row["study_id"])
            if text is None:
                continue
            texts.append(text)
            truth.append({n: (None if pd.isna(row[n]) else float(row[n])) for n in CHEXPERT_LABELS})
    if skips.total:
        console.print(f"[yellow]{skips.total} labelled studies have no report in the synthetic world (skipped)")
    preds = [label_report_full(t).labels for t in track(texts, description="labelling synthetic reports")]
    out = {"reports": _pr_table("synthetic reports vs CheXpert CSV", preds, truth)}
    out["reports"]["studies_without_report_skipped"] = skips.total
    same = sum(p[n] == t[n] for p, t in zip(preds, truth) for n in CHEXPERT_LABELS)
    out["reports"]["four_state_agreement"] = same / (len(preds) * len(CHEXPERT_LABELS))

    recs = [json.loads(line) for f in sorted((root / "trajectories").rglob("*.jsonl")) for line in f.open()]
    res = [label_report_full(r.get("raw") or "") for r in track(recs, description="labelling teacher completions")]
    claims = [r.get("labels") or {} for r in recs]  # a refusal asserts nothing: all labels None
    out["teachers"] = _pr_table("simulated teachers' completions vs their claims", [r.labels for r in res], claims)
    agree = total = conflicts = 0
    for r, rec in zip(res, recs):
        conflicts += bool(r.laterality_conflict)
        for name in LATERAL_FINDINGS:
            want = (rec.get("laterality") or {}).get(name)
            if want:
                total += 1
                agree += r.laterality[name] == want
    out["teachers"]["laterality_agreement"] = {"agree": agree, "compared": total, "rate": agree / total if total else None}
    out["teachers"]["texts_with_laterality_conflict"] = conflicts
    out["teachers"]["refusals_all_none"] = sum(
        all(v is None for v in r.labels.values()) for r, rec in zip(res, recs) if rec.get("refusal"))
    out["teachers"]["refusals"] = sum(bool(rec.get("refusal")) for rec in recs)
    console.print(f"teacher laterality agreement: {agree}/{total}; four-state agreement on reports: "
                  f"{out['reports']['four_state_agreement']:.3f}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel-dir", type=Path, default=Path.home() / ".cache" / "cxr_max" / "wheels")
    ap.add_argument("--download", action="store_true", help="pip download the torchxrayvision wheel (no install)")
    ap.add_argument("--n-patients", type=int, default=200, help="size of the synthetic world")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    results: dict = {}
    if not (args.wheel_dir / WHEEL).exists() and args.download:
        subprocess.run([sys.executable, "-m", "pip", "download", "torchxrayvision==1.5.7", "--no-deps",
                        "-d", str(args.wheel_dir)], check=True)
    if (args.wheel_dir / WHEEL).exists():
        results["iu_xray"] = bench_iu(args.wheel_dir)
    else:
        msg = (f"IU-Xray part skipped: {args.wheel_dir / WHEEL} not found; run "
               f"`.venv/bin/pip download torchxrayvision==1.5.7 --no-deps -d {args.wheel_dir}` or pass --download")
        console.print(f"[yellow]{msg}")
        results["iu_xray"] = {"skipped": msg}
    results["synthetic"] = bench_synthetic(args.n_patients)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

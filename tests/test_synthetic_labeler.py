"""A tiny rule-based CheXpert-style reader used by the synthetic tests (mentions + negation + uncertainty).

It is deliberately independent of the generator's code: it reads text the way a rule labeler would, so the
tests check that reports and teacher completions *say* what their labels claim.
"""

from __future__ import annotations

import re

TERMS: dict[str, str] = {
    "Cardiomegaly": r"cardiomegaly|heart size|cardiomediastinal silhouette",
    "Enlarged Cardiomediastinum": r"cardiomediastinal silhouette",
    "Pleural Effusion": r"pleural effusions?|free of effusion",
    "Pneumothorax": r"pneumothorax",
    "Consolidation": r"consolidation",
    "Edema": r"edema",
    "Atelectasis": r"atelectasis",
    "Pneumonia": r"pneumonia",
    "Support Devices": r"support devices|endotracheal tube|catheter|pacemaker",
    "Fracture": r"fracture",
    "Lung Lesion": r"nodule",
    "Lung Opacity": r"opacity",
}
_NEG = re.compile(r"^(?:no|there is no)\b|\bwithout\b|\bfree of\b|\bno evidence of\b|\bis normal\b|within normal limits",
                  re.IGNORECASE)
_UNC = re.compile(r"\bpossible\b|cannot be excluded|\bmay (?:represent|reflect)\b", re.IGNORECASE)


def read_labels(text: str) -> dict[str, float]:
    """Labels stated in ``text``: 1.0 / -1.0 / 0.0 per mentioned label (positive beats uncertain beats negative)."""
    out: dict[str, float] = {}
    rank = {1.0: 3, -1.0: 2, 0.0: 1}
    for clause in re.split(r"(?<=\.)\s+|;\s*|\n", " ".join(text.split())):
        clause = clause.strip()
        if not clause:
            continue
        for name, pattern in TERMS.items():
            if not re.search(pattern, clause, re.IGNORECASE):
                continue
            v = 0.0 if _NEG.search(clause) else -1.0 if _UNC.search(clause) else 1.0
            if name == "Enlarged Cardiomediastinum" and v != 0.0:
                continue
            if name not in out or rank[v] > rank[out[name]]:
                out[name] = v
    return out


def report_sections(report: str) -> str:
    """The FINDINGS and IMPRESSION text of a report (what the label extraction reads)."""
    text = " ".join(report.split())
    m = re.search(r"FINDINGS:(.*?)(?:IMPRESSION:|$)", text)
    i = re.search(r"IMPRESSION:(.*)$", text)
    return ((m.group(1) if m else "") + " " + (i.group(1) if i else "")).strip()


def test_reader_negation_uncertainty_and_clauses():
    got = read_labels("No pleural effusion or pneumothorax. Patchy opacity consistent with consolidation; "
                      "this may reflect pneumonia. Possible mild cardiomegaly.")
    assert got == {"Pleural Effusion": 0.0, "Pneumothorax": 0.0, "Consolidation": 1.0, "Lung Opacity": 1.0,
                   "Pneumonia": -1.0, "Cardiomegaly": -1.0}
    assert read_labels("The cardiomediastinal silhouette is normal.") == {"Cardiomegaly": 0.0,
                                                                          "Enlarged Cardiomediastinum": 0.0}
    assert read_labels("Small left pleural effusion. No pleural effusion on the right.")["Pleural Effusion"] == 1.0


def test_report_sections_skip_indication():
    rep = " INDICATION:  evaluate for pneumonia.\n FINDINGS: \n No pneumothorax.\n IMPRESSION: \n Edema.\n"
    assert read_labels(report_sections(rep)) == {"Pneumothorax": 0.0, "Edema": 1.0}

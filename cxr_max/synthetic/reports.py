"""Radiology reports written from the true severities, and the CheXpert labels they state.

The report is the source of the labels, as in MIMIC-CXR: :func:`plan_study` first decides what the report
states about each finding (present / hedged / negated / not mentioned, from the severity thresholds of
:mod:`cxr_max.synthetic.world` and a little randomness for what radiologists bother to negate), records
those statements as the 14 CheXpert labels (1.0 / -1.0 / 0.0 / None), then writes the text with
sentences that say exactly that: positive findings plainly, hedged ones with "possible", "cannot be
excluded", "may reflect", negatives as negations.

NegBio table. ``mimic-cxr-2.0.0-negbio.csv.gz`` equals the CheXpert table except that a negative stated
only as the *second* item of a combined negation ("No pleural effusion or pneumothorax") is left blank,
imitating NegBio's weaker handling of coordinated negations. Which labels that blanks is recorded per
study (``Study.negbio_blank``).
"""

from __future__ import annotations

import numpy as np

from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS
from cxr_max.synthetic.world import POSITIVE_AT, UNCERTAIN_AT, Patient, Study

_KEY = {"Pleural Effusion": "effusion", "Pneumothorax": "pneumothorax", "Consolidation": "consolidation",
        "Atelectasis": "atelectasis"}
_NO_FINDING_EXCLUDES = ("No Finding", "Support Devices")


def _grade(sev: float) -> str:
    return "small" if sev < 0.55 else "moderate" if sev < 0.8 else "large"


def _mild(sev: float) -> str:
    return "mild" if sev < 0.55 else "moderate" if sev < 0.8 else "severe"


def _status(sev: float) -> float | None:
    """1.0 stated present, -1.0 hedged, None below the hedging threshold (negated or not mentioned later)."""
    if sev >= POSITIVE_AT:
        return 1.0
    if sev >= UNCERTAIN_AT:
        return -1.0
    return None


def _side_words(lat: str) -> str:
    return {"left": "left", "right": "right", "bilateral": "bilateral"}[lat]


def sided_state(sev: dict[str, float], key: str) -> tuple[float | None, str | None, float]:
    """Status, laterality and the larger side's severity of a sided finding (``key`` like 'effusion')."""
    left, right = sev[f"{key}_left"], sev[f"{key}_right"]
    status = _status(max(left, right))
    if status is None:
        return None, None, max(left, right)
    sides = [s for s, v in (("left", left), ("right", right)) if v >= UNCERTAIN_AT]
    lat = "bilateral" if len(sides) == 2 else sides[0]
    return status, lat, max(left, right)


def _change(cur: float, prev: float | None) -> str:
    if prev is None:
        return ""
    d = cur - prev
    if d > 0.12:
        return ", increased since the prior study"
    if d < -0.12:
        return ", decreased compared to the prior study"
    if abs(d) < 0.05:
        return ", unchanged"
    return ""


def plan_study(study: Study, patient: Patient, prior: Study | None, rng: np.random.Generator) -> None:
    """Decide the report's statements for ``study``; fill its labels, laterality, report and negbio blanks."""
    sev = study.severity
    psev = prior.severity if prior is not None else None
    labels: dict[str, float | None] = {name: None for name in CHEXPERT_LABELS}
    lat: dict[str, str | None] = {name: None for name in LATERAL_FINDINGS}
    positives: list[str] = []  # sentences about present/hedged findings (FINDINGS and IMPRESSION)
    negatives: list[str] = []  # normal statements (FINDINGS only)
    negated: list[str] = []  # labels negated in the combined pleural sentence
    negbio_blank: list[str] = []

    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    # Heart.
    c = sev["cardiomegaly"]
    st = _status(c)
    if st == 1.0:
        labels["Cardiomegaly"] = 1.0
        chg = _change(c, psev["cardiomegaly"] if psev else None)
        positives.append(pick([f"{_mild(c).capitalize()} cardiomegaly{chg}.",
                               f"The heart is {_mild(c)}ly enlarged, consistent with cardiomegaly{chg}."]))
    elif st == -1.0:
        labels["Cardiomegaly"] = -1.0
        positives.append(pick(["Possible mild cardiomegaly.", "Mild cardiomegaly cannot be excluded."]))
    elif rng.random() < 0.75:
        if rng.random() < 0.5:
            labels["Cardiomegaly"] = 0.0
            labels["Enlarged Cardiomediastinum"] = 0.0
            negatives.append(pick(["The cardiomediastinal silhouette is normal.",
                                   "Cardiomediastinal silhouette is within normal limits."]))
        else:
            labels["Cardiomegaly"] = 0.0
            negatives.append(pick(["Heart size is normal.", "No cardiomegaly."]))

    # Lungs: consolidation (+ lung opacity, pneumonia), edema, atelectasis.
    st, side, s = sided_state(sev, "consolidation")
    if st is not None:
        labels["Consolidation"] = st
        labels["Lung Opacity"] = st
        lat["Consolidation"] = side
        where = "both lower lobes" if side == "bilateral" else f"the {side} lower lobe"
        chg = _change(s, max(psev["consolidation_left"], psev["consolidation_right"]) if psev else None)
        if st == 1.0:
            text = pick([f"Patchy opacity in {where} consistent with consolidation{chg}",
                         f"Focal airspace opacity in {where} compatible with consolidation{chg}"])
            if patient.infectious:
                pna = 1.0 if rng.random() < 0.6 else -1.0
                labels["Pneumonia"] = pna
                text += ", concerning for pneumonia." if pna == 1.0 else "; this may reflect pneumonia."
            else:
                text += "."
        else:
            text = pick([f"Subtle opacity in {where} may represent early consolidation.",
                         f"Consolidation with faint opacity in {where} cannot be excluded."])
        positives.append(text)
    elif rng.random() < 0.7:
        labels["Consolidation"] = 0.0
        negatives.append(pick(["No focal consolidation.", "There is no focal consolidation."]))

    e = sev["edema"]
    st = _status(e)
    if st == 1.0:
        labels["Edema"] = 1.0
        chg = _change(e, psev["edema"] if psev else None)
        positives.append(pick([f"{_mild(e).capitalize()} pulmonary edema{chg}.",
                               f"Perihilar haziness and vascular congestion consistent with {_mild(e)} pulmonary edema{chg}."]))
    elif st == -1.0:
        labels["Edema"] = -1.0
        positives.append(pick(["Mild perihilar haziness may reflect mild interstitial edema.",
                               "Possible mild pulmonary edema."]))
    elif rng.random() < 0.5:
        labels["Edema"] = 0.0
        negatives.append(pick(["No pulmonary edema.", "There is no pulmonary edema."]))

    st, side, s = sided_state(sev, "atelectasis")
    if st is not None:
        labels["Atelectasis"] = st
        lat["Atelectasis"] = side
        where = "both lung bases" if side == "bilateral" else f"the {side} lung base"
        if st == 1.0:
            positives.append(pick([f"Plate-like atelectasis at {where}.",
                                   f"Linear opacity at {where} compatible with atelectasis."]))
            if "opacity" in positives[-1]:
                labels["Lung Opacity"] = 1.0
        else:
            positives.append(pick([f"Possible minimal atelectasis at {where}.",
                                   f"Minimal atelectasis at {where} cannot be excluded."]))

    # Pleura: effusion and pneumothorax (often negated together).
    pe_st, pe_side, pe_s = sided_state(sev, "effusion")
    px_st, px_side, px_s = sided_state(sev, "pneumothorax")
    if pe_st is not None:
        labels["Pleural Effusion"] = pe_st
        lat["Pleural Effusion"] = pe_side
        chg = _change(pe_s, max(psev["effusion_left"], psev["effusion_right"]) if psev else None)
        if pe_st == 1.0:
            noun = "pleural effusions" if pe_side == "bilateral" else "pleural effusion"
            positives.append(pick([f"{_grade(pe_s).capitalize()} {pe_side} {noun}{chg}.",
                                   f"Blunting of the {pe_side} costophrenic angle{'s' if pe_side == 'bilateral' else ''}"
                                   f" with a meniscus, consistent with {_grade(pe_s)} {pe_side} {noun}{chg}."]))
        else:
            positives.append(pick([f"Possible small {pe_side} pleural effusion.",
                                   f"A trace {pe_side} pleural effusion cannot be excluded."]))
    if px_st is not None:
        labels["Pneumothorax"] = px_st
        lat["Pneumothorax"] = px_side
        if px_st == 1.0:
            positives.append(pick([f"{_grade(px_s).capitalize()} {px_side} apical pneumothorax.",
                                   f"There is a {_grade(px_s)} {px_side} pneumothorax with a visible pleural line."]))
        else:
            positives.append(pick([f"Possible tiny {px_side} apical pneumothorax.",
                                   f"A tiny {px_side} pneumothorax cannot be excluded."]))
    neg_pe = pe_st is None and rng.random() < 0.85
    neg_px = px_st is None and rng.random() < 0.8
    if neg_pe and neg_px:
        labels["Pleural Effusion"] = labels["Pneumothorax"] = 0.0
        if rng.random() < 0.5:
            negatives.append("No pleural effusion or pneumothorax.")
            negbio_blank.append("Pneumothorax")
        else:
            negatives.append("There is no pneumothorax or pleural effusion.")
            negbio_blank.append("Pleural Effusion")
        negated += ["Pleural Effusion", "Pneumothorax"]
    elif neg_pe:
        labels["Pleural Effusion"] = 0.0
        negatives.append(pick(["No pleural effusion.", "The costophrenic angles are sharp without pleural effusion."]))
    elif neg_px:
        labels["Pneumothorax"] = 0.0
        negatives.append(pick(["No pneumothorax.", "There is no pneumothorax."]))

    # Devices.
    n_dev = int(round(sev["support_devices"] * 3))
    if n_dev:
        labels["Support Devices"] = 1.0
        devices = ["Endotracheal tube terminates about 4 cm above the carina.",
                   "Right internal jugular central venous catheter tip in the SVC.",
                   "Left chest wall pacemaker with leads in the right atrium and right ventricle."][:n_dev]
        positives.extend(devices)
    if rng.random() < 0.12:
        labels["Fracture"] = 0.0
        negatives.append("No displaced rib fracture is seen.")

    abnormal = any(labels[n] in (1.0, -1.0) for n in CHEXPERT_LABELS if n not in _NO_FINDING_EXCLUDES)
    if not abnormal:
        labels["No Finding"] = 1.0

    study.labels = labels
    study.laterality = lat
    study.negbio_blank = tuple(negbio_blank)
    study.report = _write(study, prior, positives, negatives, abnormal, rng)


_INDICATIONS = (
    "___-year-old man with shortness of breath.",
    "___-year-old woman with cough and fever, evaluate for pneumonia.",
    "___ with chest pain.",
    "History: ___ with dyspnea.",
    "___-year-old with hypoxia, assess for interval change.",
    "___ year old patient, evaluate for acute cardiopulmonary process.",
)


def _wrap(text: str, width: int = 78) -> list[str]:
    """Greedy word wrap into lines of at most ``width`` characters, each indented by one space
    (textwrap.wrap does the same but is several times slower, which shows at CXR-MAX scale)."""
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width - 1:
            lines.append(" " + cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        lines.append(" " + cur)
    return lines


def _write(study: Study, prior: Study | None, positives: list[str], negatives: list[str], abnormal: bool,
           rng: np.random.Generator) -> str:
    """Lay out the report sections (lines of at most 79 characters)."""
    portable = study.view == "AP"
    exam = "CHEST (PORTABLE AP)" if portable else ("CHEST (PA AND LAT)" if study.has_lateral else "CHEST (PA)")
    technique = ("Portable AP view of the chest." if portable else
                 "PA and lateral views of the chest." if study.has_lateral else "PA view of the chest.")
    comparison = "Chest radiograph from ___." if prior is not None else "None."
    impression_only = rng.random() < 0.25
    lines = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {exam}", " ",
             f" INDICATION:  {_INDICATIONS[int(rng.integers(len(_INDICATIONS)))]}", " ",
             f" TECHNIQUE:  {technique}", " ", f" COMPARISON:  {comparison}", " "]
    if not abnormal:
        # Only support devices can be among the positives of a study without findings.
        impression = list(positives) + [
            str(rng.choice(["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality."]))]
    else:
        impression = list(positives)
    if not impression_only:
        order = list(positives) + list(negatives)
        lines += [" FINDINGS: ", " "] + _wrap(" ".join(order)) + [" "]
        lines += [" IMPRESSION: ", " "] + _wrap(" ".join(impression))
    else:
        lines += [" IMPRESSION: ", " "] + _wrap(" ".join(impression + list(negatives)))
    return "\n".join(lines) + "\n"


def progression(cur: float, prev: float, cur_stated: bool, prev_stated: bool) -> str:
    """MS-CXR-T style label from the true severity change: improving / stable / worsening, or "" (no label).

    A pair is labelled only when the finding is stated (present or hedged) in at least one of the two
    studies and the change is clear: more than 0.12 either way, or less than 0.05 for stable.
    """
    if not (cur_stated or prev_stated):
        return ""
    d = cur - prev
    if d > 0.12:
        return "worsening"
    if d < -0.12:
        return "improving"
    if abs(d) < 0.05:
        return "stable"
    return ""


# -- quirks of real reports ------------------------------------------------------------------------------

REPORT_QUIRKS: tuple[str, ...] = ("old_headers", "misspelt_headers", "wet_read", "addendum", "phi_in_findings",
                                  "no_sections")
REPORT_QUIRK_RATE = 0.03  # per quirk kind; a study gets at most one
NO_REPORT_RATE = 0.02  # train-split studies whose report file is absent
NO_LABEL_ROW_RATE = 0.015  # train-split studies with no row in the CheXpert / NegBio tables
BLANK_LABEL_ROW_RATE = 0.015  # train-split studies whose label row is all blank

_OLD_HEADERS = {" INDICATION:": " REASON FOR EXAMINATION:", " COMPARISON:": " COMPARISONS:",
                " EXAMINATION:": " EXAM:", " FINDINGS:": " FINDINGS AND IMPRESSION:"}
_MISSPELT = {" IMPRESSION:": " IMPRESSON:", " INDICATION:": " INDICATON:"}


def quirk_report(text: str, kind: str) -> str:
    """``text`` with one real-report quirk; the clinical statements are unchanged (the labels still hold).

    old_headers: CLINICAL HISTORY / REASON FOR EXAMINATION / COMPARISONS / EXAM, and a combined FINDINGS AND
    IMPRESSION section; misspelt_headers: IMPRESSON / INDICATON; wet_read: a WET READ above the underscore
    line; addendum: an ADDENDUM above it; phi_in_findings: ``___`` inside FINDINGS; no_sections: the
    body without FINDINGS or IMPRESSION headers.
    """
    if kind == "old_headers":
        if " FINDINGS:" in text:  # one combined section: drop the separate IMPRESSION header
            text = text.replace(" IMPRESSION: \n", " \n")
        for a, b in _OLD_HEADERS.items():
            text = text.replace(a, b)
        return text
    if kind == "misspelt_headers":
        for a, b in _MISSPELT.items():
            text = text.replace(a, b)
        return text
    rule = " " + "_" * 78 + "\n"
    if kind == "wet_read":
        return " WET READ: ___ ___ 8:14 PM\n  Preliminary read; see the final report below.\n" + rule + text
    if kind == "addendum":
        return (" ADDENDUM: The findings were discussed with Dr. ___ by telephone at ___ on ___.\n" + rule + text)
    if kind == "phi_in_findings":
        return text.replace(" FINDINGS: \n \n", " FINDINGS: \n \n Comparison is made to the radiograph from ___.\n", 1)
    if kind == "no_sections":
        for header in (" FINDINGS: \n", " IMPRESSION: \n"):
            text = text.replace(header, "")
        return text
    raise ValueError(f"unknown report quirk {kind!r}; known: {REPORT_QUIRKS}")


def apply_record_quirks(patients: list[Patient], seed: int) -> None:
    """Report and label-table quirks of real copies, from their own generator (so the world's truth, images
    and teachers are unchanged): one of :data:`REPORT_QUIRKS` on some reports; and, in the train split only
    (evaluation splits keep complete references), studies without a report file, without a label row, or
    with an all-blank label row."""
    for p in patients:
        q = np.random.default_rng([seed, 161803, p.index])
        for s in p.studies:
            u = q.random()
            k = int(u / REPORT_QUIRK_RATE)
            if k < len(REPORT_QUIRKS):
                s.report, s.report_quirk = quirk_report(s.report, REPORT_QUIRKS[k]), REPORT_QUIRKS[k]
            v = q.random()
            if p.split != "train":
                continue
            if v < NO_REPORT_RATE:
                s.no_report = True
            elif v < NO_REPORT_RATE + NO_LABEL_ROW_RATE:
                s.label_row = "missing"
            elif v < NO_REPORT_RATE + NO_LABEL_ROW_RATE + BLANK_LABEL_ROW_RATE:
                s.label_row = "blank"

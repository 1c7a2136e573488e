"""The rule-based CheXpert-style labeler on realistic MIMIC/IU-style report language.

Every expected value below was checked by hand against the sentence. Labels not listed are expected
to be None (not mentioned), except No Finding, which is checked where it is given.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from cxr_max.errors import DataError
from cxr_max.evaluation import (
    LabelResult,
    label_report,
    label_report_full,
    label_reports,
    label_reports_full,
    labels_to_arrow,
    laterality_to_arrow,
    report_body,
)
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS
from cxr_max.trajectories.schema import LABELS_TYPE, LATERALITY_TYPE

P, N, U = 1.0, 0.0, -1.0

CASES: list[tuple[str, dict[str, float | None]]] = [
    # plain negation and its list scope
    ("No pleural effusion, pneumothorax, or focal consolidation.",
     {"Pleural Effusion": N, "Pneumothorax": N, "Consolidation": N, "No Finding": P}),
    ("The lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P}),
    ("There is no evidence of pneumonia.", {"Pneumonia": N, "No Finding": P}),
    ("Lungs are free of infiltrate.", {"Lung Opacity": N, "No Finding": P}),
    ("Negative for pneumothorax.", {"Pneumothorax": N, "No Finding": P}),
    # negation scope ends at a new assertion, at "but" and at the sentence
    ("No pneumothorax, small left pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P, "No Finding": None}),
    ("No pneumothorax but there is a small left pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("No pneumothorax. Small right pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("Heart is not enlarged and there is a small right effusion.", {"Cardiomegaly": N, "Pleural Effusion": P}),
    ("Stable small left effusion without pneumothorax.", {"Pleural Effusion": P, "Pneumothorax": N}),
    # negation after the mention
    ("Pneumothorax is not seen.", {"Pneumothorax": N, "No Finding": P}),
    ("The previously seen left pleural effusion has resolved.", {"Pleural Effusion": N, "No Finding": P}),
    ("The endotracheal tube has been removed.", {"Support Devices": N, "No Finding": P}),
    # pseudo-negation
    ("There is no change in the small right pleural effusion.", {"Pleural Effusion": P, "No Finding": None}),
    ("Moderate cardiomegaly is not significantly changed.", {"Cardiomegaly": P}),
    # uncertainty
    ("Right lower lobe opacity may reflect atelectasis or pneumonia.",
     {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U, "No Finding": None}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": U, "No Finding": None}),
    ("Findings suggest mild pulmonary edema.", {"Edema": U}),
    ("Possible small left pleural effusion.", {"Pleural Effusion": U}),
    ("Left basilar atelectasis versus consolidation.", {"Atelectasis": U, "Consolidation": U}),
    ("Retrocardiac opacity, likely atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
    ("Patchy opacity in the right base, concerning for pneumonia.", {"Lung Opacity": P, "Pneumonia": U}),
    ("Pneumonia is suspected in the left lower lobe.", {"Pneumonia": U}),
    ("No pneumothorax, although a small effusion cannot be excluded.", {"Pneumothorax": N, "Pleural Effusion": U}),
    # synonyms
    ("Enlarged cardiac silhouette.", {"Cardiomegaly": P}),
    ("Blunting of the right costophrenic angle.", {"Pleural Effusion": P}),
    ("Pulmonary vascular congestion and mild interstitial edema.", {"Edema": P}),
    ("Bibasilar airspace opacities.", {"Lung Opacity": P}),
    ("ET tube terminates 4 cm above the carina. NG tube courses below the diaphragm.", {"Support Devices": P, "No Finding": P}),
    ("Right PICC tip in the lower SVC. Dual-chamber pacemaker leads are unchanged.", {"Support Devices": P}),
    ("Median sternotomy wires and mediastinal clips are intact.", {"Support Devices": P}),
    ("Healed right posterior rib fractures.", {"Fracture": P}),
    ("A 1.5 cm nodule in the left upper lobe.", {"Lung Lesion": P}),
    ("Right hilar mass.", {"Lung Lesion": P}),
    ("Pleural thickening at the left apex.", {"Pleural Other": P}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": P}),
    ("Heart size is normal. Mediastinal contours are within normal limits.",
     {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N, "No Finding": P}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": P}),
    # upper limit of normal is normal (the CheXpert labeler's negation rules); borderline is uncertain
    ("Heart size is top-normal.", {"Cardiomegaly": N, "No Finding": P}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": N, "No Finding": P}),
    ("Borderline heart size.", {"Cardiomegaly": U, "No Finding": None}),
    ("Heart size is unchanged.", {"Cardiomegaly": None}),
    ("Large right pneumothorax with mediastinal shift.", {"Pneumothorax": P}),
    ("Right lower lobe consolidation consistent with pneumonia.", {"Consolidation": P, "Pneumonia": P}),
    # No Finding rule: support devices do not count, negatives do not count
    ("Lines and tubes in standard position. No acute cardiopulmonary process.",
     {"Support Devices": P, "No Finding": P}),
    ("Decreased but persistent left effusion.", {"Pleural Effusion": P, "No Finding": None}),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:50] for c in CASES])
def test_sentence_labels(text, expected):
    labels = label_report(text)
    assert set(labels) == set(CHEXPERT_LABELS)
    for name in CHEXPERT_LABELS:
        if name in expected:
            assert labels[name] == expected[name], f"{name}: {labels[name]} != {expected[name]} in {text!r}"
        elif name != "No Finding":
            assert labels[name] is None, f"{name} should be unmentioned in {text!r}, got {labels[name]}"


def test_positive_beats_negative_across_sentences():
    # CheXpert aggregation: any positive mention wins over a negated one.
    text = "No pleural effusion on the left. Small right pleural effusion."
    assert label_report(text)["Pleural Effusion"] == P
    assert label_report("Possible effusion. No effusion.")["Pleural Effusion"] == U


def test_mimic_report_sections_ignore_indication_and_comparison():
    report = (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n\n"
        " INDICATION:  ___F with cough and fever, evaluate for pneumonia.\n\n"
        " COMPARISON:  Chest radiograph ___ showed a left pleural effusion.\n\n"
        " FINDINGS: \n\n"
        " The lungs are clear. The cardiomediastinal silhouette is within normal\n"
        " limits. No acute osseous abnormalities.\n\n"
        " IMPRESSION: \n\n"
        " No acute cardiopulmonary process.\n"
    )
    labels = label_report(report)
    assert labels["Pneumonia"] is None  # only in INDICATION
    assert labels["Pleural Effusion"] is None  # only in COMPARISON
    assert labels["Enlarged Cardiomediastinum"] == N  # sentence wrapped over two lines
    assert labels["No Finding"] == P
    body = report_body(report)
    assert "pneumonia" not in body and "lungs are clear" in body


def test_teacher_answer_format_and_laterality():
    text = (
        "<think> There is blunting of the left costophrenic angle with a meniscus. The cardiac silhouette "
        "is enlarged. </think>The disease of this patient is cardiomegaly and pleural effusion."
    )
    res = label_report_full(text)
    assert isinstance(res, LabelResult)
    assert res.labels["Cardiomegaly"] == P and res.labels["Pleural Effusion"] == P
    assert res.labels["No Finding"] is None
    assert res.laterality["Pleural Effusion"] == "left"
    assert res.laterality_conflict == frozenset()
    assert label_report("The disease of this patient is pneumothorax.")["Pneumothorax"] == P


def test_refusal_and_empty_give_all_none():
    for text in ("As an AI, I cannot provide medical diagnoses. Please consult a radiologist.", "", "  \n "):
        res = label_report_full(text)
        assert all(v is None for v in res.labels.values()), text
        assert all(v is None for v in res.laterality.values())
    assert label_report_full("As an AI, I cannot provide medical diagnoses.").refusal


@pytest.mark.parametrize(
    "text,finding,side",
    [
        ("Small bilateral pleural effusions.", "Pleural Effusion", "bilateral"),
        ("Small pleural effusions, left greater than right.", "Pleural Effusion", "bilateral"),
        ("Left greater than right pleural effusions.", "Pleural Effusion", "bilateral"),
        ("Small pleural effusion on the right.", "Pleural Effusion", "right"),
        ("Right lower lobe consolidation and left pleural effusion.", "Consolidation", "right"),
        ("Right lower lobe consolidation and left pleural effusion.", "Pleural Effusion", "left"),
        ("Bibasilar atelectasis.", "Atelectasis", "bilateral"),
        ("Tiny left apical pneumothorax.", "Pneumothorax", "left"),
        ("Atelectasis in the lingula.", "Atelectasis", "left"),
        ("RLL consolidation.", "Consolidation", "right"),
        ("Pleural effusion.", "Pleural Effusion", None),
    ],
)
def test_laterality(text, finding, side):
    assert label_report_full(text).laterality[finding] == side


def test_laterality_ignores_negated_mentions_and_flags_conflicts():
    res = label_report_full("No right pleural effusion. Small left pleural effusion.")
    assert res.laterality["Pleural Effusion"] == "left" and not res.laterality_conflict
    res = label_report_full("<think> A right pleural effusion is present. </think>The disease is left pleural effusion.")
    assert res.laterality["Pleural Effusion"] == "bilateral"
    assert res.laterality_conflict == frozenset({"Pleural Effusion"})
    # Laterality stays None for a finding that is negative.
    assert label_report_full("No left pneumothorax.").laterality["Pneumothorax"] is None


def test_batch_and_arrow_helpers():
    texts = ["Small left effusion.", "No pneumothorax.", "As an AI I cannot provide a diagnosis."]
    full = label_reports_full(texts)
    assert [r.labels for r in full] == label_reports(texts) == [label_report(t) for t in texts]
    arr = labels_to_arrow(full)
    assert arr.type == LABELS_TYPE and len(arr) == 3
    assert arr.field("Pleural Effusion").to_pylist() == [1.0, None, None]
    lat = laterality_to_arrow(full)
    assert lat.type == LATERALITY_TYPE
    assert lat.field("Pleural Effusion").to_pylist() == ["left", None, None]
    assert set(LATERALITY_TYPE.names) == set(LATERAL_FINDINGS)
    assert isinstance(arr, pa.StructArray)


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="str"):
        label_report(b"No effusion.")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="row 1"):
        label_reports(["No effusion.", None])  # type: ignore[list-item]


def test_runaway_text_without_punctuation_is_windowed():
    """A degenerate generation (a mention repeated without a full stop) is cut into bounded windows
    (scanning it whole is quadratic: ~16 s for this text), and normal clauses are left whole."""
    from cxr_max.evaluation.labeler import MAX_CLAUSE_CHARS, _bounded

    text = "the the the cardiomegaly " * 1200
    pieces = list(_bounded(text))
    assert "".join(pieces) == text and all(len(p) <= MAX_CLAUSE_CHARS for p in pieces) and len(pieces) > 20
    assert list(_bounded("no pleural effusion or pneumothorax")) == ["no pleural effusion or pneumothorax"]
    assert label_report(text)["Cardiomegaly"] == 1.0


def test_bench_convention_errors_counts_by_hand():
    """The IU-Xray benchmark's unc+ error breakdown (benchmarks/bench_labeler.py) on four hand-made
    reports with hand-made truth: a hedged "infection" only (a convention FP), a hedged "pneumonia" (a
    FP that names the finding), an asserted pneumonia the truth has (TP) and one the labeler misses
    nothing on (a true negative)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_labeler.py"
    spec = importlib.util.spec_from_file_location("bench_labeler_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    texts = ["Bibasilar opacity may represent atelectasis or infection.",
             "Left lower lobe opacity concerning for pneumonia.",
             "Right lower lobe pneumonia.",
             "No acute cardiopulmonary abnormality."]
    preds = [label_report(t) for t in texts]
    truth = [dict.fromkeys(preds[0], 0.0) for _ in texts]
    truth[2]["Pneumonia"] = 1.0
    base = [bench.baseline_label(t) for t in texts]
    assert [p["Pneumonia"] for p in preds] == [-1.0, -1.0, 1.0, None]
    assert [b["Pneumonia"] for b in base] == [None, 1.0, 1.0, None]  # the baseline knows no "infection"
    got = bench.convention_errors("Pneumonia", texts, preds, base, truth)
    assert got["labeler_fp"] == {"hedged, names the finding": 1, "asserted, names the finding": 0,
                                 "hedged, convention phrase only": 1, "asserted, convention phrase only": 0}
    assert (got["labeler_fn"], got["baseline_fp"], got["baseline_fn"]) == (0, 1, 0)
    assert got["tp_carried_only_by_convention_phrases"] == 0
    # reading only clauses that say pneumonia: 1 TP, 1 FP, 0 FN -> F1 = 2 / 3
    assert got["f1_if_convention_phrases_were_not_read"] == pytest.approx(2 / 3)

"""Label F1 (vs sklearn), bootstrap CIs, MS-CXR-T progression parsing and temporal accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cxr_max.errors import DataError, SkipLog
from cxr_max.evaluation.clinical import (
    binarize,
    bootstrap_resample_weights,
    clinical_metrics,
    label_f1,
    ms_cxr_t_metrics,
    parse_progression,
    read_progression,
    temporal_accuracy,
)
from cxr_max.labels import CHEXPERT_LABELS, FIVE_FINDINGS


def _random_rows(rng, n):
    values = [1.0, 0.0, -1.0, None, None]
    return [{name: values[rng.integers(len(values))] for name in CHEXPERT_LABELS} for _ in range(n)]


@pytest.mark.parametrize("uncertain", ["positive", "negative"])
def test_label_f1_equals_sklearn(uncertain):
    rng = np.random.default_rng(0)
    preds, truth = _random_rows(rng, 200), _random_rows(rng, 200)
    out = label_f1(preds, truth, uncertain=uncertain, n_boot=200)
    p, t = binarize(preds, uncertain=uncertain), binarize(truth, uncertain=uncertain)
    assert out["micro_f1"]["value"] == pytest.approx(f1_score(t, p, average="micro", zero_division=0))
    assert out["macro_f1"]["value"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
    for j, name in enumerate(CHEXPERT_LABELS):
        assert out["per_label"][name]["f1"]["value"] == pytest.approx(f1_score(t[:, j], p[:, j], zero_division=0))
        assert out["per_label"][name]["accuracy"]["value"] == pytest.approx((t[:, j] == p[:, j]).mean())
    lo, hi = out["micro_f1"]["ci_low"], out["micro_f1"]["ci_high"]
    assert lo < out["micro_f1"]["value"] < hi and hi - lo < 0.2


def test_uncertain_convention_changes_the_answer():
    preds = [{"Edema": -1.0}, {"Edema": 1.0}]
    truth = [{"Edema": 1.0}, {"Edema": 1.0}]
    pos = label_f1(preds, truth, labels=["Edema"], n_boot=50)
    neg = label_f1(preds, truth, labels=["Edema"], uncertain="negative", n_boot=50)
    assert pos["micro_f1"]["value"] == 1.0
    assert neg["micro_f1"]["value"] == pytest.approx(2 / 3)


def test_bootstrap_weights_and_ci_are_seeded_and_vectorised():
    w = bootstrap_resample_weights(10, 500, seed=3)
    assert w.shape == (500, 10) and (w.sum(1) == 10).all()
    assert (w == bootstrap_resample_weights(10, 500, seed=3)).all()
    assert not (w == bootstrap_resample_weights(10, 500, seed=4)).all()
    # CI of a mean from the weights equals the percentile of explicitly resampled means.
    x = np.arange(10, dtype=float)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 10, size=(500, 10))
    assert np.allclose((w @ x) / 10, x[idx].mean(1))


def test_clinical_metrics_5_and_14():
    truth = [{"Cardiomegaly": 1.0, "Support Devices": 1.0}, {"Edema": 1.0}, {"No Finding": 1.0}]
    preds = [{"Cardiomegaly": 1.0}, {"Edema": 1.0, "Fracture": 1.0}, {"No Finding": 1.0}]
    out = clinical_metrics(preds, truth, n_boot=100)
    assert out["labels_5"]["labels"] == list(FIVE_FINDINGS)
    assert out["labels_5"]["micro_f1"]["value"] == 1.0
    # 14 labels: tp = 3 (cardiomegaly, edema, no finding), fp = 1 (fracture), fn = 1 (support devices)
    assert out["labels_14"]["micro_f1"]["value"] == pytest.approx(6 / 8)


def test_label_f1_bad_input():
    with pytest.raises(DataError, match="2 predictions but 1"):
        label_f1([{}, {}], [{}])
    with pytest.raises(DataError, match="row 1"):
        label_f1([{}, {"Edema": 2.0}], [{}, {}])
    with pytest.raises(DataError, match="no predictions"):
        label_f1([], [])


@pytest.mark.parametrize(
    "text,finding,expected",
    [
        ("The left pleural effusion has decreased in size.", "Pleural Effusion", "improving"),
        ("Resolving right lower lobe consolidation.", "Consolidation", "improving"),
        ("Pulmonary edema is unchanged.", "Edema", "stable"),
        ("No significant change in the small right pneumothorax.", "Pneumothorax", "stable"),
        ("Increased bilateral pleural effusions.", "Pleural Effusion", "worsening"),
        ("Worsening multifocal pneumonia.", "Pneumonia", "worsening"),
        ("The pneumothorax is slightly larger.", "Pneumothorax", "worsening"),
        ("Mild edema has improved. The right effusion has increased.", "Edema", "improving"),
        ("Mild edema has improved. The right effusion has increased.", "Pleural Effusion", "worsening"),
        ("No increase in the pleural effusion.", "Pleural Effusion", "stable"),
        ("Stable.", "Edema", "stable"),
        ("<think>Compared with the prior, the opacity is denser.</think> Worsening.", "Consolidation", "worsening"),
        ("The pleural effusion is present.", "Pleural Effusion", None),
        ("The effusion first increased, now improved.", "Pleural Effusion", None),
        # read with the labeler's clauses, sections and negation
        ("No new consolidation.", "Consolidation", None),
        ("The right pneumothorax has resolved.", "Pneumothorax", "improving"),
        ("INDICATION: Worsening effusion?\nFINDINGS: The pleural effusion is unchanged.", "Pleural Effusion", "stable"),
        ("The left effusion is unchanged; there is new right lower lobe consolidation.", "Pleural Effusion", "stable"),
        ("The left effusion is unchanged; there is new right lower lobe consolidation.", "Consolidation", "worsening"),
    ],
)
def test_parse_progression(text, finding, expected):
    assert parse_progression(text, finding) == expected


def test_read_progression_one_or_two_answers():
    """One reader: a two-image answer states the class; two single-image answers are compared."""
    assert read_progression("The pleural effusion has increased.", "Pleural Effusion") == "worsening"
    assert read_progression("The pleural effusion is present.", "Pleural Effusion") is None
    assert read_progression("Large pleural effusion.", "Pleural Effusion", previous_answer="Small pleural effusion.") \
        == "worsening"
    assert read_progression("No pneumothorax.", "Pneumothorax", previous_answer="Small pneumothorax.") == "improving"
    assert read_progression("Pulmonary edema.", "Edema", previous_answer="Moderate pulmonary edema.") == "stable"


def test_ms_cxr_t_pairs_of_answers():
    recs = [
        {"dicom_id": "a", "previous_dicom_id": "b", "finding": "Edema", "previous_answer": "No edema.",
         "answer": "Mild pulmonary edema.", "label": "worsening"},
        {"dicom_id": "c", "previous_dicom_id": "d", "finding": "Pneumothorax", "previous_answer": "Large pneumothorax.",
         "answer": "Small pneumothorax.", "label": "improving"},
    ]
    out = ms_cxr_t_metrics(recs, n_boot=50)
    assert out["n"] == 2 and out["unparsed"] == 0 and out["avg_top1"]["value"] == 1.0
    with pytest.raises(DataError, match="row 1.*previous_answer must be str"):
        ms_cxr_t_metrics([recs[0], {**recs[1], "previous_answer": None}], n_boot=50)
    with pytest.raises(DataError, match="row 0.*previous_answer is not valid UTF-8"):
        ms_cxr_t_metrics([{**recs[0], "previous_answer": b"\xff"}], n_boot=50)
    assert ms_cxr_t_metrics([{**recs[0], "previous_answer": b"No edema."}], n_boot=50)["avg_top1"]["value"] == 1.0


def test_temporal_accuracy_top1_and_balanced():
    truth = ["improving", "improving", "improving", "worsening", "stable", "stable"]
    pred = ["improving", "improving", "improving", "improving", "stable", None]
    findings = ["Edema"] * 4 + ["Pneumothorax"] * 2
    out = temporal_accuracy(pred, truth, findings, n_boot=200)
    assert out["per_finding"]["Edema"]["top1"]["value"] == pytest.approx(0.75)
    assert out["per_finding"]["Edema"]["balanced"]["value"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert out["per_finding"]["Pneumothorax"]["top1"]["value"] == pytest.approx(0.5)
    assert out["avg_top1"]["value"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["unparsed"] == 1
    ci = out["avg_top1"]
    assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]


def test_ms_cxr_t_records_and_bad_pairs():
    recs = [
        {"dicom_id": "a", "previous_dicom_id": "b", "finding": "pleural_effusion", "answer": "Effusion has decreased.", "label": "improving"},
        {"dicom_id": "c", "previous_dicom_id": "", "finding": "edema", "answer": "stable", "label": "stable"},
        {"dicom_id": "d", "previous_dicom_id": "e", "finding": "Edema", "answer": "Edema is worse.", "label": "worsening"},
    ]
    with pytest.raises(DataError, match="row 1.*previous_dicom_id"):
        ms_cxr_t_metrics(recs, n_boot=50)
    skips = SkipLog()
    out = ms_cxr_t_metrics(recs, on_error="skip", skips=skips, n_boot=50)
    assert skips.total == 1 and out["n"] == 2 and out["avg_top1"]["value"] == 1.0
    with pytest.raises(DataError, match="row 0.*not found"):
        ms_cxr_t_metrics(recs[:1], image_exists=lambda d: d != "b", n_boot=50)
    with pytest.raises(DataError, match="not an MS-CXR-T finding"):
        ms_cxr_t_metrics([{**recs[0], "finding": "Cardiomegaly"}], n_boot=50)

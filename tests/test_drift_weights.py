"""The drift negative weights' agreement (:func:`cxr_max.drift.reliability.drift_agreement`) on a panel built by hand.

Four teachers, six images (stream positions .1 .2 .3 .6 .7 .8), two findings. Teacher b reads pleural
effusion right before stream .5 and misses it on images 3 and 4 after (one drift point, change at .5);
it over-calls atelectasis on images 0 and 3 (no drift point). Teacher c refuses image 4.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr_max.drift.consensus import vote_consensus
from cxr_max.drift.findings import NEG, POS, Panel
from cxr_max.drift.preferences import build_preferences
from cxr_max.drift.reliability import (
    DriftPoint, drift_agreement, finding_segment_agreement, segment_agreement,
)
from cxr_max.labels import CHEXPERT_LABELS

EFF, ATL = CHEXPERT_LABELS.index("Pleural Effusion"), CHEXPERT_LABELS.index("Atelectasis")
TEACHERS = ["a", "b", "c", "d"]
B, C = 1, 2


def _panel() -> Panel:
    n, t = 6, len(TEACHERS)
    labels = np.zeros((n, t, 14), dtype=np.int8)
    labels[:, :, EFF] = POS  # everyone sees the effusion on every image...
    labels[[3, 4], B, EFF] = NEG  # ...except b after its drift
    labels[:, :, ATL] = NEG
    labels[1, :, ATL] = POS  # a true atelectasis everyone calls
    labels[[0, 3], B, ATL] = POS  # b's over-calls
    refused = np.zeros((n, t), dtype=bool)
    refused[4, C] = True
    labels[4, C] = 0
    raw = np.array([[f"{name}-{i}" for name in TEACHERS] for i in range(n)], dtype=object)
    return Panel(
        dicom_id=np.array([f"img-{i}" for i in range(n)]), subject_id=np.array(["1"] * n), study_id=np.array(["5"] * n),
        prompt=np.array(["p"] * n), stream_pos=np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8]), teachers=TEACHERS,
        present=np.ones((n, t), dtype=bool), refused=refused, empty=np.zeros((n, t), dtype=bool), labels=labels,
        side=np.zeros((n, t, 4), dtype=np.int8), side_conflict=np.zeros((n, t, 4), dtype=bool), raw=raw,
        verbosity=np.full((n, t), np.nan),
    )


POINTS = [DriftPoint(teacher="b", signal="Pleural Effusion", detected_at=0.7, change_at=0.5, before=1.0, after=1 / 3)]


def test_drift_agreement_by_hand():
    panel = _panel()
    cons = vote_consensus(panel)
    assert (cons.state[:, EFF] == 1).all() and cons.state[:, ATL].tolist() == [0, 1, 0, 0, 0, 0]

    # b's effusion signal 1 1 1 | 0 0 1 split at .5; its atelectasis signal (images 0, 1, 3) 0 1 0, no split
    f = finding_segment_agreement(panel, cons, POINTS)
    np.testing.assert_allclose(f[:, B, EFF], [1, 1, 1, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(f[:, B, ATL], [1 / 3] * 6)
    np.testing.assert_allclose(f[:, 0, EFF], [1] * 6)
    assert np.isnan(f[:, 0, CHEXPERT_LABELS.index("Edema")]).all()  # never informative

    # b's per-image informative agreement .5 1 1 | 0 0 1, segments split at .5 (an agreement signal's point)
    seg = segment_agreement(panel, cons, POINTS)
    np.testing.assert_allclose(seg[:, B], [5 / 6] * 3 + [1 / 3] * 3)

    a = drift_agreement(panel, cons, POINTS)
    # image 0: wrong on atelectasis only, no drift there (factor 1); 1, 2, 5: right on everything;
    # 3: wrong on both, the effusion factor (1/3) / 1 is the lower; 4: wrong on effusion
    np.testing.assert_allclose(a[:, B], [5 / 6, 5 / 6, 5 / 6, 1 / 9, 1 / 9, 1 / 3])
    np.testing.assert_allclose(a[:, 0], [1] * 6)
    np.testing.assert_allclose(a[:, C], [1] * 6)  # the refusal (image 4) keeps its segment agreement
    # without drift points nothing changes from the teachers' overall agreement
    np.testing.assert_allclose(drift_agreement(panel, cons, []), segment_agreement(panel, cons, []))

    rows = build_preferences(panel, cons, negative_weighting="drift", segment_agreement=a)
    w = {r["dicom_id"]: dict(zip(r["rejected_teachers"], r["rejected_weights"])) for r in rows}
    # image 3: the chosen text is one of a, c, d (each agrees exactly; ties are drawn per image), the other
    # two and b are rejected; raw weights 1 - a + .05: b 1 - 1/9 + .05, the two agreeing teachers .05 each;
    # normalised to mean 1
    chosen = next(r["consensus_source"] for r in rows if r["dicom_id"] == "img-3")
    assert chosen in {"a", "c", "d"} and set(w["img-3"]) == {"a", "b", "c", "d"} - {chosen}
    raw = {t: (1 - 1 / 9 + 0.05 if t == "b" else 0.05) for t in w["img-3"]}
    mean = np.mean(list(raw.values()))
    assert w["img-3"] == pytest.approx({t: v / mean for t, v in raw.items()})
    assert w["img-3"]["b"] > w["img-0"]["b"]

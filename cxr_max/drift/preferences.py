"""The ``apo`` rows: chosen = the consensus trajectory, rejected = the teachers' trajectories, with weights.

Chosen text (``positive_text``):

- ``"closest-or-rendered"`` (default): the usable teacher trajectory that agrees with the consensus on
  every finding (and side); when none does, a *rendered* trajectory that states exactly the consensus
  findings (:func:`render_trajectory`).
- ``"closest"``: the usable trajectory with the highest agreement, even when not exact.
- ``"rendered"``: always render.
- ``model`` consensus: the student's generated text (``Consensus.texts``).

When several teachers are equally close (most images: several agree exactly), one of them is drawn at random,
seeded per image (``seed`` and the dicom_id), never by a fixed teacher order: a fixed order hands most
positives, and with them one teacher's phrasing and blind spots, to a single teacher (measured for the
benchmark's positive control: one teacher was the positive of 40 % of the rows; see
:func:`cxr_max.drift.controls.closest_to_truth`, which draws its ties the same way).

Rejected: every teacher trajectory of the image (refusals and trajectories with nothing extractable
included: they are bad answers), except failed requests and missing teachers; a rejected text
identical to the chosen one is always left out (a pair with itself teaches nothing); refusals
(``drop_refusals``) and teachers that agree exactly with the consensus (``drop_agreeing``) are left
out on request. An image left with no rejected trajectory is skipped and counted.

Weights (``negative_weighting``), normalised to mean 1 within each row so every row pushes with the
same total force as the paper's uniform weighting:

- ``uniform``: 1 for every negative (the paper's choice);
- ``reliability``: proportional to ``1 - a_t + floor``, a_t the teacher's mean informative agreement
  with the consensus (findings either side holds present/uncertain) over the whole stream;
- ``drift``: proportional to ``1 - a_t(i) + floor``, a_t(i) from
  :func:`cxr_max.drift.reliability.drift_agreement`: the teacher's mean informative agreement over the
  stretch of the stream between its own detected change points that holds the image, scaled down, on
  the findings it gets wrong on this image, by how far its agreement on them in this stretch (between
  its change points on that finding's signal) has fallen below its best stretch on them. So negatives
  push harder against a teacher where it drifts away from the consensus, and on the images where it
  makes the error it drifted into (one finding of fourteen drifting still moves those images' weights).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxr_max.drift.consensus import Consensus
from cxr_max.drift.findings import ABSENT, LATERAL_INDEX, LABEL_VALUES, PRESENT, SIDES, UNCERTAIN, Panel
from cxr_max.errors import SkipLog
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS
from cxr_max.trajectories.prompts import answer_sentence, render_prompt
from cxr_max.trajectories.parse import join_answer

Weighting = Literal["uniform", "reliability", "drift"]
PositiveText = Literal["closest-or-rendered", "closest", "rendered"]
WEIGHT_FLOOR = 0.05

PREFERENCE_FIELDS = (
    "subject_id", "study_id", "dicom_id", "prompt", "chosen", "rejected", "rejected_teachers", "rejected_weights",
    "consensus_method", "consensus_confidence",
)
# Extra provenance columns (after the ten the builder reads).
EXTRA_FIELDS = (
    "consensus_source", "low_confidence", "rejected_agreement", "teachers", "teacher_agreement",
    "n_usable_teachers", "stream_pos", "consensus_labels", "consensus_laterality",
)
PREFERENCE_SCHEMA = pa.schema([
    ("subject_id", pa.string()), ("study_id", pa.string()), ("dicom_id", pa.string()), ("prompt", pa.string()),
    ("chosen", pa.string()), ("rejected", pa.list_(pa.string())), ("rejected_teachers", pa.list_(pa.string())),
    ("rejected_weights", pa.list_(pa.float64())), ("consensus_method", pa.string()),
    ("consensus_confidence", pa.float64()), ("consensus_source", pa.string()), ("low_confidence", pa.bool_()),
    ("rejected_agreement", pa.list_(pa.float64())), ("teachers", pa.list_(pa.string())),
    ("teacher_agreement", pa.list_(pa.float64())), ("n_usable_teachers", pa.int32()), ("stream_pos", pa.float64()),
    ("consensus_labels", pa.struct([pa.field(n, pa.float32()) for n in CHEXPERT_LABELS])),
    ("consensus_laterality", pa.struct([pa.field(n, pa.string()) for n in LATERAL_FINDINGS])),
])

# How a rendered trajectory says each finding (present, absent). Lateral findings take a side word.
_PHRASES: dict[str, tuple[str, str]] = {
    "Atelectasis": ("There is {side}atelectasis", "No atelectasis"),
    "Cardiomegaly": ("The cardiac silhouette is enlarged, consistent with cardiomegaly", "The heart size is normal, no cardiomegaly"),
    "Consolidation": ("There is {side}consolidation", "No focal consolidation"),
    "Edema": ("There is pulmonary edema", "No pulmonary edema"),
    "Enlarged Cardiomediastinum": ("The cardiomediastinal silhouette is enlarged", "The cardiomediastinal silhouette is not enlarged"),
    "Fracture": ("There is a fracture", "No fracture"),
    "Lung Lesion": ("There is a lung lesion", "No lung lesion"),
    "Lung Opacity": ("There is a lung opacity", "No lung opacity"),
    "Pleural Effusion": ("There is a {side}pleural effusion", "No pleural effusion"),
    "Pleural Other": ("There is pleural thickening", "No pleural thickening"),
    "Pneumonia": ("The findings are consistent with pneumonia", "No pneumonia"),
    "Pneumothorax": ("There is a {side}pneumothorax", "No pneumothorax"),
    "Support Devices": ("Support devices are in place", "No support devices"),
}
_UNCERTAIN = {
    "Atelectasis": "{side}atelectasis cannot be excluded", "Consolidation": "{side}consolidation cannot be excluded",
    "Pleural Effusion": "a {side}pleural effusion cannot be excluded", "Pneumothorax": "a {side}pneumothorax cannot be excluded",
}
_SIDE_WORD = {1: "left ", 2: "right ", 3: "bilateral ", 0: ""}


def render_trajectory(state: np.ndarray, labels_code: np.ndarray, side: np.ndarray) -> str:
    """A trajectory in the authors' format that states exactly the given consensus findings.

    ``state``/``labels_code`` are one image's [14] consensus rows, ``side`` its [4] side codes:
    PRESENT findings are asserted (with their side), UNCERTAIN ones hedged ("cannot be excluded"),
    explicitly negated ABSENT ones negated, not-mentioned ones left out; the answer sentence names
    the PRESENT findings. A consensus of No Finding alone says "No acute cardiopulmonary abnormality".
    """
    sentences, present = [], []
    lat_pos = {k: j for j, k in enumerate(LATERAL_INDEX)}
    for k, name in enumerate(CHEXPERT_LABELS):
        if name == "No Finding":
            continue
        side_word = _SIDE_WORD[int(side[lat_pos[k]])] if k in lat_pos else ""
        yes, no = _PHRASES[name]
        if state[k] == PRESENT:
            sentences.append(yes.format(side=side_word) + ".")
            present.append(f"{side_word}{name.lower()}".strip())
        elif state[k] == UNCERTAIN:
            hedge = _UNCERTAIN.get(name, f"{name.lower()} cannot be excluded").format(side=side_word)
            sentences.append(hedge[0].upper() + hedge[1:] + ".")
        elif state[k] == ABSENT and LABEL_VALUES[int(labels_code[k])] == 0.0:
            sentences.append(no + ".")
    nf = CHEXPERT_LABELS.index("No Finding")
    if not present and state[nf] == PRESENT:
        sentences.append("No acute cardiopulmonary abnormality.")
    reasoning = " ".join(sentences) or "No definite abnormality is identified on this radiograph."
    return join_answer(reasoning, answer_sentence(present))


def _weights(kind: Weighting, agreement: np.ndarray) -> np.ndarray:
    """Normalised weights (mean 1) from per-negative agreement values (NaN -> the row's lowest agreement)."""
    if kind == "uniform" or len(agreement) == 0:
        return np.ones(len(agreement))
    a = np.asarray(agreement, dtype=float)
    if np.isnan(a).all():
        return np.ones(len(a))
    a = np.where(np.isnan(a), np.nanmin(a), a)
    w = 1.0 - a + WEIGHT_FLOOR
    return w / w.mean()


def consensus_labels_dict(cons: Consensus, i: int) -> tuple[dict[str, float | None], dict[str, str | None]]:
    """One image's consensus as CheXpert label values and sides."""
    labels = {name: LABEL_VALUES[int(cons.labels[i, k])] for k, name in enumerate(CHEXPERT_LABELS)}
    sides = {name: SIDES[int(cons.side[i, j])] for j, name in enumerate(LATERAL_FINDINGS)}
    return labels, sides


def build_preferences(
    panel: Panel,
    cons: Consensus,
    *,
    negative_weighting: Weighting = "uniform",
    segment_agreement: np.ndarray | None = None,
    positive_text: PositiveText = "closest-or-rendered",
    drop_refusals: bool = False,
    drop_agreeing: bool = False,
    skips: SkipLog | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One preference row per image of ``panel`` (which must hold only the images ``cons`` covers).

    ``segment_agreement`` ([I, T], from :func:`cxr_max.drift.reliability.drift_agreement`; any [I, T]
    agreement in [0, 1] works, e.g. :func:`cxr_max.drift.reliability.segment_agreement`) is required for
    ``negative_weighting="drift"``. Images left without negatives are counted in ``skips``.
    """
    if negative_weighting not in ("uniform", "reliability", "drift"):
        raise ValueError(f"negative_weighting must be uniform, reliability or drift, not {negative_weighting!r}")
    if negative_weighting == "drift" and segment_agreement is None:
        raise ValueError("negative_weighting='drift' needs segment_agreement (run drift detection first)")
    skips = skips if skips is not None else SkipLog()
    teachers = panel.teachers
    overall = np.array([np.nanmean(cons.informative_agreement[:, t]) if panel.usable[:, t].any() else np.nan
                        for t in range(len(teachers))])
    default_prompt = render_prompt("diagnose")
    rows: list[dict[str, Any]] = []
    for i in range(panel.n_images):
        agree = cons.agreement[i]
        usable = panel.usable[i]
        source = "rendered"
        if cons.texts is not None:
            if cons.texts[i] is None:  # the model consensus never finished this image's text: no positive
                skips.add("model consensus did not finish (no end token within max_new_tokens), image dropped",
                          f"{panel.dicom_id[i]}")
                continue
            chosen, source = str(cons.texts[i]), "model"
        else:
            tie = random.Random(f"{seed}:positive:{panel.dicom_id[i]}")
            exact = [t for t in range(len(teachers)) if usable[t] and agree[t] == 1.0]
            if positive_text != "rendered" and exact:
                pick = tie.choice(exact)
                chosen, source = panel.raw[i, pick], teachers[pick]
            elif positive_text == "closest" and usable.any():
                score = np.where(usable & ~np.isnan(agree), agree, -1.0)
                top = score[usable].max()
                best = tie.choice([t for t in range(len(teachers)) if usable[t] and score[t] == top])
                chosen, source = panel.raw[i, best], teachers[best]
            else:
                chosen = render_trajectory(cons.state[i], cons.labels[i], cons.side[i])
        rej_t = []
        for t in range(len(teachers)):
            if not panel.present[i, t] or panel.raw[i, t] is None:
                continue
            if panel.raw[i, t] == chosen:
                continue
            if drop_refusals and panel.refused[i, t]:
                continue
            if drop_agreeing and usable[t] and agree[t] == 1.0:
                continue
            rej_t.append(t)
        if not rej_t:
            skips.add("no negatives left for the image", f"{panel.dicom_id[i]}")
            continue
        if negative_weighting == "uniform":
            weights = _weights("uniform", np.zeros(len(rej_t)))
        elif negative_weighting == "reliability":
            weights = _weights("reliability", overall[rej_t])
        else:
            weights = _weights("drift", segment_agreement[i, rej_t])
        labels, sides = consensus_labels_dict(cons, i)
        rows.append({
            "subject_id": str(panel.subject_id[i]),
            "study_id": str(panel.study_id[i]),
            "dicom_id": str(panel.dicom_id[i]),
            "prompt": panel.prompt[i] or default_prompt,
            "chosen": chosen,
            "rejected": [panel.raw[i, t] for t in rej_t],
            "rejected_teachers": [teachers[t] for t in rej_t],
            "rejected_weights": [float(w) for w in weights],
            "consensus_method": cons.method,
            "consensus_confidence": float(cons.confidence[i]),
            "consensus_source": source,
            "low_confidence": bool(cons.low_confidence[i]),
            "rejected_agreement": [None if np.isnan(agree[t]) else float(agree[t]) for t in rej_t],
            "teachers": list(teachers),
            "teacher_agreement": [None if np.isnan(a) else float(a) for a in agree],
            "n_usable_teachers": int(cons.n_usable[i]),
            "stream_pos": float(panel.stream_pos[i]),
            "consensus_labels": labels,
            "consensus_laterality": sides,
        })
    return rows


def write_preferences(rows: list[dict[str, Any]], out_dir: str | Path, *, fmt: Literal["jsonl", "parquet"] = "jsonl",
                      name: str = "preferences") -> Path:
    """Write preference rows as ``<out_dir>/<name>.jsonl`` (or ``.parquet``) and return the file path.

    Columns: the ten the builder's ``apo`` config reads (:data:`PREFERENCE_FIELDS`) then the
    provenance extras (:data:`EXTRA_FIELDS`). The write is atomic (temporary file, then rename).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.{fmt}"
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                ordered = {k: row[k] for k in PREFERENCE_FIELDS} | {k: row[k] for k in EXTRA_FIELDS if k in row}
                f.write(json.dumps(ordered, ensure_ascii=False) + "\n")
    elif fmt == "parquet":
        table = pa.Table.from_pylist([{k: r.get(k) for k in PREFERENCE_SCHEMA.names} for r in rows], schema=PREFERENCE_SCHEMA)
        pq.write_table(table, tmp)
    else:
        raise ValueError(f"fmt must be 'jsonl' or 'parquet', not {fmt!r}")
    tmp.replace(path)
    return path

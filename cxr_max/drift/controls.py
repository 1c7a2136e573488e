"""Controls of the drift benchmark, built from the synthetic world's ground truth (never part of the method).

- :func:`truth_trajectory`: a trajectory in the authors' format stating exactly an image's true findings
  (rendered by :func:`cxr_max.drift.preferences.render_trajectory`, so it reads like a consensus positive).
- :func:`write_truth_trajectories`: the **oracle** student's SFT data: every teacher record of a trajectory
  folder re-written with the truth-rendered text (refusals kept as refusals), so the oracle trains on
  exactly as many rows, images and optimizer steps as the learn student, with the truth as its only teacher.
- :func:`control_preferences`: the two controls of the preference stage, from the compare stage's rows:
  ``positive`` (chosen = the truth-rendered trajectory, rejected = every teacher's trajectory) must beat
  learn-only if the critique stage can learn at all; ``negative`` (chosen = a random teacher's trajectory,
  rejected = the others) must not, since it carries no information about which answer is right.
- :func:`split_table`: a trajectory table restricted to one split, so the compare stage of the benchmark sees
  the train split only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from cxr_max.drift.findings import ABSENT, LATERAL_INDEX, NEG, NM, POS, PRESENT, UNC, UNCERTAIN
from cxr_max.drift.preferences import render_trajectory
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS, TABLE_FINDINGS

# Findings the truth trajectory always states, negated when absent (the benchmark's table findings).
STATED_FINDINGS = TABLE_FINDINGS
_SIDE_CODE = {None: 0, "left": 1, "right": 2, "bilateral": 3}
ControlKind = Literal["positive", "negative"]


def truth_trajectory(labels: Mapping[str, float | None], laterality: Mapping[str, str | None] | None = None) -> str:
    """The trajectory that states exactly ``labels`` (CheXpert values) with ``laterality`` sides.

    Present (1.0) findings are asserted with their side, hedged (-1.0) ones hedged, and every
    :data:`STATED_FINDINGS` finding that is not present is negated explicitly; other unmentioned labels are
    left out.
    """
    state = np.full(len(CHEXPERT_LABELS), ABSENT, dtype=np.int8)
    code = np.full(len(CHEXPERT_LABELS), NM, dtype=np.int8)
    for k, name in enumerate(CHEXPERT_LABELS):
        v = labels.get(name)
        if v == 1.0:
            state[k], code[k] = PRESENT, POS
        elif v == -1.0:
            state[k], code[k] = UNCERTAIN, UNC
        elif v == 0.0 or name in STATED_FINDINGS:
            code[k] = NEG
    side = np.zeros(len(LATERAL_FINDINGS), dtype=np.int8)
    for j, name in enumerate(LATERAL_FINDINGS):
        if state[LATERAL_INDEX[j]] in (PRESENT, UNCERTAIN):
            side[j] = _SIDE_CODE.get((laterality or {}).get(name), 0)
    return render_trajectory(state, code, side)


def write_truth_trajectories(trajectories: str | Path, truth: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Re-write every record under ``trajectories`` with its image's truth-rendered text into ``out_dir``.

    Layout and record count are unchanged (``<out_dir>/<teacher>/part-*.jsonl``); ``raw``, ``reasoning``,
    ``answer``, ``labels`` and ``laterality`` become the truth's; refusals and failed requests are copied
    as they are (the learn stage drops them, as it drops the teachers'). A record whose image has no
    truth raises :class:`cxr_max.errors.DataError` naming the file and line.
    """
    from cxr_max.errors import DataError
    from cxr_max.trajectories.parse import split_answer

    src, out = Path(trajectories), Path(out_dir)
    files = sorted(p for p in src.rglob("*.jsonl") if p.is_file())
    if not files:
        raise DataError("no *.jsonl trajectory shards found", path=src)
    cache: dict[str, str] = {}
    for f in files:
        target = out / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("refusal") or rec.get("status", "ok") != "ok" or rec.get("raw") is None:
                lines.append(line)
                continue
            t = truth.get(rec["dicom_id"])
            if t is None:
                raise DataError(f"no ground truth for dicom_id {rec['dicom_id']}", path=f, row=lineno)
            if rec["dicom_id"] not in cache:
                cache[rec["dicom_id"]] = truth_trajectory(t.labels, t.laterality)
            raw = cache[rec["dicom_id"]]
            reasoning, answer = split_answer(raw)
            rec.update(raw=raw, reasoning=reasoning, answer=answer, labels=dict(t.labels),
                       laterality={k: t.laterality.get(k) for k in LATERAL_FINDINGS})
            lines.append(json.dumps(rec, ensure_ascii=False))
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        tmp.replace(target)
    return out


def closest_to_truth(texts: list[str], labels: Mapping[str, float | None],
                     findings: tuple[str, ...] = STATED_FINDINGS, rng: random.Random | None = None) -> int | None:
    """Index of the trajectory that agrees with the true ``labels`` on most of ``findings`` (present vs not),
    or None when no trajectory states anything (all refusals or empty). Hedged truths are left out of the count.

    Ties (most images: several teachers get all six right) are broken by ``rng`` when given, else the first
    tied trajectory. A fixed order hands most positives to one teacher, and with them its style: measured on
    the 400-patient world, first-on-ties made one teacher (sim-gemini-2.5-flash-lite, the one whose style
    the learn student ties to missed effusions after its sudden drift) the positive of 40 % of the rows, and the
    positive control lost effusion sensitivity (32/39 -> 24/39 test positives). ``control_preferences`` draws
    ties at random, seeded per image."""
    from cxr_max.evaluation.labeler import label_reports
    from cxr_max.trajectories.parse import is_refusal

    usable = [i for i, x in enumerate(texts) if x and not is_refusal(x)]
    if not usable:
        return None
    read = label_reports([texts[i] for i in usable])
    keep = [f for f in findings if labels.get(f) != -1.0]
    score = [sum((lab.get(f) == 1.0) == (labels.get(f) == 1.0) for f in keep) for lab in read]
    tied = [usable[j] for j, v in enumerate(score) if v == max(score)]
    return rng.choice(tied) if rng is not None else tied[0]


def control_preferences(rows: Iterable[Mapping[str, Any]], truth: Mapping[str, Any], kind: ControlKind, *,
                        seed: int = 0, positive: str = "closest") -> list[dict[str, Any]]:
    """Control rows from compare-stage preference ``rows`` (same images, same teachers, uniform weights).

    ``positive``: chosen = the image's teacher trajectory closest to the truth (:func:`closest_to_truth`;
    with ``positive="rendered"`` the truth-rendered text of :func:`truth_trajectory` instead); every other
    teacher trajectory (the row's chosen one too, when a teacher's) is rejected. Picking a teacher's own text
    keeps the positive in the teachers' phrasing, so the control differs from the method only in which
    trajectory is preferred (the truth decides instead of the consensus), not in its wording.
    ``negative``: chosen = one teacher trajectory drawn at random (seeded per image) among the non-refusals;
    the rest are rejected. Rows left without a negative are dropped (rare: one teacher answered).
    """
    from cxr_max.trajectories.parse import is_refusal

    if kind not in ("positive", "negative"):
        raise ValueError(f"kind must be positive or negative, not {kind!r}")
    if positive not in ("closest", "rendered"):
        raise ValueError(f"positive must be closest or rendered, not {positive!r}")
    out = []
    for row in rows:
        texts = list(row["rejected"])
        names = list(row["rejected_teachers"])
        source = row.get("consensus_source")
        if source and source not in ("rendered", "model") and row["chosen"] not in texts:
            texts.append(row["chosen"])  # the consensus positive was a teacher's own trajectory
            names.append(source)
        if kind == "positive":
            t = truth[row["dicom_id"]]
            if positive == "rendered":
                chosen, chosen_source = truth_trajectory(t.labels, t.laterality), "truth"
            else:
                best = closest_to_truth(texts, t.labels, rng=random.Random(f"{seed}:positive:{row['dicom_id']}"))
                if best is None:
                    continue
                chosen, chosen_source = texts[best], f"closest to the truth: {names[best]}"
            pairs = [(x, n) for x, n in zip(texts, names) if x != chosen]
        else:
            r = random.Random(f"{seed}:{row['dicom_id']}")
            usable = [i for i, x in enumerate(texts) if x and not is_refusal(x)]
            if len(usable) < 2:
                continue
            pick = r.choice(usable)
            chosen, chosen_source = texts[pick], f"random teacher {names[pick]}"
            pairs = [(x, n) for i, (x, n) in enumerate(zip(texts, names)) if i != pick and x != chosen]
        if not pairs:
            continue
        new = dict(row)
        new.update(chosen=chosen, rejected=[x for x, _ in pairs], rejected_teachers=[n for _, n in pairs],
                   rejected_weights=[1.0] * len(pairs), consensus_method=f"control-{kind}",
                   consensus_source=chosen_source)
        new.pop("rejected_agreement", None)
        out.append(new)
    return out


def split_table(table: pa.Table, truth: Mapping[str, Any], split: str = "train") -> pa.Table:
    """The records of ``table`` whose image belongs to ``split`` (per the world's truth)."""
    keep = [bool(truth.get(d) is not None and truth[d].split == split) for d in table.column("dicom_id").to_pylist()]
    return table.filter(pa.array(keep))

"""Seven simulated drifting teachers, named after CXR-MAX's, with planted and measurable biases.

A teacher *perceives* each finding's true severity (:class:`~cxr_max.synthetic.world.ImageTruth`.severity)
with noise: a per-image component (the teacher's consistent impression of that image) plus a smaller
per-sample component (sampling variability). It calls a finding present above its threshold, hedges just
below it, and otherwise negates it or leaves it out, so subtle findings near the reporting threshold get
missed or over-called. On top of perception every teacher has its own *misreads* per finding (``miss``:
a perceived finding is not reported; ``false_positive``: an absent finding is reported, 30 % of them as a
hedge when the teacher hedges), decided by a coin keyed on (teacher, image, finding), so they are the same
for every sample of an image and independent of every other teacher. These teacher-specific errors put each
teacher's balanced accuracy on the six headline findings near what real MLLMs reach on chest X-rays (about
.70-.83 per finding and .73-.81 over the six on a 3,000-patient world; MLLMs score roughly .5-.75 on
MS-CXR-T), while the teachers' consensus stays above the best of them on every finding (mean vote .89,
Dawid-Skene .92)
(:func:`cxr_max.drift.teacher_accuracy.teacher_accuracy_table` measures both). Planted behaviours then act
on those calls; every one of them is measurable against the truth. Behaviour may depend on ``stream_pos``
(the study's place in date order): that is the drift.

| teacher | style | profile | misreads (miss / false positive) | planted behaviours |
|---|---|---|---|---|
| sim-sonnet-4 | concise | high precision: states only clear findings, rarely negates; blind to small pneumothorax and mild edema | 0.25 (Consolidation 0.2, Edema 0.29, Pneumothorax 0.12) / 0.03 (Consolidation 0.13, Pneumothorax 0.025) | `high_precision` (threshold +0.15), `blind_spot` Pneumothorax (+0.06) and Edema (+0.05), shared errors A, C |
| sim-gpt-5-nano | verbose | high recall: over-calls and hedges a lot, negates everything | 0.14 (Cardiomegaly 0.2, Consolidation 0.09, Edema 0.18, Atelectasis 0.35, Pneumothorax 0.27) / 0.315 (Consolidation 0.415, Edema 0.365, Atelectasis 0, Pneumothorax 0.055) | `high_recall` (threshold -0.12), shared errors A, B |
| sim-glm-4.5v | balanced | low perception noise, weaker on pneumothorax | 0.27 (Cardiomegaly 0.33, Consolidation 0.22, Edema 0.31, Pneumothorax 0.33) / 0.085 (Consolidation 0.185, Edema 0.135, Pneumothorax 0.045) | shared errors B, C |
| sim-gemini-2.5-flash-lite | balanced | **sudden drift**: from stream position 0.5 on it misses 85 % of pleural effusions | 0.29 (Cardiomegaly 0.35, Pleural Effusion 0.17, Consolidation 0.3, Edema 0.33) / 0.04 (Consolidation 0.14, Edema 0.09, Pneumothorax 0.03) | `sudden_drift` (Pleural Effusion, start 0.5, rate 0.85), shared errors A, B |
| sim-moonshot-v1 | concise | refuses 25 % of requests ("As an AI, I cannot provide medical diagnoses"), hallucinates a finding in 20 %, weak on consolidation | 0.15 (Cardiomegaly 0.21, Consolidation 0.1, Edema 0.19, Pneumothorax 0.09) / 0.035 (Consolidation 0.135, Edema 0.085) | `refusal` (0.25), `hallucination` (0.2), `blind_spot` Consolidation (+0.15), shared errors A, C |
| sim-qwen-vl-max | verbose | **laterality confusion**: swaps left and right on 45 % of sided findings | 0.27 (Cardiomegaly 0.33, Consolidation 0.22, Edema 0.31, Pneumothorax 0.33) / 0.105 (Consolidation 0.205, Edema 0.155, Pneumothorax 0.045) | `laterality_swap` (0.45), shared errors B, C |
| sim-grok-4 | balanced | **gradual drift**: each core finding's call is flipped with a probability ramping from 0 at stream 0 to 0.35 at stream 1 | 0.17 (Cardiomegaly 0.23, Consolidation 0.12, Edema 0.21, Pneumothorax 0.11) / 0.035 (Consolidation 0.135, Edema 0.085) | `gradual_drift` (max rate 0.35), shared errors A, B, C |

Shared errors (a wrong *majority*: five of seven teachers make the same mistake on the same images, decided
by a coin keyed on the image, not the teacher):

- A: in stream window [0.5, 0.68), true pneumothorax (stated or hedged) is called absent (rate 0.85);
- B: in stream window [0.2, 0.4), patients with true cardiomegaly and no edema are called edematous (rate 1.0);
- C: in stream window [0.72, 0.92), images with a true pleural effusion get atelectasis on the same side (rate 0.8).

The windows are narrow enough that the consensus still beats every teacher on every finding over the whole
stream, and wide enough that the drift report finds them on the two honest teachers of each.

All teachers also read an AP (portable) heart as larger (+0.08 perceived cardiomegaly): the AP magnification
that real readers correct for. For the ``explain`` task the true diagnoses are in the prompt: teachers do not
miss them (no misreads), but still refuse, swap sides, hallucinate and make the shared false positives.
Positive and negative statements are written so that a rule-based CheXpert-style labeler (mentions +
negation + uncertainty cues) reads back exactly :meth:`SimulatedTeacher.claims`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS, TABLE_FINDINGS, label_key
from cxr_max.synthetic.world import FINDING_KEYS, POSITIVE_AT, ImageTruth
from cxr_max.trajectories.prompts import answer_sentence

# Findings a teacher perceives directly, and the severity keys behind them.
CORE: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation_left", "consolidation_right"),
    "Edema": ("edema",),
    "Atelectasis": ("atelectasis_left", "atelectasis_right"),
    "Pleural Effusion": ("effusion_left", "effusion_right"),
    "Pneumothorax": ("pneumothorax_left", "pneumothorax_right"),
    "Support Devices": ("support_devices",),
}
_READ = tuple(f for f in CORE if f != "Support Devices")  # findings with teacher-specific misreads
_NO_FINDING_EXCLUDES = ("No Finding", "Support Devices")
# The paper's six headline findings (the order of its tables).
HEADLINE_FINDINGS = TABLE_FINDINGS
_TASKS = ("diagnose", "explain", "report")


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


SHARED_ERRORS: tuple[dict[str, Any], ...] = (
    {"kind": "shared_error", "id": "A", "finding": "Pneumothorax", "effect": "miss", "window": (0.5, 0.68),
     "rate": 0.85, "condition": None,
     "teachers": ("sim-sonnet-4", "sim-gpt-5-nano", "sim-gemini-2.5-flash-lite", "sim-moonshot-v1", "sim-grok-4")},
    {"kind": "shared_error", "id": "B", "finding": "Edema", "effect": "false_positive", "window": (0.2, 0.4),
     "rate": 1.0, "condition": "Cardiomegaly",
     "teachers": ("sim-gpt-5-nano", "sim-glm-4.5v", "sim-gemini-2.5-flash-lite", "sim-qwen-vl-max", "sim-grok-4")},
    {"kind": "shared_error", "id": "C", "finding": "Atelectasis", "effect": "false_positive", "window": (0.72, 0.92),
     "rate": 0.8, "condition": "Pleural Effusion",
     "teachers": ("sim-sonnet-4", "sim-glm-4.5v", "sim-moonshot-v1", "sim-qwen-vl-max", "sim-grok-4")},
)


def shared_error_applies(err: dict[str, Any], truth: ImageTruth, seed: int = 0) -> bool:
    """Whether shared error ``err`` hits this image (the same answer for every participating teacher)."""
    lo, hi = err["window"]
    if not lo <= truth.stream_pos < hi:
        return False
    lab = truth.labels
    if err["effect"] == "miss":
        if lab.get(err["finding"]) not in (1.0, -1.0):
            return False
    else:
        if lab.get(err["finding"]) in (1.0, -1.0):
            return False
        if err["condition"] and lab.get(err["condition"]) != 1.0:
            return False
    return random.Random(stable_hash(seed, "shared", err["id"], truth.dicom_id)).random() < err["rate"]


@dataclasses.dataclass
class _Call:
    """A teacher's decided statements for one (image, task, sample) before they become text."""

    labels: dict[str, float | None]
    laterality: dict[str, str | None]
    refused: bool
    perceived: dict[str, float]  # perceived severity per core finding (for size words)
    devices: int


@dataclasses.dataclass
class SimulatedTeacher:
    """A simulated teacher MLLM: perceives the truth with noise and planted biases, writes trajectories."""

    name: str
    version: str
    profile: str
    style: str = "balanced"  # "concise" | "balanced" | "verbose"
    noise: float = 0.08  # per-image perception noise (std of severity error)
    sample_noise: float = 0.03  # per-sample perception noise
    threshold: float = POSITIVE_AT  # perceived severity at which a finding is called present
    hedge: float = 0.06  # width below the threshold in which a finding is called "possible"
    negate: float = 0.7  # probability of stating a negative finding explicitly
    pneumonia: float = 0.4  # probability of calling consolidation pneumonia
    planted: list[dict] = dataclasses.field(default_factory=list)
    # Teacher-specific reading errors, per core finding (independent of every other teacher): the chance
    # that a finding it perceives is missed on an image, and that an absent one is called on an image.
    miss: dict[str, float] = dataclasses.field(default_factory=dict)
    false_positive: dict[str, float] = dataclasses.field(default_factory=dict)

    # -- decisions -------------------------------------------------------------------------------------
    def _planted(self, kind: str) -> list[dict]:
        return [p for p in self.planted if p["kind"] == kind]

    def _decide(self, truth: ImageTruth, task: str, sample: int, seed: int) -> _Call:
        if task not in _TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {list(_TASKS)}")
        r_img = random.Random(stable_hash(seed, self.name, truth.dicom_id))
        r = random.Random(stable_hash(seed, self.name, truth.dicom_id, task, sample))
        labels: dict[str, float | None] = {name: None for name in CHEXPERT_LABELS}
        lat: dict[str, str | None] = {name: None for name in LATERAL_FINDINGS}
        img_noise = {k: r_img.gauss(0.0, self.noise) for k in FINDING_KEYS}
        for p in self._planted("refusal"):
            if r.random() < p["rate"]:
                return _Call(labels, lat, True, {}, 0)
        pos = truth.stream_pos
        shifts = {p["finding"]: p["threshold_shift"] for p in self._planted("blind_spot")}
        perceived: dict[str, float] = {}
        perceived_of: dict[str, float] = {}
        for finding, keys in CORE.items():
            vals = {}
            for k in keys:
                v = truth.severity[k] + img_noise[k] + r.gauss(0.0, self.sample_noise)
                if k == "cardiomegaly" and truth.view == "AP":
                    v += 0.08
                if k == "support_devices":
                    v = truth.severity[k]  # devices are unmistakable
                vals[k] = v
                perceived_of[k] = v
            t = self.threshold + shifts.get(finding, 0.0)
            best = max(vals.values())
            perceived[finding] = best
            if task == "explain":  # the true diagnoses are given: the teacher explains those
                tv = truth.labels.get(finding)
                status = 1.0 if tv == 1.0 else (0.0 if r.random() < self.negate else None)
            elif best >= t:
                status = 1.0
            elif best >= t - self.hedge:
                status = -1.0
            else:
                status = 0.0 if r.random() < self.negate else None
            if finding == "Support Devices":  # unmistakable when present; nobody writes "no support devices"
                status = 1.0 if truth.severity["support_devices"] > 0 else None
            labels[finding] = status
            if finding in LATERAL_FINDINGS and status in (1.0, -1.0):
                if task == "explain" and truth.laterality.get(finding):
                    lat[finding] = truth.laterality[finding]
                else:
                    sides = [k.rsplit("_", 1)[1] for k in keys if vals[k] >= t - self.hedge] or [
                        max(keys, key=vals.__getitem__).rsplit("_", 1)[1]]
                    lat[finding] = "bilateral" if len(sides) == 2 else sides[0]
        devices = int(round(truth.severity["support_devices"] * 3))

        def set_positive(finding: str, side: str | None) -> None:
            labels[finding] = 1.0
            if finding in LATERAL_FINDINGS:
                lat[finding] = side or r.choice(("left", "right"))

        def set_negative(finding: str) -> None:
            labels[finding] = 0.0
            if finding in LATERAL_FINDINGS:
                lat[finding] = None

        def _forget(finding: str) -> None:
            labels[finding] = None
            if finding in LATERAL_FINDINGS:
                lat[finding] = None

        if task != "explain":
            # Teacher-specific misreads: a coin per (teacher, image, finding), the same for every sample.
            for finding in _READ:
                u = random.Random(stable_hash(seed, self.name, truth.dicom_id, finding, "misread")).random()
                if labels[finding] in (1.0, -1.0):
                    if u < self.miss.get(finding, 0.0):
                        if r.random() < self.negate:
                            set_negative(finding)
                        else:
                            _forget(finding)
                elif u < self.false_positive.get(finding, 0.0):
                    keys = CORE[finding]
                    side = max(keys, key=perceived_of.__getitem__).rsplit("_", 1)[1] if len(keys) == 2 else None
                    if self.hedge > 0 and u < 0.3 * self.false_positive[finding]:
                        labels[finding] = -1.0
                        if finding in LATERAL_FINDINGS:
                            lat[finding] = side
                    else:
                        set_positive(finding, side)
            for p in self._planted("sudden_drift"):
                if pos >= p["start"] and labels[p["finding"]] in (1.0, -1.0) and r.random() < p["rate"]:
                    set_negative(p["finding"])
            for p in self._planted("gradual_drift"):
                rate = p["max_rate"] * pos
                for finding in p["findings"]:
                    if r.random() < rate:
                        if labels[finding] in (1.0, -1.0):
                            set_negative(finding)
                        else:
                            set_positive(finding, None)
        for err in self._planted("shared_error"):
            if err["effect"] == "miss" and task == "explain":
                continue
            if shared_error_applies(err, truth, seed):
                if err["effect"] == "miss":
                    set_negative(err["finding"])
                else:
                    cond_side = truth.laterality.get(err["condition"]) if err["condition"] else None
                    set_positive(err["finding"], cond_side)
        for p in self._planted("laterality_swap"):
            for finding in LATERAL_FINDINGS:
                if lat[finding] in ("left", "right") and r.random() < p["rate"]:
                    lat[finding] = "right" if lat[finding] == "left" else "left"
        for p in self._planted("hallucination"):
            if r.random() < p["rate"]:
                options = [f for f in p["findings"] if labels.get(f) not in (1.0, -1.0)]
                if options:
                    f = r.choice(options)
                    labels[f] = 1.0
                    if f in LATERAL_FINDINGS:
                        lat[f] = r.choice(("left", "right"))
                    elif f == "Support Devices":
                        devices = max(devices, 1)
        if labels["Support Devices"] == 1.0:
            devices = max(devices, 1)
        # Derived labels.
        if labels["Consolidation"] in (1.0, -1.0):
            labels["Lung Opacity"] = labels["Consolidation"]
            if labels["Consolidation"] == 1.0 and r_img.random() < self.pneumonia:
                labels["Pneumonia"] = 1.0 if self.hedge < 0.08 else -1.0
        abnormal = any(labels[n] in (1.0, -1.0) for n in CHEXPERT_LABELS if n not in _NO_FINDING_EXCLUDES)
        if not abnormal:
            labels["No Finding"] = 1.0
        return _Call(labels, lat, False, perceived, devices)

    def claims(self, truth: ImageTruth, *, task: str = "diagnose", sample: int = 0, seed: int = 0
               ) -> tuple[dict[str, float | None], dict[str, str | None], bool]:
        """What this teacher asserts for the image: (14 CheXpert labels, laterality, refused).

        Deterministic in (seed, teacher, dicom_id, task, sample). A refusal asserts nothing (all None).
        """
        c = self._decide(truth, task, sample, seed)
        return c.labels, c.laterality, c.refused

    def respond(self, truth: ImageTruth, *, task: str = "diagnose", sample: int = 0, seed: int = 0) -> str:
        """The raw completion: ``<think> observations </think>`` + the answer, stating exactly claims()."""
        return compose(self, truth, self._decide(truth, task, sample, seed), task, sample, seed)


# -- text ------------------------------------------------------------------------------------------------

_REFUSALS = (
    "As an AI, I cannot provide medical diagnoses. Please consult a qualified radiologist to interpret this chest X-ray.",
    "<think> The user is asking me to interpret a medical image and give a diagnosis. </think>I'm sorry, but I am "
    "not able to provide a medical diagnosis from an image. Please consult a radiologist or your physician.",
    "As an AI language model, I cannot interpret medical images or make diagnoses. Please consult with a "
    "healthcare professional.",
)
_OPENERS = {
    "concise": ("", "Frontal chest radiograph.", ""),
    "balanced": ("I review the chest radiograph.", "Let me assess the image step by step.",
                 "I look at the heart, lungs, pleura and devices."),
    "verbose": ("Let me review this chest radiograph systematically, assessing the heart, mediastinum, lungs, "
                "pleural spaces and any lines or tubes.",
                "I will examine the image in order: cardiac silhouette, lung fields, costophrenic angles, "
                "apices and any lines.",
                "To answer, I go through the radiograph region by region and weigh each observation."),
}
_VIEW_NOTE = {"AP": "This is a portable AP view, which magnifies the heart.", "PA": "This is a PA view.",
              "LATERAL": "This is a lateral view."}


def _size(v: float) -> str:
    return "small" if v < 0.55 else "moderate" if v < 0.8 else "large"


def _where(side: str | None, single: str, both: str) -> str:
    return both if side == "bilateral" else single.format(side=side or "left")


def _sentence(finding: str, status: float, side: str | None, call: _Call, r: random.Random) -> str:
    """One observation sentence that states ``status`` for ``finding`` (and nothing else)."""
    sz = _size(call.perceived.get(finding, 0.5))
    pick = r.choice
    if finding == "Cardiomegaly":
        return {1.0: pick(("The cardiac silhouette is enlarged, consistent with cardiomegaly.",
                           "The heart is enlarged, with an increased cardiothoracic ratio, in keeping with cardiomegaly.",
                           "Cardiomegaly is present.")),
                -1.0: pick(("The cardiac silhouette is at the upper limit of normal; possible mild cardiomegaly.",
                            "Mild cardiomegaly cannot be excluded.")),
                0.0: pick(("No cardiomegaly.", "The heart size is normal, without cardiomegaly.",
                           "There is no cardiomegaly."))}[status]
    if finding == "Pleural Effusion":
        angle = _where(side, "the {side} costophrenic angle", "both costophrenic angles")
        noun = "bilateral pleural effusions" if side == "bilateral" else f"a {sz} {side} pleural effusion"
        return {1.0: pick((f"Blunting of {angle} with a meniscus, consistent with {noun}.",
                           f"There is {noun} with a meniscus sign.")),
                -1.0: pick((f"Slight blunting of {angle}; a small {side} pleural effusion cannot be excluded.",
                            f"Possible small {side} pleural effusion.")),
                0.0: pick(("No pleural effusion.", "The costophrenic angles are sharp, without pleural effusion.",
                           "The pleural spaces are free of effusion."))}[status]
    if finding == "Pneumothorax":
        apex = _where(side, "the {side} apex", "both apices")
        return {1.0: pick((f"A visceral pleural line is seen at {apex} with absent lung markings beyond it, "
                           f"consistent with a {side} pneumothorax.",
                           f"There is a {sz} {side} pneumothorax.")),
                -1.0: pick((f"A faint line at {apex} may represent a small {side} pneumothorax.",
                            f"A tiny {side} apical pneumothorax cannot be excluded.")),
                0.0: pick(("No pneumothorax.", "There is no evidence of pneumothorax.", "No pneumothorax is seen."))}[status]
    if finding == "Consolidation":
        zone = _where(side, "the {side} lower zone", "both lower zones")
        if status == 1.0:
            pna = call.labels.get("Pneumonia")
            tail = ", in keeping with pneumonia." if pna == 1.0 else "; this may represent pneumonia." if pna == -1.0 else "."
            return pick((f"Patchy airspace opacity in {zone} consistent with consolidation{tail}",
                         f"There is focal consolidation with airspace opacity in {zone}{tail}"))
        return {-1.0: pick((f"Subtle opacity in {zone} may represent early consolidation.",
                            f"Possible consolidation with faint opacity in {zone}.")),
                0.0: pick(("No focal consolidation.", "The lungs are without consolidation.",
                           "There is no consolidation."))}[status]
    if finding == "Edema":
        return {1.0: pick(("Bilateral perihilar haziness with vascular congestion, consistent with pulmonary edema.",
                           f"There is {'mild' if sz == 'small' else sz} pulmonary edema with perihilar haziness.")),
                -1.0: pick(("Mild perihilar haziness may reflect early pulmonary edema.", "Possible mild interstitial edema.")),
                0.0: pick(("No pulmonary edema.", "There is no evidence of pulmonary edema.",
                           "The pulmonary vasculature is normal without edema."))}[status]
    if finding == "Atelectasis":
        base = _where(side, "the {side} base", "both bases")
        return {1.0: pick((f"A linear plate-like band at {base}, consistent with atelectasis.",
                           f"There is atelectasis at {base}.")),
                -1.0: pick((f"Possible minimal atelectasis at {base}.", f"Minimal atelectasis at {base} cannot be excluded.")),
                0.0: pick(("No atelectasis.", "There is no atelectasis."))}[status]
    if finding == "Support Devices":
        items = ["an endotracheal tube", "a right internal jugular central venous catheter", "a left chest wall pacemaker"]
        items = items[: max(1, call.devices)]
        listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        return f"Support devices are in place, including {listed}."
    if finding == "Lung Lesion":
        return f"A small nodule is noted in the {r.choice(('left', 'right'))} upper lobe."
    if finding == "Fracture":
        return f"There is a fracture of a {r.choice(('left', 'right'))} posterior rib."
    raise KeyError(finding)


_ORDER = ("Cardiomegaly", "Consolidation", "Edema", "Atelectasis", "Pleural Effusion", "Pneumothorax",
          "Support Devices", "Lung Lesion", "Fracture")


def answer_items(labels: dict[str, float | None], lat: dict[str, str | None]) -> list[str]:
    """The diagnoses named in the answer sentence, e.g. ['cardiomegaly', 'possible left pleural effusion']."""
    names = {"Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation", "Edema": "pulmonary edema",
             "Atelectasis": "atelectasis", "Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax",
             "Support Devices": "support devices", "Lung Lesion": "lung nodule", "Fracture": "rib fracture"}
    out = []
    for f in _ORDER:
        v = labels.get(f)
        if v not in (1.0, -1.0):
            continue
        text = names[f]
        if lat.get(f):
            text = f"{lat[f]} {text}"
        out.append(("possible " if v == -1.0 else "") + text)
        if f == "Consolidation" and labels.get("Pneumonia") in (1.0, -1.0):
            out.append(("possible " if labels["Pneumonia"] == -1.0 else "") + "pneumonia")
    return out


def compose(teacher: SimulatedTeacher, truth: ImageTruth, call: _Call, task: str, sample: int, seed: int) -> str:
    """Write the completion for a decided call (reasoning in <think>, then the answer in the task's form)."""
    return compose_parts(teacher, truth, call, task, sample, seed)[2]


def compose_parts(teacher: SimulatedTeacher, truth: ImageTruth, call: _Call, task: str, sample: int, seed: int
                  ) -> tuple[str | None, str | None, str]:
    """``(reasoning, answer, raw)`` of the completion; reasoning/answer are None for a refusal."""
    r = random.Random(stable_hash(seed, teacher.name, truth.dicom_id, task, sample, "text"))
    if call.refused:
        return None, None, r.choice(_REFUSALS)
    sentences = []
    for f in _ORDER:
        v = call.labels.get(f)
        if v is None or (f == "Consolidation" and v is None):
            continue
        sentences.append(_sentence(f, v, call.laterality.get(f), call, r))
    positives = [s for s, f in zip(sentences, [f for f in _ORDER if call.labels.get(f) is not None])
                 if call.labels[f] in (1.0, -1.0)]
    if teacher.style != "concise" and sample % 2 == 1:
        # Sampling variability: another reading order (negatives first).
        sentences = [s for s in sentences if s not in positives] + positives
    opener = r.choice(_OPENERS[teacher.style])
    parts = [opener] if opener else []
    if teacher.style != "concise":
        parts.append(_VIEW_NOTE[truth.view])
    parts += sentences
    if call.labels.get("No Finding") == 1.0:
        parts.append(r.choice(("No acute cardiopulmonary abnormality is identified.",
                               "Overall there is no acute cardiopulmonary abnormality.")))
    if teacher.style == "verbose":
        parts.append(r.choice(("Putting these observations together gives the diagnosis below.",
                               "These observations support the following conclusion.")))
    reasoning = " ".join(parts)
    if task == "report":
        impression = " ".join(positives) if positives else "No acute cardiopulmonary process."
        answer = f"FINDINGS: {' '.join(sentences) or 'No acute cardiopulmonary abnormality.'}\nIMPRESSION: {impression}"
    else:
        answer = answer_sentence(answer_items(call.labels, call.laterality))
    return reasoning, answer, f"<think> {reasoning} </think>{answer}"


def _rates(base: float, **per_finding: float) -> dict[str, float]:
    """A per-finding rate dict: ``base`` for every read finding, keyword overrides by label key."""
    names = {label_key(f): f for f in _READ}
    out = {f: base for f in _READ}
    for key, v in per_finding.items():
        out[names[key]] = v
    return out


def _teachers() -> dict[str, SimulatedTeacher]:
    def shared(name: str) -> list[dict]:
        return [dict(e) for e in SHARED_ERRORS if name in e["teachers"]]

    ts = [
        SimulatedTeacher(
            "sim-sonnet-4", "claude-sonnet-4-20250514+sim3",
            "concise, high precision: states only clear findings and rarely negates; misses small pneumothorax and mild edema",
            style="concise", noise=0.05, threshold=POSITIVE_AT + 0.15, hedge=0.0, negate=0.35, pneumonia=0.2,
            miss=_rates(0.25, consolidation=0.2, edema=0.29, pneumothorax=0.12), false_positive=_rates(0.03, consolidation=0.13, pneumothorax=0.025),
            planted=[{"kind": "high_precision", "threshold_shift": 0.15},
                     {"kind": "blind_spot", "finding": "Pneumothorax", "threshold_shift": 0.06},
                     {"kind": "blind_spot", "finding": "Edema", "threshold_shift": 0.05}] + shared("sim-sonnet-4")),
        SimulatedTeacher(
            "sim-gpt-5-nano", "gpt-5-nano-2025-08-07+sim3",
            "verbose, high recall: over-calls and hedges, negates everything",
            style="verbose", noise=0.06, threshold=POSITIVE_AT - 0.12, hedge=0.1, negate=0.95, pneumonia=0.7,
            miss=_rates(0.14, cardiomegaly=0.2, consolidation=0.09, edema=0.18, atelectasis=0.35, pneumothorax=0.27), false_positive=_rates(0.315, consolidation=0.415, edema=0.365, atelectasis=0, pneumothorax=0.055),
            planted=[{"kind": "high_recall", "threshold_shift": -0.12}] + shared("sim-gpt-5-nano")),
        SimulatedTeacher(
            "sim-glm-4.5v", "glm-4.5v+sim3", "balanced and the most accurate overall, weaker on pneumothorax",
            style="balanced", noise=0.04, threshold=POSITIVE_AT, hedge=0.05, negate=0.8, pneumonia=0.5,
            miss=_rates(0.27, cardiomegaly=0.33, consolidation=0.22, edema=0.31, pneumothorax=0.33), false_positive=_rates(0.085, consolidation=0.185, edema=0.135, pneumothorax=0.045),
            planted=shared("sim-glm-4.5v")),
        SimulatedTeacher(
            "sim-gemini-2.5-flash-lite", "gemini-2.5-flash-lite+sim3",
            "balanced; sudden drift: from stream position 0.5 it misses most pleural effusions",
            style="balanced", noise=0.05, threshold=POSITIVE_AT, hedge=0.05, negate=0.7, pneumonia=0.4,
            miss=_rates(0.29, cardiomegaly=0.35, pleural_effusion=0.17, consolidation=0.3, edema=0.33), false_positive=_rates(0.04, consolidation=0.14, edema=0.09, pneumothorax=0.03),
            planted=[{"kind": "sudden_drift", "finding": "Pleural Effusion", "start": 0.5, "effect": "miss",
                      "rate": 0.85}] + shared("sim-gemini-2.5-flash-lite")),
        SimulatedTeacher(
            "sim-moonshot-v1", "moonshot-v1-128k-vision-preview+sim3",
            "concise; refuses a quarter of requests, hallucinates findings, weak on consolidation",
            style="concise", noise=0.06, threshold=POSITIVE_AT, hedge=0.0, negate=0.5, pneumonia=0.3,
            miss=_rates(0.15, cardiomegaly=0.21, consolidation=0.1, edema=0.19, pneumothorax=0.09), false_positive=_rates(0.035, consolidation=0.135, edema=0.085),
            planted=[{"kind": "refusal", "rate": 0.25},
                     {"kind": "hallucination", "rate": 0.2,
                      "findings": ["Consolidation", "Pneumothorax", "Atelectasis", "Lung Lesion", "Fracture"]},
                     {"kind": "blind_spot", "finding": "Consolidation", "threshold_shift": 0.15}] + shared("sim-moonshot-v1")),
        SimulatedTeacher(
            "sim-qwen-vl-max", "qwen-vl-max-2025-08-13+sim3",
            "verbose; laterality confusion: swaps left and right on 45% of sided findings",
            style="verbose", noise=0.05, threshold=POSITIVE_AT - 0.03, hedge=0.06, negate=0.85, pneumonia=0.5,
            miss=_rates(0.27, cardiomegaly=0.33, consolidation=0.22, edema=0.31, pneumothorax=0.33), false_positive=_rates(0.105, consolidation=0.205, edema=0.155, pneumothorax=0.045),
            planted=[{"kind": "laterality_swap", "rate": 0.45}] + shared("sim-qwen-vl-max")),
        SimulatedTeacher(
            "sim-grok-4", "grok-4-0709+sim3",
            "balanced; gradual drift: its error rate ramps up along the stream",
            style="balanced", noise=0.05, threshold=POSITIVE_AT, hedge=0.05, negate=0.75, pneumonia=0.5,
            miss=_rates(0.17, cardiomegaly=0.23, consolidation=0.12, edema=0.21, pneumothorax=0.11), false_positive=_rates(0.035, consolidation=0.135, edema=0.085),
            planted=[{"kind": "gradual_drift", "max_rate": 0.35,
                      "findings": ["Cardiomegaly", "Pleural Effusion", "Consolidation", "Edema", "Atelectasis",
                                   "Pneumothorax"]}] + shared("sim-grok-4")),
    ]
    return {t.name: t for t in ts}


SIM_TEACHERS: dict[str, SimulatedTeacher] = _teachers()


def teachers_fingerprint(teachers: dict[str, SimulatedTeacher] | None = None) -> str:
    """A short hash of every simulated teacher's definition (rates, thresholds, planted behaviours): the
    cached trajectories of a synthetic world are written again when it changes."""
    teachers = SIM_TEACHERS if teachers is None else teachers
    return f"{stable_hash(*(repr(t) for t in teachers.values())):016x}"

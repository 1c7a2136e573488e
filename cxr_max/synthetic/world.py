"""The synthetic patients: identifiers, study dates, splits, domains and the true severity of each finding.

Everything here is drawn from a numpy Generator seeded by ``(seed, patient index)``, so a patient is the
same whatever the number of patients or the order in which they are generated. The only global step is
``stream_pos``: the rank of each study in the global (StudyDate, StudyTime) order, scaled to [0, 1).

Severity model. Each patient has a set of disease *processes* (a finding on a side, with a start level and
a trend). A study's severity of a finding is ``clip(start + trend * months + noise)``; a finding absent in
the patient has severity 0 (cardiomegaly: a small normal-heart value). Severity maps to what the report
states (:mod:`cxr_max.synthetic.reports`): at or above :data:`POSITIVE_AT` it is stated as present, in
``[UNCERTAIN_AT, POSITIVE_AT)`` it is hedged ("possible ..."), below it is negated or not mentioned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from cxr_max.errors import DataError

FINDING_KEYS: tuple[str, ...] = (
    "cardiomegaly",
    "effusion_left",
    "effusion_right",
    "consolidation_left",
    "consolidation_right",
    "pneumothorax_left",
    "pneumothorax_right",
    "edema",
    "atelectasis_left",
    "atelectasis_right",
    "support_devices",
)
# Severity thresholds shared by reports (truth) and teachers (perception).
POSITIVE_AT = 0.35
UNCERTAIN_AT = 0.2

# Finding processes: (name, patient prevalence, sided?)
_PROCESSES: tuple[tuple[str, float, bool], ...] = (
    ("cardiomegaly", 0.32, False),
    ("effusion", 0.28, True),
    ("consolidation", 0.22, True),
    ("pneumothorax", 0.12, True),
    ("edema", 0.2, True),  # "sided" only in the sense that it is always bilateral
    ("atelectasis", 0.22, True),
)
_SPLITS = (("train", 0.7), ("validate", 0.8), ("test", 1.0))
_STUDIES_P = np.array([0.35, 0.25, 0.17, 0.11, 0.07, 0.05])  # 1..6 studies per patient
_EPOCH = dt.date(2110, 1, 1)
_MAX_PATIENTS = 120_000  # keeps the id arithmetic inside PhysioNet's 8-digit ranges (full MIMIC scale: ~111k)

# Quirks of real copies, drawn from a generator of their own (seed, 271828, patient index), so they never
# change what the main generator draws: the frontal images, their truth and the teachers stay the same.
QUIRK_VIEWS: tuple[str, ...] = ("LL", "AP AXIAL", "PA LLD", "AP RLD", "LAO", "SWIMMERS", "XTABLE LATERAL", "")
# What each ViewPosition is rendered as (and recorded as ``ImageTruth.view``); "" (empty) is a frontal view
# whose ViewCodeSequence_CodeMeaning still says so.
VIEW_KIND = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LATERAL", "AP AXIAL": "AP", "PA LLD": "PA",
             "AP RLD": "AP", "LAO": "PA", "SWIMMERS": "LATERAL", "XTABLE LATERAL": "LATERAL", "": "PA"}
EXTRA_VIEW_RATE = 0.05  # studies with one more image in another view position
SECOND_FRONTAL_RATE = 0.02  # studies with two frontal images
LATERAL_ONLY_RATE = 0.04  # patients with an extra study holding a lateral only


@dataclasses.dataclass(frozen=True)
class ImageTruth:
    """Ground truth of one synthetic image (one line of ``truth.jsonl``; not part of real MIMIC)."""

    subject_id: str
    study_id: str
    dicom_id: str
    view: str  # "PA" | "AP" | "LATERAL": the projection rendered (ViewPosition may say more, see VIEW_KIND)
    study_date: str  # "YYYYMMDD"
    study_time: str  # "HHMMSS.fff"
    stream_pos: float  # rank of the study in global (date, time) order, scaled to [0, 1)
    split: str  # "train" | "validate" | "test"
    domain: str  # "default" | "shifted"
    severity: dict[str, float]
    labels: dict[str, float | None]  # the 14 CheXpert labels as the report states them
    laterality: dict[str, str | None]

    def to_json(self) -> str:
        """One JSON line (keys in field order, so the bytes are deterministic)."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageTruth":
        """Inverse of :meth:`to_json` (after ``json.loads``)."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class Study:
    """One study of a patient while the world is being generated (internal)."""

    study_id: str
    index: int  # 0-based order within the patient
    date: dt.date
    seconds: float  # time of day
    view: str  # frontal view: PA or AP
    has_lateral: bool
    domain: str
    severity: dict[str, float]
    dicom_ids: list[str]
    views: list[str]
    stream_pos: float = 0.0
    # Filled by reports.plan_study:
    labels: dict[str, float | None] = dataclasses.field(default_factory=dict)
    laterality: dict[str, str | None] = dataclasses.field(default_factory=dict)
    report: str = ""
    negbio_blank: tuple[str, ...] = ()
    # Quirks (see QUIRK_VIEWS and reports.apply_record_quirks): the ViewPosition written per image (None = the
    # same as ``views``), a study added with a lateral image only, no report file, a missing or blank label row.
    view_positions: list[str] | None = None
    extra: bool = False
    no_report: bool = False
    label_row: str = "normal"  # "normal" | "missing" | "blank"
    report_quirk: str | None = None  # which of reports.REPORT_QUIRKS the report text carries

    @property
    def meta_views(self) -> list[str]:
        return self.view_positions if self.view_positions is not None else list(self.views)

    @property
    def study_date(self) -> str:
        return self.date.strftime("%Y%m%d")

    @property
    def study_time(self) -> str:
        s = self.seconds
        h, rem = divmod(s, 3600)
        m, sec = divmod(rem, 60)
        return f"{int(h):02d}{int(m):02d}{sec:06.3f}"


@dataclasses.dataclass
class Patient:
    """One synthetic patient (internal)."""

    index: int
    subject_id: str
    split: str
    anatomy: dict[str, float]  # body/lung/heart geometry used by the renderer
    infectious: bool  # whether consolidation is called pneumonia in reports
    studies: list[Study]


def _dicom_id(rng: np.random.Generator) -> str:
    h = rng.bytes(20).hex()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def _subject_id(index: int, r: int) -> str:
    """PhysioNet's subject range is 10,000,000-19,999,999: blocks of 997 for the first 9,000 patients, then
    blocks of 8 up to the 120,000th (MIMIC-CXR has 65,379 patients with more studies each)."""
    if index < 9_000:
        return str(10_000_000 + index * 997 + r)
    return str(18_973_000 + (index - 9_000) * 8 + r % 8)


def _study_id(index: int, k: int, r: int) -> str:
    """PhysioNet's study range is 50,000,000-59,999,999. Patient ``index`` < 20,000 owns a block of 499 ids
    (offsets 0-359 for its 6 studies, 360-379 for an added lateral-only study); later patients share the
    blocks' offsets 380-484 (21 each, 5 per block), so ids stay valid up to 120,000 patients."""
    if index < 20_000:
        offset = k * 60 + r if k < 6 else 360 + r % 20
        return str(50_000_000 + index * 499 + offset)
    j = index - 20_000
    return str(50_000_000 + (j % 20_000) * 499 + 380 + (j // 20_000) * 21 + min(k, 6) * 3 + r % 3)


def make_patient(index: int, seed: int, *, shift_rate: float = 0.15, shifted_test: bool = False,
                 quirks: bool = True, split: str | None = None) -> Patient:
    """Generate patient ``index`` of world ``seed`` (independent of every other patient).

    ``split`` puts the patient in that split instead of the one drawn for it (the draw is still made, so
    nothing else about the patient changes); the benchmark's extra test-only patients use it.

    ``quirks`` adds the real copies' image-level quirks (extra view positions, two frontals, a study with a
    lateral only) from a generator of their own, so the rest of the patient is the same with or without.
    """
    if not 0 <= index < _MAX_PATIENTS:
        raise ValueError(f"patient index must be in [0, {_MAX_PATIENTS}), got {index}")
    rng = np.random.default_rng([seed, 7919, index])
    subject_id = _subject_id(index, int(rng.integers(997)))
    u = rng.random()
    drawn = next(name for name, edge in _SPLITS if u < edge)
    if split is not None and split not in {name for name, _ in _SPLITS}:
        raise ValueError(f"split must be one of {[name for name, _ in _SPLITS]}, got {split!r}")
    split = split or drawn
    anatomy = {
        "body_w": float(rng.uniform(0.78, 0.95)),
        "lung_w": float(rng.uniform(0.9, 1.08)),
        "lung_h": float(rng.uniform(0.9, 1.1)),
        "heart_x": float(rng.uniform(0.05, 0.12)),
        "shift_x": float(rng.uniform(-0.04, 0.04)),
        "shift_y": float(rng.uniform(-0.04, 0.04)),
        "rib_phase": float(rng.uniform(0, 1)),
    }
    infectious = bool(rng.random() < 0.6)
    n_studies = int(rng.choice(len(_STUDIES_P), p=_STUDIES_P)) + 1

    # Disease processes: start severity and trend per month, per side.
    procs: dict[str, tuple[float, float]] = {}
    for name, prevalence, sided in _PROCESSES:
        present = rng.random() < prevalence
        if name == "cardiomegaly":
            if present:
                procs["cardiomegaly"] = (float(rng.beta(2.2, 2.0)), float(rng.normal(0.0, 0.03)))
            else:
                procs["cardiomegaly"] = (float(rng.uniform(0.0, 0.16)), 0.0)
            continue
        if not present:
            continue
        start = float(rng.beta(2.0, 2.2))
        trend = float(rng.normal(0.0, 0.14))
        if name == "edema":
            procs["edema"] = (start, trend)
            continue
        r = rng.random()
        sides = ["left"] if r < 0.4 else ["right"] if r < 0.8 else ["left", "right"]
        if name == "pneumothorax":
            sides = sides[:1]
        for k, side in enumerate(sides):
            s = start if k == 0 else float(np.clip(start * rng.uniform(0.5, 1.1), 0, 1))
            procs[f"{name}_{side}"] = (s, trend)
    devices_from, devices_to, devices_n = n_studies, -1, 0
    if rng.random() < 0.22:
        devices_from = int(rng.integers(n_studies))
        devices_to = int(rng.integers(devices_from, n_studies)) + 1
        devices_n = int(rng.integers(1, 4))

    # Study dates: the first in 2110-2190 (shifted like MIMIC), then gaps of days to months.
    first = _EPOCH + dt.timedelta(days=int(rng.integers(0, 80 * 365)))
    gaps = np.maximum(1, rng.exponential(55.0, size=n_studies)).astype(int)
    gaps[0] = 0
    days = np.cumsum(gaps)
    studies: list[Study] = []
    for k in range(n_studies):
        months = days[k] / 30.0
        sev: dict[str, float] = {}
        for key in FINDING_KEYS:
            if key == "support_devices":
                sev[key] = round(devices_n / 3, 4) if devices_from <= k < devices_to else 0.0
            elif key in procs:
                s0, trend = procs[key]
                noise = rng.normal(0.0, 0.04)
                sev[key] = round(float(np.clip(s0 + trend * months + noise, 0.0, 1.0)), 4)
            else:
                sev[key] = 0.0
        ap = sev["support_devices"] > 0 or rng.random() < 0.3
        view = "AP" if ap else "PA"
        has_lateral = bool(rng.random() < (0.08 if ap else 0.45))
        shifted = rng.random() < shift_rate or (shifted_test and split == "test")
        study_id = _study_id(index, k, int(rng.integers(60)))
        n_img = 2 if has_lateral else 1
        dicom_ids = [_dicom_id(rng) for _ in range(n_img)]
        studies.append(
            Study(
                study_id=study_id,
                index=k,
                date=first + dt.timedelta(days=int(days[k])),
                seconds=float(np.round(rng.uniform(0, 86399), 3)),
                view=view,
                has_lateral=has_lateral,
                domain="shifted" if shifted else "default",
                severity=sev,
                dicom_ids=dicom_ids,
                views=[view, "LATERAL"][:n_img],
            )
        )
    patient = Patient(index, subject_id, split, anatomy, infectious, studies)
    if quirks:
        add_image_quirks(patient, seed)
    return patient


def add_image_quirks(patient: Patient, seed: int) -> None:
    """Real copies' image-level quirks, from their own generator: one more image in another view position
    (``QUIRK_VIEWS``, empty included), a second frontal image, and (for some patients) an added study that
    holds a lateral only. Existing images are untouched."""
    q = np.random.default_rng([seed, 271828, patient.index])
    for s in patient.studies:
        u = q.random()
        if u < EXTRA_VIEW_RATE:
            view = QUIRK_VIEWS[int(q.integers(len(QUIRK_VIEWS)))]
            s.view_positions = s.meta_views + [view]
            s.dicom_ids.append(_dicom_id(q))
            s.views.append(VIEW_KIND[view])
        elif u < EXTRA_VIEW_RATE + SECOND_FRONTAL_RATE:
            s.view_positions = s.meta_views + [s.view]
            s.dicom_ids.append(_dicom_id(q))
            s.views.append(s.view)
    if patient.studies and q.random() < LATERAL_ONLY_RATE:
        base = patient.studies[int(q.integers(len(patient.studies)))]
        k = len(patient.studies)
        patient.studies.append(Study(
            study_id=_study_id(patient.index, 6, int(q.integers(60))), index=100 + k, date=base.date,
            seconds=float(min(base.seconds + 900.0, 86399.0)), view=base.view, has_lateral=True, domain=base.domain,
            severity=dict(base.severity), dicom_ids=[_dicom_id(q)], views=["LATERAL"], extra=True,
        ))


def assign_stream_positions(patients: list[Patient]) -> None:
    """Set each study's ``stream_pos``: its rank in global (date, time, study_id) order / number of studies.

    An added lateral-only study (a quirk) is left out of the ranking and shares the position of the study
    it was taken with, so quirks never move the other studies along the stream.
    """
    studies = [s for p in patients for s in p.studies if not s.extra]
    order = sorted(range(len(studies)), key=lambda i: (studies[i].date, studies[i].seconds, studies[i].study_id))
    n = max(1, len(studies))
    for rank, i in enumerate(order):
        studies[i].stream_pos = round(rank / n, 6)
    for p in patients:
        for s in p.studies:
            if s.extra:
                base = next((b for b in p.studies if not b.extra and b.date == s.date), None)
                s.stream_pos = base.stream_pos if base is not None else 0.0


def image_truths(patients: list[Patient]) -> list[ImageTruth]:
    """Flatten the generated patients into one :class:`ImageTruth` per image (generation order)."""
    out = []
    for p in patients:
        for s in p.studies:
            for dicom_id, view in zip(s.dicom_ids, s.views):
                out.append(
                    ImageTruth(
                        subject_id=p.subject_id,
                        study_id=s.study_id,
                        dicom_id=dicom_id,
                        view=view,
                        study_date=s.study_date,
                        study_time=s.study_time,
                        stream_pos=s.stream_pos,
                        split=p.split,
                        domain=s.domain,
                        severity=dict(s.severity),
                        labels=dict(s.labels),
                        laterality=dict(s.laterality),
                    )
                )
    return out


def load_truth(root: str | Path) -> dict[str, ImageTruth]:
    """Read ``root/truth.jsonl`` into a dict keyed by dicom_id.

    Raises :class:`DataError` naming the file and line for a malformed line or a duplicate dicom_id.
    """
    path = Path(root) / "truth.jsonl"
    if not path.is_file():
        raise DataError("no truth.jsonl here; build the synthetic world with ensure_synthetic()", path=path)
    out: dict[str, ImageTruth] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                t = ImageTruth.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"malformed truth line: {e}", path=path, row=lineno) from None
            if t.dicom_id in out:
                raise DataError(f"duplicate dicom_id {t.dicom_id}", path=path, row=lineno)
            out[t.dicom_id] = t
    return out

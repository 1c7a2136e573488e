"""The embedded synthetic MIMIC-CXR: determinism, PhysioNet layout, tables, reports, visible findings, DICOM."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut

from cxr_max.errors import DataError
from cxr_max.labels import CHEXPERT_LABELS, MS_CXR_T_FINDINGS, label_key
from cxr_max.synthetic import SIM_TEACHERS, ImageTruth, ensure_synthetic, generate_world, load_truth, synthetic_name
from cxr_max.synthetic.build import study_dir
from cxr_max.synthetic.render import render
from cxr_max.synthetic.world import FINDING_KEYS, QUIRK_VIEWS
from test_synthetic_labeler import read_labels, report_sections

DICOM_ID = re.compile(r"^[0-9a-f]{8}(?:-[0-9a-f]{8}){4}$")
N = 30


def _gz_rows(path: Path) -> tuple[list[str], list[dict]]:
    with gzip.open(path, "rt", newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames), list(r)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("synth") / "w", seed=3, n_patients=N, image_size=128)


@pytest.fixture(scope="module")
def truth(world) -> dict[str, ImageTruth]:
    return load_truth(world)


def test_determinism_same_seed_same_bytes(tmp_path):
    a = ensure_synthetic(tmp_path / "a", seed=5, n_patients=8, pixels="tiny", teachers=True)
    b = ensure_synthetic(tmp_path / "b", seed=5, n_patients=8, pixels="tiny", teachers=True)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 20
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = ensure_synthetic(tmp_path / "c", seed=6, n_patients=8, pixels="none", teachers=False)
    assert (c / "truth.jsonl").read_bytes() != (a / "truth.jsonl").read_bytes()
    assert not list(c.rglob("*.jpg")) and not list(c.rglob("*.dcm"))


def test_patients_do_not_depend_on_world_size():
    small = generate_world(seed=1, n_patients=5)
    large = generate_world(seed=1, n_patients=12)
    for p, q in zip(small, large):
        assert p.subject_id == q.subject_id
        assert [s.dicom_ids for s in p.studies] == [s.dicom_ids for s in q.studies]
        assert [s.report for s in p.studies] == [s.report for s in q.studies]


def test_test_patients_extend_the_test_split_only():
    base = generate_world(seed=1, n_patients=40)
    more = generate_world(seed=1, n_patients=40, test_patients=15)
    assert len(more) == 55
    for p, q in zip(base, more):  # the first patients are those of the world without them, splits included
        assert (p.subject_id, p.split) == (q.subject_id, q.split)
        assert [s.dicom_ids for s in p.studies] == [s.dicom_ids for s in q.studies]
    assert {p.split for p in more[40:]} == {"test"}
    assert len({p.subject_id for p in more}) == 55
    assert synthetic_name(0, 400, "full", test_patients=100) == "synthetic-v6-seed0-n400+t100-full"
    with pytest.raises(ValueError, match="test_patients"):
        generate_world(seed=1, n_patients=4, test_patients=-1)


def test_exact_image_count_and_name():
    patients = generate_world(seed=0, n_images=101)
    assert sum(len(s.dicom_ids) for p in patients for s in p.studies) == 101
    assert synthetic_name(0, 160, "full") == "synthetic-v6-seed0-n160-full"
    assert synthetic_name(0, 160, "none", n_images=24426) == "synthetic-v6-seed0-i24426-none"


def test_layout_matches_physionet(world, truth):
    jpg, dcm = world / "mimic-cxr-jpg", world / "mimic-cxr"
    for t in truth.values():
        assert re.fullmatch(r"1\d{7}", t.subject_id) and re.fullmatch(r"5\d{7}", t.study_id)
        assert DICOM_ID.match(t.dicom_id)
        rel = f"files/p{t.subject_id[:2]}/p{t.subject_id}/s{t.study_id}"
        assert (jpg / rel / f"{t.dicom_id}.jpg").is_file()
        assert (dcm / rel / f"{t.dicom_id}.dcm").is_file()
        assert (dcm / f"{rel}.txt").is_file()
    for name in ("metadata", "split", "chexpert", "negbio"):
        assert (jpg / f"mimic-cxr-2.0.0-{name}.csv.gz").is_file()
    _, records = _gz_rows(dcm / "cxr-record-list.csv.gz")
    assert {r["dicom_id"] for r in records} == set(truth)
    assert all((dcm / r["path"]).is_file() and r["path"].endswith(".dcm") for r in records)
    _, studies = _gz_rows(dcm / "cxr-study-list.csv.gz")
    assert all((dcm / s["path"]).is_file() and s["path"].endswith(".txt") for s in studies)
    with zipfile.ZipFile(dcm / "mimic-cxr-reports.zip") as zf:
        names = sorted(zf.namelist())
        assert names == sorted(s["path"] for s in studies)
        assert zf.read(names[0]) == (dcm / names[0]).read_bytes()
    assert (world / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv").is_file()
    assert (world / ".complete").is_file()
    assert any(len([t for t in truth.values() if t.study_id == s]) == 2 for s in {t.study_id for t in truth.values()})


def test_table_columns(world):
    jpg = world / "mimic-cxr-jpg"
    cols, meta = _gz_rows(jpg / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert cols == ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
    assert {m["ViewPosition"] for m in meta} <= {"PA", "AP", "LATERAL", *QUIRK_VIEWS}
    # StudyTime as real metadata prints it: leading zeros dropped
    assert all(re.fullmatch(r"2[12]\d{6}", m["StudyDate"]) and re.fullmatch(r"(0|[1-9]\d{0,5})\.\d{3}", m["StudyTime"])
               for m in meta)
    assert any(len(m["StudyTime"].split(".")[0]) < 6 for m in meta)
    assert {m["Rows"] for m in meta} == {"128"}
    assert _gz_rows(jpg / "mimic-cxr-2.0.0-split.csv.gz")[0] == ["dicom_id", "study_id", "subject_id", "split"]
    for name in ("chexpert", "negbio"):
        cols, rows = _gz_rows(jpg / f"mimic-cxr-2.0.0-{name}.csv.gz")
        assert cols == ["subject_id", "study_id", *CHEXPERT_LABELS]
        assert {v for r in rows for k, v in r.items() if k in CHEXPERT_LABELS} <= {"1.0", "0.0", "-1.0", ""}
    with open(world / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv", newline="") as f:
        cols = next(csv.reader(f))
    assert cols[:5] == ["dicom_id", "previous_dicom_id", "subject_id", "study_id", "previous_study_id"]
    assert set(cols[5:]) == {f"{label_key(x)}_{s}" for x in MS_CXR_T_FINDINGS for s in ("progression", "label_quality")}
    with open(world / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # as in the real CSV: path-like image ids, label quality one_expert / multiple_experts
    assert all(re.fullmatch(r"p1\d/p1\d{7}/s5\d{7}/[0-9a-f-]{44}", r["dicom_id"]) for r in rows)
    assert {r[k] for r in rows for k in r if k.endswith("_label_quality")} <= {"one_expert", "multiple_experts", ""}


def test_splits_patient_disjoint_and_stream(truth):
    by_subject: dict[str, set[str]] = {}
    for t in truth.values():
        by_subject.setdefault(t.subject_id, set()).add(t.split)
        assert 0.0 <= t.stream_pos < 1.0 and set(t.severity) == set(FINDING_KEYS)
    assert all(len(s) == 1 for s in by_subject.values())
    order = sorted(truth.values(), key=lambda t: (t.study_date, t.study_time))
    pos = [t.stream_pos for t in order]
    assert pos == sorted(pos)


def test_chexpert_table_matches_reports_and_truth(world, truth):
    dcm = world / "mimic-cxr"
    _, chexpert = _gz_rows(world / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-chexpert.csv.gz")
    _, negbio = _gz_rows(world / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-negbio.csv.gz")
    by_study = {t.study_id: t for t in truth.values()}
    studies = {s.study_id: s for p in generate_world(seed=3, n_patients=N) for s in p.studies}
    n_normal = n_uncertain = n_imp_only = n_blank = 0
    for row, nrow in zip(chexpert, negbio):
        t, s = by_study[row["study_id"]], studies[row["study_id"]]
        if s.label_row == "blank":  # a quirk of real tables: a row with every label cell empty
            assert all(row[n] == "" and nrow[n] == "" for n in CHEXPERT_LABELS) and t.split == "train"
            n_blank += 1
            continue
        if s.no_report or s.report_quirk:
            continue  # checked in test_record_quirks
        report = (dcm / f"{study_dir(row['subject_id'], row['study_id'])}.txt").read_text()
        assert max(len(line) for line in report.splitlines()) <= 79
        assert report.lstrip().startswith("FINAL REPORT") and "IMPRESSION:" in report and "___" in report
        n_imp_only += "FINDINGS:" not in report
        stated = read_labels(report_sections(report))
        for name in CHEXPERT_LABELS:
            table = float(row[name]) if row[name] else None
            assert table == t.labels[name], (row["study_id"], name)
            if name != "No Finding":
                assert stated.get(name) == table, (row["study_id"], name, report)
            nb = float(nrow[name]) if nrow[name] else None
            assert nb == table or (nb is None and table == 0.0)
        if t.labels["No Finding"] == 1.0:
            n_normal += 1
            assert "No acute cardiopulmonary" in report
        n_uncertain += -1.0 in t.labels.values()
    assert n_normal > 0 and n_uncertain > 0 and n_imp_only > 0


def test_ms_cxr_t_labels_follow_true_severity(world, truth):
    with open(world / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    keys = {"consolidation": "consolidation", "pneumonia": "consolidation", "pleural_effusion": "effusion",
            "pneumothorax": "pneumothorax"}
    n = 0
    for r in rows:
        cur, prev = truth[r["dicom_id"].rsplit("/", 1)[-1]], truth[r["previous_dicom_id"].rsplit("/", 1)[-1]]
        assert cur.subject_id == prev.subject_id and cur.stream_pos > prev.stream_pos and cur.view != "LATERAL"
        for f in MS_CXR_T_FINDINGS:
            label = r[f"{label_key(f)}_progression"]
            if not label:
                continue
            k = label_key(f)
            sev = (lambda t: t.severity["edema"]) if k == "edema" else (
                lambda t, k=k: max(t.severity[f"{keys[k]}_left"], t.severity[f"{keys[k]}_right"]))
            d = sev(cur) - sev(prev)
            assert {"worsening": d > 0.12, "improving": d < -0.12, "stable": abs(d) < 0.05}[label], (r, f, d)
            n += 1
    assert n >= 5


def _base_sev() -> dict[str, float]:
    return {k: 0.0 for k in FINDING_KEYS}


ANATOMY = {"body_w": 0.86, "lung_w": 1.0, "lung_h": 1.0, "heart_x": 0.08, "shift_x": 0.0, "shift_y": 0.0, "rib_phase": 0.3}


def _img(**sev) -> np.ndarray:
    s = _base_sev() | sev
    return render(s, ANATOMY, "PA", "default", 128, np.random.default_rng(0))


def test_findings_are_visible_and_graded():
    x = (np.arange(128) + 0.5) / 128 * 2 - 1
    X, Y = np.meshgrid(x, x)
    base = _img()
    # Left effusion: patient's left = image right; basal region brighter, growing with severity.
    basal_left = (X > 0.2) & (X < 0.6) & (Y > 0.35) & (Y < 0.55)
    means = [_img(effusion_left=s)[basal_left].mean() for s in (0.0, 0.3, 0.6, 0.9)]
    assert all(b > a for a, b in zip(means, means[1:]))
    assert abs(_img(effusion_left=0.9)[(X < -0.2) & (X > -0.6) & (Y > 0.35) & (Y < 0.55)].mean()
               - base[(X < -0.2) & (X > -0.6) & (Y > 0.35) & (Y < 0.55)].mean()) < 0.01
    # Cardiomegaly: the bright heart extends further laterally (row through the heart).
    widths = []
    for c in (0.0, 0.5, 1.0):
        row = _img(cardiomegaly=c)[int((0.33 + 1) / 2 * 128)]
        widths.append(int((row > base[int((0.33 + 1) / 2 * 128)] + 0.08).sum()))
    assert widths[0] < widths[1] < widths[2]
    # Pneumothorax: lateral apex of the right lung (image left) darker.
    apex_right = (X < -0.45) & (X > -0.65) & (Y < -0.1) & (Y > -0.5)
    assert _img(pneumothorax_right=0.8)[apex_right].mean() < base[apex_right].mean() - 0.02
    # Consolidation, edema, atelectasis brighten their regions; devices brighten the trachea.
    assert _img(consolidation_right=0.8)[(X < -0.2) & (X > -0.55) & (Y > 0.0) & (Y < 0.35)].mean() > \
        base[(X < -0.2) & (X > -0.55) & (Y > 0.0) & (Y < 0.35)].mean() + 0.03
    hilum = (np.abs(X) > 0.15) & (np.abs(X) < 0.35) & (np.abs(Y) < 0.2)
    assert _img(edema=0.8)[hilum].mean() > base[hilum].mean() + 0.03
    assert _img(support_devices=1.0)[(np.abs(X) < 0.02) & (Y < -0.4)].mean() > base[(np.abs(X) < 0.02) & (Y < -0.4)].mean() + 0.2
    sub = _img(effusion_left=0.25)[basal_left].mean() - base[basal_left].mean()
    strong = _img(effusion_left=0.9)[basal_left].mean() - base[basal_left].mean()
    assert 0 < sub < strong / 2  # a near-threshold finding is subtle


def test_hard_findings_are_large_graded_and_lateral():
    """Pneumothorax, consolidation and atelectasis are regions, not thin lines: each changes a region of the
    lung on its own side only, more with severity, and differently from an effusion."""
    x = (np.arange(128) + 0.5) / 128 * 2 - 1
    X, Y = np.meshgrid(x, x)
    base = _img()

    def delta(region, **sev):
        return float(_img(**sev)[region].mean() - base[region].mean())

    # Pneumothorax (right = image left): the lateral upper zone turns air-dark, more with severity.
    apex_r, apex_l = (X < -0.45) & (X > -0.65) & (Y < -0.1) & (Y > -0.5), (X > 0.45) & (X < 0.65) & (Y < -0.1) & (Y > -0.5)
    dark = [delta(apex_r, pneumothorax_right=s) for s in (0.25, 0.5, 0.9)]
    assert 0 > dark[0] > dark[1] > dark[2] and dark[2] < -0.04
    assert abs(delta(apex_l, pneumothorax_right=0.9)) < 0.005
    # Atelectasis: a band in the lower zone, graded; the costophrenic region is left nearly alone (unlike effusion).
    band_r, band_l = (X < -0.2) & (X > -0.5) & (Y > 0.27) & (Y < 0.4), (X > 0.2) & (X < 0.5) & (Y > 0.27) & (Y < 0.4)
    basal_r = (X < -0.2) & (X > -0.6) & (Y > 0.42) & (Y < 0.55)
    band = [delta(band_r, atelectasis_right=s) for s in (0.25, 0.5, 0.9)]
    assert 0.05 < band[0] < band[1] < band[2]
    assert abs(delta(band_l, atelectasis_right=0.9)) < 0.005
    assert delta(basal_r, atelectasis_right=0.5) < 0.03 < 0.1 < delta(basal_r, effusion_right=0.25)
    # Consolidation: a dense mid-zone opacity on its side (compared within one image: it draws texture noise).
    mid_r, mid_l = (X < -0.25) & (X > -0.5) & (Y > 0.0) & (Y < 0.3), (X > 0.25) & (X < 0.5) & (Y > 0.0) & (Y < 0.3)
    side_gap = []
    for s in (0.25, 0.5, 0.9):
        im = _img(consolidation_right=s)
        side_gap.append(float(im[mid_r].mean() - im[mid_l].mean()) - float(base[mid_r].mean() - base[mid_l].mean()))
    assert 0.03 < side_gap[0] < side_gap[1] < side_gap[2] and side_gap[2] > 0.15
    cons, eff = _img(consolidation_right=0.5), _img(effusion_right=0.5)
    # mid zone brighter than the base for consolidation, the reverse for an effusion
    assert cons[mid_r].mean() - cons[basal_r].mean() > base[mid_r].mean() - base[basal_r].mean() + 0.08
    assert eff[mid_r].mean() - eff[basal_r].mean() < base[mid_r].mean() - base[basal_r].mean() - 0.05


def test_findings_visible_in_written_jpgs(world, truth):
    """Across the built images, left-effusion studies are brighter in the image-right base."""
    with_e, without = [], []
    for t in truth.values():
        if t.view != "PA" or t.domain != "default":
            continue
        img = np.asarray(Image.open(world / "mimic-cxr-jpg" / study_dir(t.subject_id, t.study_id) / f"{t.dicom_id}.jpg"),
                         dtype=np.float32) / 255
        region = img[88:105, 77:102].mean() - img[40:60, 77:102].mean()  # base minus mid-lung, image right
        if t.severity["effusion_left"] >= 0.5:
            with_e.append(region)
        elif t.severity["effusion_left"] == 0.0:
            without.append(region)
    if not with_e:
        pytest.skip("no strong left effusion in this small world")
    assert np.mean(with_e) > np.mean(without) + 0.03


def test_dicom_photometric_variety_and_12_bit(world, truth):
    seen = set()
    slopes = set()
    for t in list(truth.values()):
        rel = study_dir(t.subject_id, t.study_id)
        ds = pydicom.dcmread(world / "mimic-cxr" / rel / f"{t.dicom_id}.dcm")
        assert ds.BitsStored == 12 and ds.BitsAllocated == 16 and ds.SOPInstanceUID.startswith("2.25.")
        px = ds.pixel_array
        assert px.max() <= 4095
        values = apply_modality_lut(px, ds).astype(np.float32)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            values = 4095 - values
        jpg = np.asarray(Image.open(world / "mimic-cxr-jpg" / rel / f"{t.dicom_id}.jpg"), dtype=np.float32)
        assert np.abs(values / 4095 * 255 - jpg).mean() < 3.0
        seen.add(ds.PhotometricInterpretation)
        slopes.add(float(ds.RescaleSlope))
    assert seen == {"MONOCHROME1", "MONOCHROME2"} and slopes == {1.0, 2.0}


def test_domains_and_shifted_test(tmp_path):
    patients = generate_world(seed=2, n_patients=60, shifted_test=True)
    doms = {(p.split, s.domain) for p in patients for s in p.studies}
    assert ("test", "default") not in doms and ("train", "shifted") in doms and ("train", "default") in doms


def test_cache_reuse_and_safety(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_MAX_CACHE", str(tmp_path / "cache"))
    root = ensure_synthetic(seed=1, n_patients=3, pixels="none", teachers=False)
    assert root == tmp_path / "cache" / "synthetic-v6-seed1-n3-none"
    stamp = (root / "truth.jsonl").stat().st_mtime_ns
    assert ensure_synthetic(seed=1, n_patients=3, pixels="none", teachers=False) == root
    assert (root / "truth.jsonl").stat().st_mtime_ns == stamp
    ensure_synthetic(seed=1, n_patients=3, pixels="none", teachers=True)  # adds the trajectories stage
    assert len(list((root / "trajectories").glob("*/part-00000.jsonl"))) == 7
    # a changed teacher definition writes the cached trajectories again (the world itself stays)
    part = root / "trajectories" / "sim-grok-4" / "part-00000.jsonl"
    before = part.read_text()
    ensure_synthetic(seed=1, n_patients=3, pixels="none", teachers=True)
    assert part.read_text() == before
    grok = dataclasses.replace(SIM_TEACHERS["sim-grok-4"], planted=[{"kind": "refusal", "rate": 1.0}])
    monkeypatch.setitem(SIM_TEACHERS, "sim-grok-4", grok)
    ensure_synthetic(seed=1, n_patients=3, pixels="none", teachers=True)
    assert part.read_text() != before and (root / "truth.jsonl").stat().st_mtime_ns == stamp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        ensure_synthetic(foreign, n_patients=3, pixels="none")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_load_truth_names_file_and_row(tmp_path):
    t = generate_world(seed=0, n_patients=1)
    from cxr_max.synthetic.world import image_truths

    lines = [x.to_json() for x in image_truths(t)]
    (tmp_path / "truth.jsonl").write_text(lines[0] + "\n{not json}\n")
    with pytest.raises(DataError, match=r"truth.jsonl, row 2"):
        load_truth(tmp_path)
    assert json.loads(lines[0])["dicom_id"] == image_truths(t)[0].dicom_id
    with pytest.raises(DataError, match="no truth.jsonl"):
        load_truth(tmp_path / "missing")


def test_record_quirks_of_real_copies(world, truth):
    """The default world carries real copies' quirks: other view positions (some empty), two frontals,
    lateral-only studies, missing reports and label rows (train only), blank label rows, report layouts."""
    from cxr_max.synthetic.reports import REPORT_QUIRKS

    patients = generate_world(seed=0)
    studies = [(p, s) for p in patients for s in p.studies]
    views = {v for _, s in studies for v in s.meta_views}
    assert {"LL", "AP RLD", ""} <= views and len(views - {"PA", "AP", "LATERAL"}) >= 6
    assert any(s.meta_views.count(s.view) == 2 for _, s in studies)  # two frontals
    assert any(s.extra and s.meta_views == ["LATERAL"] for _, s in studies)  # a lateral-only study
    assert {s.report_quirk for _, s in studies} >= set(REPORT_QUIRKS)
    for kind in ("no_report", "missing", "blank"):
        hit = [p.split for p, s in studies if (s.no_report if kind == "no_report" else s.label_row == kind)]
        assert hit and set(hit) == {"train"}, kind
    by_kind = {s.report_quirk: s.report for _, s in studies if s.report_quirk}
    assert "WET READ:" in by_kind["wet_read"] and "_" * 20 in by_kind["wet_read"]
    assert "ADDENDUM:" in by_kind["addendum"]
    assert "IMPRESSON:" in by_kind["misspelt_headers"]
    assert "FINDINGS:" not in by_kind["no_sections"] and "IMPRESSION:" not in by_kind["no_sections"]
    assert re.search(r"FINDINGS:\s+Comparison is made to the radiograph from ___", by_kind["phi_in_findings"])
    # on disk (small world): no report file for a no_report study, no label row for a missing one
    w = {s.study_id: (p, s) for p in generate_world(seed=3, n_patients=N) for s in p.studies}
    _, chexpert = _gz_rows(world / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-chexpert.csv.gz")
    labelled = {r["study_id"] for r in chexpert}
    for sid, (p, s) in w.items():
        assert (world / "mimic-cxr" / f"{study_dir(p.subject_id, sid)}.txt").is_file() != s.no_report
        assert (sid in labelled) == (s.label_row != "missing")


def test_quirks_leave_the_frontal_images_and_truth_alone():
    from cxr_max.synthetic.world import make_patient

    for i in range(40):
        plain, quirky = make_patient(i, 0, quirks=False), make_patient(i, 0)
        for a, b in zip(plain.studies, quirky.studies):
            assert b.dicom_ids[: len(a.dicom_ids)] == a.dicom_ids and b.views[: len(a.views)] == a.views
            assert a.severity == b.severity and a.date == b.date and a.seconds == b.seconds
    # the stream positions of the original studies do not move when quirk studies are added
    world = generate_world(seed=0, n_patients=40)
    pos = {s.study_id: s.stream_pos for p in world for s in p.studies if not s.extra}
    from cxr_max.synthetic.world import assign_stream_positions

    plain = [make_patient(i, 0, quirks=False) for i in range(40)]
    assign_stream_positions(plain)
    assert pos == {s.study_id: s.stream_pos for p in plain for s in p.studies}


def test_identifiers_stay_valid_at_mimic_scale():
    from cxr_max.synthetic.world import _study_id, _subject_id

    subjects = [_subject_id(i, r) for i in range(0, 120_000, 7) for r in (0, 996)]
    assert all(re.fullmatch(r"1\d{7}", s) for s in subjects)
    assert len(set(_subject_id(i, 500) for i in range(120_000))) == 120_000
    studies = [_study_id(i, k, r) for i in list(range(0, 120_000, 997)) + [19_999, 20_000, 119_999]
               for k in range(7) for r in (0, 59)]
    assert all(re.fullmatch(r"5\d{7}", s) for s in studies)
    # every (patient, study slot) gets its own id, across the two schemes
    ids = [_study_id(i, k, 59) for i in (0, 1, 19_999, 20_000, 39_999, 40_000, 60_000, 80_000, 100_000, 119_999)
           for k in range(7)]
    assert len(set(ids)) == len(ids)
    p = __import__("cxr_max.synthetic.world", fromlist=["make_patient"]).make_patient(111_000, 0)
    assert re.fullmatch(r"1\d{7}", p.subject_id) and all(re.fullmatch(r"5\d{7}", s.study_id) for s in p.studies)


def test_physionet_style_jpgs_and_non_square_images(tmp_path):
    """jpg_style="physionet": from the 12-bit DICOM, min-max, MONOCHROME1 inverted, equalised, quality 95."""
    plain = ensure_synthetic(tmp_path / "plain", seed=7, n_patients=4, pixels="tiny", teachers=False, image_shape=(40, 32))
    phys = ensure_synthetic(tmp_path / "phys", seed=7, n_patients=4, pixels="tiny", teachers=False, image_shape=(40, 32),
                            jpg_style="physionet")
    seen = set()
    for t in load_truth(plain).values():
        rel = f"{study_dir(t.subject_id, t.study_id)}/{t.dicom_id}"
        a = np.asarray(Image.open(plain / "mimic-cxr-jpg" / f"{rel}.jpg"), dtype=np.float64)
        b = np.asarray(Image.open(phys / "mimic-cxr-jpg" / f"{rel}.jpg"), dtype=np.float64)
        assert a.shape == b.shape == (40, 32)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.6  # same orientation: bone bright after inversion
        assert abs(b.mean() - 127.5) < 25 and b.min() < 20 and b.max() > 235  # equalised to the full range
        seen.add(str(pydicom.dcmread(phys / "mimic-cxr" / f"{rel}.dcm").PhotometricInterpretation))
    assert seen == {"MONOCHROME1", "MONOCHROME2"}
    _, meta = _gz_rows(phys / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert {(m["Rows"], m["Columns"]) for m in meta} == {("40", "32")}

"""cxr_max.mimic.reports: section parsing and reading reports from the tree or the zip."""

import zipfile

import pytest

from cxr_max.errors import DataError, SkipLog
from cxr_max.mimic import ReportStore, parse_report, read_report

REPORT = """ADDENDUM:  Findings were discussed with Dr. ___ by telephone at 10:15 on
___, shortly after discovery.
______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset of shortness of breath.  Evaluate for
 pneumonia.

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  Chest radiograph from ___.

 FINDINGS:

 Heart size is mildly enlarged.  There is a small left pleural effusion with
 adjacent atelectasis.  No pneumothorax.
 The mediastinal contours are normal.

 IMPRESSION:

 Small left pleural effusion.

 IMPRESSION:  Small left pleural effusion with adjacent atelectasis, new
 since ___.
 IMPRESSION:
"""


def test_realistic_report_sections():
    sections = parse_report(REPORT)
    assert sections == {
        "EXAMINATION": "CHEST (PA AND LAT)",
        "INDICATION": "___F with new onset of shortness of breath. Evaluate for pneumonia.",
        "TECHNIQUE": "Chest PA and lateral",
        "COMPARISON": "Chest radiograph from ___.",
        "FINDINGS": "Heart size is mildly enlarged. There is a small left pleural effusion with adjacent "
        "atelectasis. No pneumothorax. The mediastinal contours are normal.",
        # repeated section: the last non-empty occurrence wins (the trailing empty one does not erase it)
        "IMPRESSION": "Small left pleural effusion with adjacent atelectasis, new since ___.",
        "ADDENDUM": "Findings were discussed with Dr. ___ by telephone at 10:15 on ___, shortly after discovery.",
    }


def test_variants_are_mapped_and_unknown_capital_headers_kept():
    text = """CLINICAL HISTORY: Fever.
REASON FOR EXAMINATION: Eval for infiltrate.
COMPARISONS: None.
NOTIFICATION: The findings were telephoned to Dr. ___ at 3:40 pm.
Findings: Lungs are clear. Note: mild scoliosis.
IMPRESSIONS:  No acute
cardiopulmonary process.
"""
    sections = parse_report(text)
    assert sections["HISTORY"] == "Fever."
    assert sections["INDICATION"] == "Eval for infiltrate."
    assert sections["COMPARISON"] == "None."
    assert sections["NOTIFICATION"] == "The findings were telephoned to Dr. ___ at 3:40 pm."
    # "Note:" is mixed case and not a known name: it stays inside FINDINGS
    assert sections["FINDINGS"] == "Lungs are clear. Note: mild scoliosis."
    assert sections["IMPRESSION"] == "No acute cardiopulmonary process."


def test_impression_only_report_preamble_wet_read_and_addendum_line():
    text = """WET READ: ___ ___ 9:11 PM
  No pneumothorax.
______________________________________________________________________________
                                 FINAL REPORT
 PORTABLE CHEST OF ___
 IMPRESSION:  Interval placement of a right IJ line, tip in the SVC.

ADDENDUM
 Tip position confirmed with the ordering team.
"""
    sections = parse_report(text)
    assert "FINDINGS" not in sections  # many reports have only an impression
    assert sections["WET READ"] == "___ ___ 9:11 PM No pneumothorax."
    assert sections["PREAMBLE"] == "PORTABLE CHEST OF ___"
    assert sections["IMPRESSION"] == "Interval placement of a right IJ line, tip in the SVC."
    assert sections["ADDENDUM"] == "Tip position confirmed with the ordering team."


def test_unlabelled_text_above_underscores_is_an_addendum_and_never_wins():
    text = "IMPRESSION: addendum impression\nCorrection of the side.\n" + "_" * 78 + "\nFINAL REPORT\nIMPRESSION: body impression\n"
    text2 = "Correction of the side.\n" + "_" * 78 + "\nFINAL REPORT\nFINDINGS: clear\n"
    assert parse_report(text)["IMPRESSION"] == "body impression"
    assert parse_report(text2) == {"FINDINGS": "clear", "ADDENDUM": "Correction of the side."}
    assert parse_report("") == {}
    assert parse_report("\r\nFINDINGS:\r\n  a\r\n  b\r\n") == {"FINDINGS": "a b"}


def test_read_report_non_utf8_raises_naming_file_or_counts(tmp_path):
    path = tmp_path / "s50000001.txt"
    path.write_bytes("FINDINGS: caf\xe9 au lait spots\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as info:
        read_report(path)
    assert info.value.path == path
    skips = SkipLog()
    assert read_report(path, on_error="skip", skips=skips) is None
    assert skips.total == 1 and str(path) in skips.examples[next(iter(skips.counts))][0]
    with pytest.raises(DataError, match="not found"):
        read_report(tmp_path / "nope.txt")


def _write_zip(path, prefix, members):
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in members.items():
            zf.writestr(prefix + rel, data)
    return path


@pytest.mark.parametrize("prefix", ["", "mimic-cxr-reports/", "physionet.org/files/mimic-cxr/2.1.0/"])
def test_report_store_zip_with_or_without_top_folder(tmp_path, prefix):
    rel = "files/p10/p10000032/s50414267.txt"
    bad = "files/p10/p10000032/s53189527.txt"
    zpath = _write_zip(tmp_path / "mimic-cxr-reports.zip", prefix, {rel: REPORT, bad: b"FINDINGS: \xff\xfe\n"})
    with ReportStore(zpath) as store:
        assert store.kind == "zip" and len(store) == 2
        assert store.has("10000032", "50414267") and not store.has("10000032", "59999999")
        assert store.text(10000032, 50414267) == REPORT
        assert store.report("10000032", "50414267")["TECHNIQUE"] == "Chest PA and lateral"
        with pytest.raises(DataError, match="not valid UTF-8") as info:
            store.text("10000032", "53189527")
        assert f"{zpath}::{prefix}{bad}" in str(info.value)
        with pytest.raises(DataError, match="no report for study 59999999"):
            store.text("10000032", "59999999")
    skips = SkipLog()
    with ReportStore(zpath, on_error="skip", skips=skips) as store:
        assert store.text("10000032", "53189527") is None and store.text("10000032", "59999999") is None
    assert skips.total == 2


def test_report_store_tree(tmp_path):
    rel = tmp_path / "files/p10/p10000032/s50414267.txt"
    rel.parent.mkdir(parents=True)
    rel.write_text(REPORT)
    store = ReportStore(tmp_path)
    assert store.kind == "tree" and store.has("10000032", "50414267")
    assert store.where("10000032", "50414267") == str(rel)
    assert store.report("10000032", "50414267")["EXAMINATION"] == "CHEST (PA AND LAT)"
    with pytest.raises(DataError, match="no report") as info:
        store.text("10000032", "50000000")
    assert "s50000000.txt" in str(info.value)


def test_report_store_bad_sources(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ReportStore(tmp_path / "missing.zip")
    bad = tmp_path / "mimic-cxr-reports.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a readable zip") as info:
        ReportStore(bad)
    assert str(bad) in str(info.value)

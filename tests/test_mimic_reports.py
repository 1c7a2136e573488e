"""cxr_max.mimic.reports: section parsing and reading reports from the tree or the zip."""

import zipfile

import pytest

from cxr_max.errors import DataError, SkipLog
from cxr_max.mimic import ReportStore, parse_report, read_report
from cxr_max.mimic.reports import labelled_text

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


OLD_STYLE = """                                 FINAL REPORT
 PA AND LATERAL CHEST RADIOGRAPHS:

 HISTORY:  Cough.

 PA AND LATERAL CHEST RADIOGRAPHS:  The heart is normal in size.  The lungs are
 clear.  No pleural effusion.

 IMPRESSON:  No acute cardiopulmonary process.
"""

TWO_VIEWS = """                                 FINAL REPORT
 CHEST, TWO VIEWS:  Comparison is made to ___.  There is a new right lower lobe
 opacity.
 FINDINS:
 CONCLUSION:  Right lower lobe pneumonia.
"""

NO_FINDINGS = """                                 FINAL REPORT
 CHEST RADIOGRAPH PERFORMED ON ___

 COMPARISON:  Prior exam from ___.

 CLINICAL HISTORY:  Line placement.

 Portable supine chest radiograph.
 
 A right internal jugular catheter terminates in the mid SVC.  No pneumothorax.
 Lungs are clear.
"""


def test_old_style_header_is_findings_and_misspelt_impression():
    sections = parse_report(OLD_STYLE)
    # the title-like header with nothing under it is not an (empty) FINDINGS; its second use is
    assert sections["FINDINGS"] == "The heart is normal in size. The lungs are clear. No pleural effusion."
    assert sections["IMPRESSION"] == "No acute cardiopulmonary process."
    assert sections["HISTORY"] == "Cough."
    assert "PA AND LATERAL CHEST RADIOGRAPHS" not in sections and "IMPRESSON" not in sections


def test_chest_two_views_and_misspellings():
    sections = parse_report(TWO_VIEWS)
    assert sections["FINDINGS"] == "Comparison is made to ___. There is a new right lower lobe opacity."
    assert sections["IMPRESSION"] == "Right lower lobe pneumonia."  # CONCLUSION -> IMPRESSION
    assert set(sections) == {"FINDINGS", "IMPRESSION"}  # the empty misspelt FINDINS does not erase it


@pytest.mark.parametrize("header,section", [
    ("IMPRESSON", "IMPRESSION"), ("IMPESSION", "IMPRESSION"), ("FINDNGS", "FINDINGS"), ("FINIDNGS", "FINDINGS"),
    ("COMPARISION", "COMPARISON"), ("IDICATION", "INDICATION"), ("WETREAD", "WET READ"), ("PFI", "HISTORY"),
    ("FINAL IMPRESSION", "IMPRESSION"), ("PRELIMINARY FINDINGS", "FINDINGS"), ("PORTABLE AP CHEST", "FINDINGS"),
    ("RIBS", "FINDINGS"), ("FRONTAL VIEW", "FINDINGS"), ("RECOMMENDATION(S)", "RECOMMENDATIONS"),
    ("REFERENCE EXAM", "COMPARISON"), ("NOTIFICATION", "NOTIFICATION"), ("SUMMARY", "SUMMARY"),
])
def test_header_names_follow_the_reference_normalisation(header, section):
    assert parse_report(f" {header}:  Some text.\n") == {section: "Some text."}


def test_last_paragraph_fallback_and_labelled_text():
    sections = parse_report(NO_FINDINGS)
    assert "FINDINGS" not in sections and "IMPRESSION" not in sections
    assert sections["HISTORY"] == "Line placement."  # its first paragraph stays
    # everything after the section's first paragraph (the reference splitter's rule)
    assert sections["LAST PARAGRAPH"] == ("Portable supine chest radiograph. A right internal jugular catheter "
                                          "terminates in the mid SVC. No pneumothorax. Lungs are clear.")
    assert labelled_text(sections) == ("LAST PARAGRAPH", sections["LAST PARAGRAPH"])
    # no fallback when the report has an impression or findings, or when the last section is one paragraph
    assert labelled_text(parse_report(TWO_VIEWS)) == ("IMPRESSION", "Right lower lobe pneumonia.")
    assert labelled_text(parse_report(OLD_STYLE))[0] == "IMPRESSION"
    assert "LAST PARAGRAPH" not in parse_report(" HISTORY:  Cough.\n")
    assert labelled_text(parse_report(" HISTORY:  Cough.\n")) is None
    # a report without any header: the part after the first blank line
    assert parse_report("Portable chest.\n\nNo pneumothorax.") == {"PREAMBLE": "Portable chest.",
                                                                     "LAST PARAGRAPH": "No pneumothorax."}


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

"""MIMIC-CXR free-text reports: reading them (per-study ``.txt`` files or ``mimic-cxr-reports.zip``)
and splitting them into sections.

Section rules of :func:`parse_report` (documented here once):

* A **section header** is a line that starts (after spaces) with a name followed by a colon, e.g.
  ``FINDINGS:``. The text after the colon on the same line belongs to the section. Known names are
  matched case-insensitively; any other name counts as a header only when written in capitals (so
  ``WET READ:`` or ``NOTIFICATION:`` start their own sections, while ``Dr. ___ was told at 10:30`` does
  not).
* **Names are normalised** as MIMIC-CXR's reference section splitter (MIT-LCP ``mimic-cxr``,
  ``section_parser.py``) does: first through :data:`SECTION_ALIASES` (its frequent headers and their
  misspellings, e.g. ``CLINICAL HISTORY`` / ``PFI`` -> ``HISTORY``, ``REASON FOR EXAMINATION`` ->
  ``INDICATION``, ``IMPRESSIONS`` / ``CONCLUSION`` / ``IMPRESSON`` / ``FINDINGS AND IMPRESSION`` ->
  ``IMPRESSION``, ``FINDINS`` -> ``FINDINGS``, ``COMPARISION`` -> ``COMPARISON``, ``WETREAD`` ->
  ``WET READ``); then a capitalised header that *contains* one of IMPRESSION, FINDINGS, HISTORY,
  COMPARISON, ADDENDUM (in that order) is that section (``FINAL IMPRESSION``, ``PRELIMINARY
  FINDINGS``); then an **old-style header** that names the study (``PA AND LATERAL CHEST
  RADIOGRAPHS``, ``CHEST, TWO VIEWS``, ``PORTABLE AP CHEST``, ``RIBS``: words such as CHEST,
  PORTABLE, PA AND LATERAL, TWO VIEWS, FRONTAL VIEW, ONE VIEW, BONE WINDOW, see
  :data:`_OLD_STYLE_FINDINGS`) is ``FINDINGS``, since its text is the description of the image.
  Other capitalised headers are kept under their own name (capitals, single spaces). The title line
  ``FINAL REPORT`` is dropped. Text before the first header is ``PREAMBLE``.
* When a section occurs more than once, the **last non-empty occurrence wins** (a later empty
  header does not erase earlier text); an empty FINDINGS or IMPRESSION is left out (a report title
  such as ``CHEST, PA LATERAL:`` directly followed by the next header says nothing).
* **Last-paragraph fallback.** When the report body has neither a FINDINGS nor an IMPRESSION, the
  text after the first blank line of its last section is given as ``LAST PARAGRAPH`` (and removed
  from that section), as the reference splitter does for the ~5% of reports without either; PhysioNet
  computed the MIMIC-CXR CheXpert labels from the impression, else the findings, else this final
  part. :func:`labelled_text` picks the text in that order.
* **Addenda.** MIMIC puts addenda and wet reads above the report, separated from it by a line of
  underscores. Text above the first such line that is not under a header of its own, and any
  section headed ``ADDENDUM`` (with or without a colon), goes to ``ADDENDUM``; several addenda are
  joined in the order they appear. Addenda never overwrite FINDINGS / IMPRESSION: headers above the
  underscore line are read before the report body, so the body's sections win.
* Within a section, **whitespace is normalised** (runs of spaces and newlines become one space).
  PHI markers ``___`` are kept as they are.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from cxr_max.errors import DataError, OnError, SkipLog, handle
from cxr_max.mimic.paths import report_relpath, safe_join

CANONICAL_SECTIONS: tuple[str, ...] = (
    "EXAMINATION", "INDICATION", "HISTORY", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION", "ADDENDUM",
    "LAST PARAGRAPH",
)

SECTION_ALIASES: dict[str, str] = {
    # findings
    "FINDINGS": "FINDINGS", "FINDING": "FINDINGS",
    # impression (a combined findings-and-impression section is an impression)
    "IMPRESSION": "IMPRESSION", "IMPRESSIONS": "IMPRESSION", "CONCLUSION": "IMPRESSION", "CONCLUSIONS": "IMPRESSION",
    "FINDINGS AND IMPRESSION": "IMPRESSION", "FINDINGS/IMPRESSION": "IMPRESSION",
    "IMPRESSION AND FINDINGS": "IMPRESSION", "IMPRESSION/FINDINGS": "IMPRESSION",
    # indication
    "INDICATION": "INDICATION", "INDICATIONS": "INDICATION", "CLINICAL INDICATION": "INDICATION",
    "REASON FOR EXAMINATION": "INDICATION", "REASON FOR EXAM": "INDICATION", "REASON FOR STUDY": "INDICATION",
    "REASON FOR THE EXAMINATION": "INDICATION",
    # history
    "HISTORY": "HISTORY", "CLINICAL HISTORY": "HISTORY", "PATIENT HISTORY": "HISTORY",
    "CLINICAL INFORMATION": "HISTORY", "CLINICAL DATA": "HISTORY", "MEDICAL HISTORY": "HISTORY",
    # comparison
    "COMPARISON": "COMPARISON", "COMPARISONS": "COMPARISON", "COMPARISON EXAM": "COMPARISON",
    "COMPARISON FILM": "COMPARISON", "COMPARISON STUDY": "COMPARISON", "COMPARISON STUDIES": "COMPARISON",
    # technique
    "TECHNIQUE": "TECHNIQUE", "TECHNIQUES": "TECHNIQUE",
    # examination
    "EXAMINATION": "EXAMINATION", "EXAM": "EXAMINATION", "TYPE OF EXAMINATION": "EXAMINATION",
    "EXAMINATIONS": "EXAMINATION", "STUDY": "EXAMINATION", "PROCEDURE": "EXAMINATION",
    # addendum
    "ADDENDUM": "ADDENDUM", "ADDENDA": "ADDENDUM",
    # other frequent headers of the reference splitter
    "WET READ": "WET READ", "WETREAD": "WET READ", "NOTIFICATION": "NOTIFICATION", "PFI": "HISTORY",
    "RECOMMENDATION": "RECOMMENDATIONS", "RECOMMENDATIONS": "RECOMMENDATIONS", "RECOMMENDATION(S)": "RECOMMENDATIONS",
    "REFERENCE EXAM": "COMPARISON", "CHEST, TWO VIEWS": "FINDINGS", "REFERENCE FINDINGS": "FINDINGS",
    # misspellings found in MIMIC-CXR reports (listed by the reference splitter)
    "IMPRESSON": "IMPRESSION", "IMPRRESSION": "IMPRESSION", "IMOPRESSION": "IMPRESSION", "IMORESSION": "IMPRESSION",
    "IMPRESSOIN": "IMPRESSION", "IMPRSSION": "IMPRESSION", "IMPRESION": "IMPRESSION", "IMPERSSION": "IMPRESSION",
    "MPRESSION": "IMPRESSION", "IMPESSION": "IMPRESSION", "FINDINGS/ IMPRESSION": "IMPRESSION",
    "CONCUSION": "IMPRESSION", "COINCLUSION": "IMPRESSION",
    "FINDINS": "FINDINGS", "FINDINDGS": "FINDINGS", "FINDGINGS": "FINDINGS", "FINDNGS": "FINDINGS",
    "FINDNINGS": "FINDINGS", "FINIDNGS": "FINDINGS",
    "IDICATION": "INDICATION", "NDICATION": "INDICATION", "INDICATON": "INDICATION", "INDICATIN": "INDICATION",
    "COMPARISION": "COMPARISON", "COMPARSION": "COMPARISON", "COMPARRISON": "COMPARISON", "COMPARISIONS": "COMPARISON",
}

# A capitalised header containing one of these names is that section (checked in this order).
_MAIN_SECTIONS: tuple[str, ...] = ("IMPRESSION", "FINDINGS", "HISTORY", "COMPARISON", "ADDENDUM")
# Old-style headers that name the study ("PA AND LATERAL CHEST RADIOGRAPHS:"): their text is the findings.
_OLD_STYLE_FINDINGS = re.compile(
    r"CHEST|PORTABLE|PA AND LAT|LATERAL AND PA|AP AND LATERAL|LATERAL AND AP|FRONTAL AND|TWO VIEWS|"
    r"FRONTAL VIEW|PA VIEW|AP VIEW|ONE VIEW|LATERAL VIEW|BONE WINDOW|FRONTAL UPRIGHT|FRONTAL SEMI-UPRIGHT|RIBS"
)

_HEADER_RE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/&,\-]{0,60}?)[ \t]*:", re.MULTILINE)
_ADDENDUM_LINE_RE = re.compile(r"^[ \t]*ADDENDUM[ \t]*$", re.MULTILINE)
_UNDERSCORE_LINE_RE = re.compile(r"^[ \t]*_{10,}[ \t]*$", re.MULTILINE)
_TITLE_RE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def _canonical(name: str) -> str | None:
    """The section a header name stands for, or None when the text is not a header."""
    key = _normalise_space(name).upper()
    if key in SECTION_ALIASES:
        return SECTION_ALIASES[key]
    if name == name.upper() and any(c.isalpha() for c in name):
        for main in _MAIN_SECTIONS:
            if main in key:
                return main
        if _OLD_STYLE_FINDINGS.search(key):
            return "FINDINGS"
        return key
    return None


def _split_sections(text: str) -> list[tuple[str, str]]:
    """``(section, raw text)`` pairs in order; text before the first header has section ``None``."""
    starts: list[tuple[int, int, str]] = []  # (header start, content start, section)
    for m in _HEADER_RE.finditer(text):
        section = _canonical(m.group(1))
        if section is not None:
            starts.append((m.start(), m.end(), section))
    for m in _ADDENDUM_LINE_RE.finditer(text):
        starts.append((m.start(), m.end(), "ADDENDUM"))
    starts.sort()
    pieces: list[tuple[str | None, str]] = [(None, text[: starts[0][0]] if starts else text)]
    for i, (_, content_start, section) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        pieces.append((section, text[content_start:end]))
    return pieces


def parse_report(text: str) -> dict[str, str]:
    """Split a MIMIC-CXR report into ``{section name: text}``; see the module docs for the rules.

    >>> parse_report("FINAL REPORT\\nFINDINGS: Clear lungs.\\nIMPRESSION:  No acute\\n  process.")
    {'FINDINGS': 'Clear lungs.', 'IMPRESSION': 'No acute process.'}
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    above, body = "", text
    underscore = _UNDERSCORE_LINE_RE.search(text)
    if underscore:
        above, body = text[: underscore.start()], text[underscore.end():]
        body = _UNDERSCORE_LINE_RE.sub("\n", body)
    body = _TITLE_RE.sub("\n", body)

    sections: dict[str, str] = {}
    addenda: list[str] = []
    last_body: tuple[str, str] | None = None  # (section, raw text) of the body's last section
    for part, unlabelled_name in ((above, "ADDENDUM"), (body, "PREAMBLE")):
        for header, raw in _split_sections(part):
            content = _normalise_space(raw)
            section = header or unlabelled_name
            if part is body and content:
                last_body = (section, raw)
            if section == "ADDENDUM":
                if content:
                    addenda.append(content)
                continue
            if not content and (header is None or section in ("FINDINGS", "IMPRESSION")):
                continue  # nothing before the first header; an empty findings/impression says nothing
            if content or section not in sections:
                sections[section] = content
    if "FINDINGS" not in sections and "IMPRESSION" not in sections and last_body is not None:
        section, raw = last_body
        paragraphs = _PARAGRAPH_RE.split(raw.strip(), maxsplit=1)
        if section != "ADDENDUM" and len(paragraphs) == 2 and _normalise_space(paragraphs[1]):
            sections[section] = _normalise_space(paragraphs[0])
            sections["LAST PARAGRAPH"] = _normalise_space(paragraphs[1])
    if addenda:
        sections["ADDENDUM"] = " ".join(addenda)
    return sections


_LABELLED_ORDER: tuple[str, ...] = ("IMPRESSION", "FINDINGS", "LAST PARAGRAPH")


def labelled_text(sections: dict[str, str]) -> tuple[str, str] | None:
    """``(section name, text)`` of the part a CheXpert-style labeler reads, in PhysioNet's order for
    the MIMIC-CXR labels: IMPRESSION, else FINDINGS, else LAST PARAGRAPH; None when there is none."""
    for name in _LABELLED_ORDER:
        if sections.get(name):
            return name, sections[name]
    return None


def decode_report(data: bytes, where: str | os.PathLike) -> str:
    """Decode report bytes as UTF-8 (a BOM is allowed); anything else raises DataError naming ``where``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"report is not valid UTF-8 ({e.reason} at byte {e.start})", path=where) from e


def read_report(path: str | os.PathLike, *, on_error: OnError = "raise", skips: SkipLog | None = None) -> str | None:
    """The text of one report file. Missing or non-UTF-8 -> DataError (or None, counted, under skip)."""
    try:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise DataError("report file not found", path=path) from None
        except OSError as e:
            raise DataError(f"cannot read report: {e}", path=path) from e
        return decode_report(data, path)
    except DataError as err:
        handle(err, on_error, skips)
        return None


_ZIP_MEMBER_RE = re.compile(r"(?:^|/)(?:files/)?(p\d{2}/p\d+/s\d+\.txt)$")


REPORT_ARCHIVES = ("mimic-cxr-reports.zip", "mimic-cxr-reports.tar.gz", "mimic-cxr-reports.tgz")


def _reports_cache() -> Path:
    return Path(os.environ.get("CXR_MAX_CACHE") or Path.home() / ".cache" / "cxr_max") / "reports"


def tar_as_zip(source: Path) -> Path:
    """An uncompressed zip copy of a reports ``.tar.gz``, made once (a gzip stream has no random access:
    reading one member means decompressing everything before it). Cached under ``$CXR_MAX_CACHE/reports``,
    keyed by the archive's path, size and modification time."""
    import hashlib
    import tarfile

    st = source.stat()
    key = hashlib.sha256(f"{source.absolute()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = _reports_cache() / f"{source.name.split('.')[0]}-{key}.zip"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(source, "r|*") as tar, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for member in tar:
                if not member.isfile() or not _ZIP_MEMBER_RE.search(member.name):
                    continue
                f = tar.extractfile(member)
                if f is not None:
                    zf.writestr(member.name, f.read())
    except (tarfile.TarError, OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"not a readable tar.gz archive (truncated download?): {e}", path=source) from e
    os.replace(tmp, target)
    return target


class ReportStore:
    """Reports of a MIMIC-CXR copy: the per-study ``.txt`` tree, ``mimic-cxr-reports.zip`` or
    ``mimic-cxr-reports.tar.gz``.

    ``source`` is a folder holding ``files/p??/p*/s*.txt`` (the MIMIC-CXR root) or one of the archives.
    The zip is opened once and indexed by its inner paths; a top-level folder inside the archive
    (``mimic-cxr-reports/files/...``) is handled. A tar.gz is converted once to a cached zip
    (:func:`tar_as_zip`). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, source: str | os.PathLike, *, on_error: OnError = "raise", skips: SkipLog | None = None):
        self.source = Path(source)
        self.on_error, self.skips = on_error, skips
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        if self.source.is_dir():
            self.kind = "tree"
        elif self.source.is_file():
            self.kind = "zip"
            opened = self.source
            if self.source.name.endswith((".tar.gz", ".tgz", ".tar")):
                self.kind = "tar"
                opened = tar_as_zip(self.source)
            try:
                self._zip = zipfile.ZipFile(opened)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"not a readable zip file: {e}", path=self.source) from e
            for name in self._zip.namelist():
                m = _ZIP_MEMBER_RE.search(name)
                if m:
                    self._members.setdefault("files/" + m.group(1), name)
        else:
            raise DataError("report source not found (expected a folder, mimic-cxr-reports.zip or .tar.gz)", path=self.source)

    # -- lookup
    def __len__(self) -> int:
        """Number of reports in the archive (a tree is not scanned: len() of a tree store raises)."""
        if self.kind == "tree":
            raise TypeError("a report tree is not indexed; use has() per study")
        return len(self._members)

    def where(self, subject_id: object, study_id: object) -> str:
        """A printable location of the report: a file path, or ``<zip>::<inner path>``."""
        rel = report_relpath(subject_id, study_id)
        if self.kind == "tree":
            return str(safe_join(self.source, rel))
        return f"{self.source}::{self._members.get(rel, rel)}"

    def has(self, subject_id: object, study_id: object) -> bool:
        """Whether the study has a report in this source."""
        rel = report_relpath(subject_id, study_id)
        if self.kind == "tree":
            return safe_join(self.source, rel).is_file()
        return rel in self._members

    def text(self, subject_id: object, study_id: object) -> str | None:
        """The report text of a study; missing or undecodable -> DataError, or None counted under skip."""
        try:
            rel = report_relpath(subject_id, study_id)
            if self.kind == "tree":
                path = safe_join(self.source, rel)
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    raise DataError(f"no report for study {study_id} (subject {subject_id})", path=path) from None
                except OSError as e:
                    raise DataError(f"cannot read report: {e}", path=path) from e
                return decode_report(data, path)
            member = self._members.get(rel)
            if member is None:
                raise DataError(f"no report for study {study_id} (subject {subject_id}) in the archive", path=self.source)
            assert self._zip is not None
            try:
                data = self._zip.read(member)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(f"cannot read {member} from the zip: {e}", path=self.source) from e
            return decode_report(data, f"{self.source}::{member}")
        except DataError as err:
            handle(err, self.on_error, self.skips)
            return None

    def report(self, subject_id: object, study_id: object) -> dict[str, str] | None:
        """The parsed sections of a study's report (see :func:`parse_report`)."""
        text = self.text(subject_id, study_id)
        return None if text is None else parse_report(text)

    # -- lifetime
    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> "ReportStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_report_source(*roots: str | os.PathLike | None) -> Path | None:
    """Where a MIMIC copy keeps its reports: ``mimic-cxr-reports.zip``, then ``mimic-cxr-reports.tar.gz``
    (or ``.tgz``) in one of ``roots``, else the first root with a ``files`` folder holding ``s*.txt``
    reports (checked on the first patient folders only). ``None`` when there is none."""
    candidates = [Path(r) for r in roots if r is not None]
    for name in REPORT_ARCHIVES:
        for root in candidates:
            if (root / name).is_file():
                return root / name
    for root in candidates:
        files = root / "files"
        if not files.is_dir():
            continue
        for group in sorted(files.glob("p??"))[:2]:
            for patient in sorted(group.glob("p*"))[:5]:
                if any(patient.glob("s*.txt")):
                    return root
    return None

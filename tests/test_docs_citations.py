"""The repository explains itself: code cites its own docs (docs/*.md, README), never documents it does not
contain, and every ``docs/<name>.md`` a docstring names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("cxr_max", "recipes", "builders", "benchmarks", "tests")
# spelled in pieces so that this file does not match itself
OUTSIDE = re.compile(r"\b" + "REFERENCE" + r"(?:\.md|\s+section|\s+§)|\b" + "DESIGN" + r"\.md")
DOC_REF = re.compile(r"\bdocs/([\w-]+\.md)")


def _py_files():
    for top in SCANNED:
        yield from sorted((REPO / top).rglob("*.py"))


def test_pattern_by_hand():
    assert OUTSIDE.search("the authors' format (REFER" + "ENCE section 2)")
    assert OUTSIDE.search("as measured in DES" + "IGN.md")
    assert not OUTSIDE.search('"REFERENCE EXAM": "COMPARISON"')  # a MIMIC report header, not a citation
    assert not OUTSIDE.search("PREFERENCE_FIELDS")


def test_no_citation_of_documents_outside_the_repository():
    hits = [f"{p.relative_to(REPO)}:{i}" for p in _py_files()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert hits == []


def test_cited_docs_exist():
    cited = {(p.relative_to(REPO).as_posix(), m.group(1)) for p in _py_files()
             for m in DOC_REF.finditer(p.read_text(encoding="utf-8"))}
    assert cited, "no docstring cites docs/ (the test would check nothing)"
    missing = sorted(c for c in cited if not (REPO / "docs" / c[1]).is_file())
    assert missing == []

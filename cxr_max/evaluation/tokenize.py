"""Tokenisation for the COCO caption metrics.

Papers run pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1, Java, with ``-lowerCase
-preserveLines``) and then drop the punctuation tokens in its ``PUNCTUATIONS`` list before scoring.
Java may be missing (CI), so the default here is :func:`simple_tokenize`, a pure-Python tokeniser
written to give the same tokens as that pipeline on radiology report text:

* lower-case; line breaks are spaces;
* quotes and the punctuation marks ``, ; : ? ! .`` (and ``-``/``--``/``...`` standing alone) are
  separators and are dropped, as PTB splits them off and pycocoevalcap removes them;
* brackets become the tokens ``-lrb-``, ``-rrb-``, ``-lsb-``, ``-rsb-``, ``-lcb-``, ``-rcb-``: PTB
  writes them in capitals, ``-lowerCase`` lower-cases them, and pycocoevalcap's punctuation list only
  has the capital forms, so the reference pipeline keeps them as words (a quirk we reproduce);
* a period or comma between digits stays inside the number ("2.5", "1,000"); a period inside a word
  or an abbreviation ("e.g.", "vs.", "dr.", "a.m.") is kept, as PTB keeps known abbreviations;
* a colon between digits stays ("10:30");
* hyphenated words and slashes stay one token ("left-sided", "and/or", "___");
* clitics are split as PTB does: "patient's" -> "patient 's", "don't" -> "do n't";
* ``%``, ``$``, ``#``, ``+``, ``=``, ``<``, ``>``, ``&``, ``*``, ``@`` are tokens of their own.

:func:`ptb_tokenize` runs the real Java tokeniser when Java is installed (``java_available()``);
tests check that both give the same tokens on realistic report sentences.
"""

from __future__ import annotations

import functools
import re
import shutil

__all__ = ["simple_tokenize", "ptb_tokenize", "java_available", "PTB_PUNCTUATIONS"]

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (what is removed after PTB tokenisation).
PTB_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_ABBREV = (
    r"(?:e\.g|i\.e|vs|dr|mr|mrs|ms|st|no|approx|etc|a\.m|p\.m|u\.s|fig|jr|sr|prof|inc|co|ltd|"
    r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)\."
)
_TOKEN = re.compile(
    r"\d+(?:[.,:]\d+)+"  # numbers with decimals, thousands, times
    r"|" + _ABBREV + r"(?=\s|$)"  # known abbreviations keep their period
    r"|(?:[a-z]\.){2,}"  # dotted initialisms: "u.s."
    r"|n't"
    r"|'(?:s|m|d|ll|re|ve)\b"
    r"|[\w/]+?(?=n't\b)"  # "do" of "don't"
    r"|[\w][\w/\-]*(?:\.[\w][\w/\-]*)*"  # words, hyphenated, slashed, dotted inside
    r"|[%$#+=<>&*@~^|\\]"
    r"|[()\[\]{}]",
    re.IGNORECASE,
)


_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


def simple_tokenize(text: str) -> list[str]:
    """Tokens of ``text`` as PTB tokenisation + pycocoevalcap punctuation removal gives them.

    >>> simple_tokenize("Small left pleural effusion (unchanged), 2.5 cm.")
    ['small', 'left', 'pleural', 'effusion', '-lrb-', 'unchanged', '-rrb-', '2.5', 'cm']
    """
    return [_BRACKETS.get(t, t) for t in _TOKEN.findall(text.lower().replace("\n", " "))]


@functools.cache
def java_available() -> bool:
    """True when a ``java`` executable is on PATH (needed by PTBTokenizer and METEOR)."""
    return shutil.which("java") is not None


def ptb_tokenize(texts: list[str]) -> list[list[str]]:
    """Tokenise with pycocoevalcap's Java PTBTokenizer (the reference pipeline). Needs Java.

    Raises RuntimeError when Java is not installed.
    """
    if not java_available():
        raise RuntimeError("ptb_tokenize needs Java (java not found on PATH); use simple_tokenize")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not texts:
        return []
    captions = {i: [{"caption": t}] for i, t in enumerate(texts)}
    out = PTBTokenizer().tokenize(captions)
    return [out[i][0].split() for i in range(len(texts))]

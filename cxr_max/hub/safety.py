"""What may leave the user's machine: the credentialed-data safety filter of an export.

PhysioNet's data use agreement forbids sharing MIMIC-CXR images and report text (README, "Licence and privacy").
A cxr_max export therefore keeps, by default, only identifiers (``subject_id``, ``study_id``,
``dicom_id``), teacher trajectories and derived labels. The filter works in two layers:

1. **Column semantics.** Columns whose *name* or *feature type* says they hold pixels or report text
   are dropped (and the drop is recorded in the export manifest and the card, never silent):

   * pixels: any ``datasets.Image`` feature (also nested, e.g. a list of images), any binary column,
     and the names in :data:`PIXEL_COLUMNS`;
   * report text: the names in :data:`REPORT_COLUMNS` and any name ending in ``_report``/``_reports``
     or starting with ``report_``.

   Trajectory text is *allowed*: ``prompt``, ``raw``, ``reasoning``, ``answer``, ``chosen``,
   ``rejected``, ``messages`` (see :data:`TRAJECTORY_COLUMNS`); it is what CXR-MAX publishes.

2. **Values.** Every value that survives is checked: bytes that start like a JPEG, PNG, JPEG 2000 or
   DICOM file, strings that are a base64 or data-URI image, and (when report text is known) strings
   containing a sentence of at least ``min_sentence_chars`` characters of a report. A hit is a
   :class:`~cxr_max.errors.DataError` naming the config, split, row and column, or a counted skip of
   that row under ``on_error="skip"``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import datasets
import pyarrow as pa
import pyarrow.compute as pc

PIXEL_COLUMNS: frozenset[str] = frozenset(
    {
        "image", "images", "image_bytes", "pixel_values", "pixels", "dicom", "dicom_bytes", "jpg", "png",
        "current_image", "previous_image", "prior_image", "chosen_images", "rejected_images",
    }
)
REPORT_COLUMNS: frozenset[str] = frozenset(
    {
        "report", "reports", "report_text", "findings", "impression", "indication", "history",
        "comparison", "technique", "examination", "reference", "references", "reference_report",
        "previous_report", "prior_report", "sections", "sentence_1", "sentence_2",
    }
)
TRAJECTORY_COLUMNS: frozenset[str] = frozenset(
    {"prompt", "raw", "reasoning", "answer", "chosen", "rejected", "messages", "rejected_messages", "consensus"}
)

# File signatures. DICOM has a 128-byte preamble before "DICM".
_MAGIC_PREFIXES: tuple[tuple[str, bytes], ...] = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("JPEG 2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
    ("JPEG 2000 codestream", b"\xffO\xffQ"),
)
# base64 of the JPEG / PNG signatures, and data URIs.
_ENCODED_IMAGE = r"^\s*(data:image/|/9j/|iVBORw0KGgo)"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=[A-Z ]+:)")
_SPACES = re.compile(r"\s+")
# Markup (<think>, </answer>) and report section headers (FINDINGS:, FINAL REPORT) are not sentence text.
_MARKUP = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]{0,30}>|\b[A-Z][A-Z /()&-]{2,}:|^\s*FINAL REPORT\b", re.MULTILINE)


def image_signature(value: bytes) -> str | None:
    """The image format whose file signature ``value`` starts with (JPEG, PNG, JPEG 2000, DICOM), else None."""
    for name, magic in _MAGIC_PREFIXES:
        if value.startswith(magic):
            return name
    if len(value) >= 132 and value[128:132] == b"DICM":
        return "DICOM"
    return None


def is_pixel_column(name: str, feature: object) -> bool:
    """True when a column holds pixels: its name is in PIXEL_COLUMNS or its feature holds an Image or bytes."""
    return name.lower() in PIXEL_COLUMNS or holds_pixels(feature)


def is_report_column(name: str) -> bool:
    """True when a column's name says it holds report text (REPORT_COLUMNS, ``*_report(s)``, ``report_*``)."""
    low = name.lower()
    return low in REPORT_COLUMNS or low.endswith(("_report", "_reports")) or low.startswith("report_")


def holds_pixels(feature: object) -> bool:
    """Whether a ``datasets`` feature holds pixels (an Image, binary bytes, or either nested inside)."""
    if isinstance(feature, datasets.Image):
        return True
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("binary", "large_binary")
    if isinstance(feature, dict):
        return any(holds_pixels(f) for f in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(holds_pixels(f) for f in feature)
    inner = getattr(feature, "feature", None)  # List / LargeList / Sequence
    return inner is not None and holds_pixels(inner)


def normalise_sentence(text: str) -> str:
    """Lower-case and collapse whitespace, so line-wrapped report sentences still match."""
    return _SPACES.sub(" ", text).strip().lower()


def split_sentences(text: str) -> list[str]:
    """Split free text (a report, a trajectory) into normalised sentences, without markup tags or section headers."""
    text = _MARKUP.sub("\n\n", text or "")
    return [s for s in (normalise_sentence(p) for p in _SENTENCE_SPLIT.split(text)) if s]


def report_sentences(reports: Iterable[str | None], min_chars: int) -> frozenset[str]:
    """The normalised sentences of ``reports`` that are at least ``min_chars`` long (the ones worth protecting)."""
    out: set[str] = set()
    for report in reports:
        if report:
            out.update(s for s in split_sentences(str(report)) if len(s) >= min_chars)
    return frozenset(out)


@dataclasses.dataclass(frozen=True)
class Violation:
    """One value that must not leave the machine."""

    row: int
    column: str
    reason: str


def leaves(array: pa.Array, rows: pa.Array, path: str):
    """Yield ``(path, leaf_array, row_index_array)`` for every string or binary leaf of a (nested) arrow array."""
    t = array.type
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from leaves(array.field(i), rows, f"{path}.{t.field(i).name}")
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        parents = pc.list_parent_indices(array)
        yield from leaves(pc.list_flatten(array), pc.take(rows, parents), f"{path}[]")
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        yield path, array, rows


def scan_table(
    table: pa.Table,
    *,
    check_pixels: bool,
    sentences: frozenset[str],
    row_offset: int = 0,
) -> list[Violation]:
    """Find values in ``table`` that look like image bytes (``check_pixels``) or contain a report sentence.

    Returns at most one violation per (row, column); rows are numbered from ``row_offset``.
    """
    found: dict[tuple[int, str], Violation] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        rows = pa.array(range(row_offset, row_offset + len(column)), pa.int64())
        for path, leaf, leaf_rows in leaves(column, rows, name):
            is_text = pa.types.is_string(leaf.type) or pa.types.is_large_string(leaf.type)
            if check_pixels and is_text:
                hits = pc.fill_null(pc.match_substring_regex(leaf, _ENCODED_IMAGE), False)
                for i in pc.indices_nonzero(hits).to_pylist():
                    row = leaf_rows[i].as_py()
                    found.setdefault((row, name), Violation(row, path, "a base64 / data-URI image"))
            if check_pixels and not is_text:
                for i, value in enumerate(leaf.to_pylist()):
                    kind = image_signature(value) if value else None
                    if kind:
                        row = leaf_rows[i].as_py()
                        found.setdefault((row, name), Violation(row, path, f"{kind} image bytes"))
            if sentences and is_text:
                for i, value in enumerate(leaf.to_pylist()):
                    if value and len(value) >= 8:
                        if any(s in sentences for s in split_sentences(value)):
                            row = leaf_rows[i].as_py()
                            found.setdefault((row, name), Violation(row, path, "a sentence of a MIMIC report"))
    return sorted(found.values(), key=lambda v: (v.row, v.column))

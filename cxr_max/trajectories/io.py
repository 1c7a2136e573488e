"""Read trajectory folders into Arrow tables in the canonical schema.

Sources: JSONL (``*.jsonl``, ``*.jsonl.gz``) and parquet files in the canonical schema
(:mod:`cxr_max.trajectories.schema`); other layouts through ``mapping`` (rename columns) or an
adapter (``adapter="ms_swift"`` for the authors' ms-swift rows).

Every returned table carries two bookkeeping columns, ``_file`` and ``_row`` (1-based line or row
number), so a later check (unknown ids, duplicates) can name where a record came from. Use
:func:`drop_bookkeeping` before handing a table to users.

Duplicates of a key (dicom_id, teacher, task, sample) follow one documented rule
(:func:`resolve_duplicates`): a ``status="ok"`` record supersedes ``"failed"`` records of the same
key (a resumed collection retried them); among failed records the latest ``collected_at`` wins;
two ``ok`` records for one key are a real duplicate: an error naming both places, or under
``on_error="skip"`` the first is kept and the other counted.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from cxr_max.errors import DataError, OnError, SkipLog, handle
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS, LATERALITIES
from cxr_max.trajectories.parse import is_refusal, split_answer
from cxr_max.trajectories.schema import ARROW_SCHEMA, FIELDS, KEY_FIELDS, REQUIRED, STATUSES, normalize_record

TRAJECTORY_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
BOOKKEEPING = ("_file", "_row")
FULL_SCHEMA = ARROW_SCHEMA.append(pa.field("_file", pa.string())).append(pa.field("_row", pa.int64()))
ADAPTERS = ("ms_swift",)


def list_trajectory_files(source: str | Path) -> list[Path]:
    """All trajectory files under ``source`` (a file or a folder, searched recursively), sorted."""
    src = Path(source).expanduser()
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError("no such trajectory file or folder", path=src)
    files = sorted(
        p for p in src.rglob("*") if p.is_file() and p.name.endswith(TRAJECTORY_SUFFIXES) and not p.name.startswith(".")
    )
    return files


# ---------------------------------------------------------------------------------------------
# One file


def _open_text(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data


def _with_bookkeeping(table: pa.Table, path: Path, rows: np.ndarray | None = None) -> pa.Table:
    n = table.num_rows
    rows_arr = pa.array(np.arange(1, n + 1) if rows is None else rows, pa.int64())
    return table.append_column("_file", pa.array([str(path)] * n, pa.string())).append_column("_row", rows_arr)


def _fast_valid(table: pa.Table) -> bool:
    """Vectorised checks of a canonical table; False sends the file down the exact, row-by-row path."""
    for f in REQUIRED:
        col = table.column(f)
        if col.null_count:
            return False
        if pa.types.is_string(col.type) and pc.any(pc.equal(col, "")).as_py():
            return False
    status = table.column("status")
    if not pc.all(pc.or_kleene(pc.is_null(status), pc.is_in(status, pa.array(STATUSES)))).as_py():
        return False
    labels = table.column("labels").combine_chunks()
    if labels.null_count < len(labels):
        allowed = pa.array([1.0, 0.0, -1.0], pa.float32())
        for name in CHEXPERT_LABELS:
            child = pc.struct_field(labels, name)
            if not pc.all(pc.or_kleene(pc.is_null(child), pc.is_in(child, allowed))).as_py():
                return False
    lat = table.column("laterality").combine_chunks()
    if lat.null_count < len(lat):
        for name in LATERAL_FINDINGS:
            child = pc.struct_field(lat, name)
            if not pc.all(pc.or_kleene(pc.is_null(child), pc.is_in(child, pa.array(LATERALITIES)))).as_py():
                return False
    return True


def _fill_defaults(table: pa.Table) -> pa.Table:
    status = pc.fill_null(table.column("status"), "ok")
    refusal = pc.fill_null(table.column("refusal"), False)
    table = table.set_column(table.schema.get_field_index("status"), "status", status)
    return table.set_column(table.schema.get_field_index("refusal"), "refusal", refusal)


def _iter_json_lines(path: Path, data: bytes, on_error: OnError, skips: SkipLog | None) -> Iterator[tuple[int, dict]]:
    for lineno, line in enumerate(io.BytesIO(data), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            handle(DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path, row=lineno), on_error, skips)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            handle(DataError(f"malformed JSON ({e.msg}, column {e.colno})", path=path, row=lineno), on_error, skips)
            continue
        if not isinstance(obj, dict):
            handle(DataError(f"a JSONL line must be an object, got {type(obj).__name__}", path=path, row=lineno), on_error, skips)
            continue
        yield lineno, obj


def _records_to_table(records: list[dict], rows: list[int], path: Path) -> pa.Table:
    table = pa.Table.from_pylist(records, schema=ARROW_SCHEMA) if records else ARROW_SCHEMA.empty_table()
    return _with_bookkeeping(table, path, np.asarray(rows, dtype=np.int64))


def _canonical_rows(
    path: Path, raw_rows: Iterable[tuple[int, dict]], on_error: OnError, skips: SkipLog | None, ids_from_metadata: bool = False
) -> pa.Table:
    records, rows = [], []
    for lineno, obj in raw_rows:
        try:
            records.append(normalize_record(obj, ids_from_metadata=ids_from_metadata))
            rows.append(lineno)
        except ValueError as e:
            handle(DataError(str(e), path=path, row=lineno), on_error, skips)
    return _records_to_table(records, rows, path)


def _derive_missing(rec: dict) -> dict:
    """Fill reasoning/answer/refusal from ``raw`` when a mapped layout does not carry them."""
    raw = rec.get("raw")
    if raw is None and rec.get("answer") is not None:
        raw = rec["answer"] if not rec.get("reasoning") else f"<think>{rec['reasoning']}</think>{rec['answer']}"
        rec["raw"] = raw
    if raw is not None and rec.get("reasoning") is None and rec.get("answer") is None:
        rec["reasoning"], rec["answer"] = split_answer(raw)
    if rec.get("refusal") is None and raw is not None:
        rec["refusal"] = is_refusal(raw)
    rec.setdefault("task", "diagnose")
    rec.setdefault("sample", 0)
    return rec


def apply_mapping(obj: Mapping[str, Any], mapping: Mapping[str, str], *, keep_unmapped: bool = False) -> dict:
    """Rename a foreign record's fields to canonical ones: ``mapping`` is {their_name: canonical_name}.

    Unmapped fields that are canonical already are kept; other unmapped fields are dropped only
    when ``keep_unmapped`` is False (the default: a mapping says which fields matter).
    """
    bad = set(mapping.values()) - set(FIELDS)
    if bad:
        raise ValueError(f"mapping targets unknown canonical field(s) {sorted(bad)}")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in mapping:
            out[mapping[k]] = v
        elif k in FIELDS or keep_unmapped:
            out[k] = v
    return _derive_missing(out)


# ms-swift ---------------------------------------------------------------------------------------

def _ids_from_image_path(path: str) -> dict[str, str]:
    """dicom_id from the file name; subject_id/study_id from a PhysioNet-style path when present."""
    p = Path(path)
    ids = {"dicom_id": p.stem}
    for part in p.parts:
        if len(part) == 9 and part[0] == "p" and part[1:].isdigit():
            ids["subject_id"] = part[1:]
        if len(part) == 9 and part[0] == "s" and part[1:].isdigit():
            ids["study_id"] = part[1:]
    return ids


def _assistant_text(messages: list[dict]) -> str | None:
    for m in reversed(messages or []):
        if m.get("role") == "assistant":
            c = m.get("content")
            if isinstance(c, list):
                return "".join(part.get("text", "") for part in c if isinstance(part, dict))
            return c
    return None


def _user_text(messages: list[dict]) -> str | None:
    for m in messages or []:
        if m.get("role") == "user":
            return m.get("content") if isinstance(m.get("content"), str) else None
    return None


def adapt_ms_swift(
    obj: Mapping[str, Any], *, chosen_teacher: str = "ms-swift-chosen", rejected_teacher: str = "ms-swift-rejected"
) -> list[dict]:
    """One ms-swift row -> canonical records (REFERENCE section 2).

    ``messages`` gives a record for ``chosen_teacher``; ``rejected_messages`` (DPO rows) one for
    ``rejected_teacher``. The authors' rows do not name teachers, so these names are parameters.
    ``sample`` numbers are assigned later, per (dicom_id, teacher), in file order.
    """
    if "messages" not in obj or "images" not in obj:
        raise ValueError("an ms-swift row needs 'messages' and 'images'")
    images = obj.get("images") or []
    if not images:
        raise ValueError("ms-swift row has no image")
    out = []
    for field, img_field, teacher in (
        ("messages", "images", chosen_teacher),
        ("rejected_messages", "rejected_images", rejected_teacher),
    ):
        msgs = obj.get(field)
        if not msgs:
            continue
        imgs = obj.get(img_field) or images
        raw = _assistant_text(msgs)
        if raw is None:
            raise ValueError(f"ms-swift '{field}' has no assistant message")
        rec = {**_ids_from_image_path(imgs[0]), "teacher": teacher, "task": "diagnose", "prompt": _user_text(msgs), "raw": raw}
        out.append(_derive_missing(rec))
    return out


def _number_samples(records: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """Give adapted records their sample index per (dicom_id, teacher, task); merge exact repeats."""
    seen: dict[tuple, list[str]] = {}
    out = []
    for lineno, rec in records:
        k = (rec["dicom_id"], rec["teacher"], rec["task"])
        texts = seen.setdefault(k, [])
        if rec["raw"] in texts:  # the same chosen answer repeated on every pairwise row: one record
            continue
        rec["sample"] = len(texts)
        texts.append(rec["raw"])
        out.append((lineno, rec))
    return out


def read_trajectory_file(
    path: str | Path,
    *,
    mapping: Mapping[str, str] | None = None,
    adapter: str | None = None,
    adapter_kwargs: Mapping[str, Any] | None = None,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
) -> pa.Table:
    """One file -> canonical Arrow table (plus ``_file``/``_row``)."""
    path = Path(path)
    if adapter is not None and adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; known: {ADAPTERS}")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for corrupt files
            handle(DataError(f"unreadable parquet file ({e})", path=path), on_error, skips)
            return FULL_SCHEMA.empty_table()
        if mapping is None and adapter is None and set(table.column_names) <= set(FIELDS) and set(REQUIRED) <= set(table.column_names):
            try:
                canon = table.select([c for c in FIELDS if c in table.column_names])
                for f in FIELDS:
                    if f not in canon.column_names:
                        canon = canon.append_column(ARROW_SCHEMA.field(f), pa.nulls(canon.num_rows, ARROW_SCHEMA.field(f).type))
                canon = canon.select(list(FIELDS)).cast(ARROW_SCHEMA)
                if _fast_valid(canon):
                    return _with_bookkeeping(_fill_defaults(canon), path)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                pass
        raw_rows: Iterable[tuple[int, dict]] = enumerate(table.to_pylist(), start=1)
    else:
        try:
            data = _open_text(path)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            handle(DataError(f"unreadable file ({e})", path=path), on_error, skips)
            return FULL_SCHEMA.empty_table()
        if mapping is None and adapter is None:
            try:
                table = pj.read_json(
                    io.BytesIO(data),
                    parse_options=pj.ParseOptions(explicit_schema=ARROW_SCHEMA, unexpected_field_behavior="error"),
                )
                table = table.select(list(FIELDS)).cast(ARROW_SCHEMA)
                if _fast_valid(table) and table.num_rows == sum(1 for ln in data.splitlines() if ln.strip()):
                    return _with_bookkeeping(_fill_defaults(table), path)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                pass  # the exact path below finds and names the bad row
        raw_rows = _iter_json_lines(path, data, on_error, skips)

    if adapter == "ms_swift":
        adapted = []
        for lineno, obj in raw_rows:
            try:
                adapted.extend((lineno, rec) for rec in adapt_ms_swift(obj, **(adapter_kwargs or {})))
            except ValueError as e:
                handle(DataError(str(e), path=path, row=lineno), on_error, skips)
        raw_rows = _number_samples(adapted)
    elif mapping is not None:
        mapped = []
        for lineno, obj in raw_rows:
            try:
                mapped.append((lineno, apply_mapping(obj, mapping)))
            except ValueError as e:
                handle(DataError(str(e), path=path, row=lineno), on_error, skips)
        raw_rows = mapped
    return _canonical_rows(path, raw_rows, on_error, skips, ids_from_metadata=adapter is not None or mapping is not None)


# ---------------------------------------------------------------------------------------------
# Many files


def fill_ids_from_metadata(table: pa.Table, images: pa.Table) -> pa.Table:
    """Fill empty ``subject_id``/``study_id`` from an image table (dicom_id -> ids), e.g. for adapted rows."""
    if not (pc.any(pc.equal(table.column("subject_id"), "")).as_py() or pc.any(pc.equal(table.column("study_id"), "")).as_py()):
        return table
    idx = pc.index_in(table.column("dicom_id"), images.column("dicom_id"))
    for f in ("subject_id", "study_id"):
        looked_up = pc.take(images.column(f), idx)
        col = table.column(f)
        fixed = pc.if_else(pc.equal(col, ""), looked_up, col)
        table = table.set_column(table.schema.get_field_index(f), f, fixed)
    return table


def resolve_duplicates(table: pa.Table, *, on_error: OnError = "raise", skips: SkipLog | None = None) -> pa.Table:
    """Apply the duplicate rule of this module's docstring; returns the kept rows in input order."""
    n = table.num_rows
    if n == 0:
        return table
    keys = table.select(list(KEY_FIELDS)).append_column("_i", pa.array(np.arange(n)))
    counts = keys.group_by(list(KEY_FIELDS)).aggregate([("_i", "count")])
    if pc.max(counts.column("_i_count")).as_py() <= 1:
        return table
    # Order per key: ok before failed; among failed the latest collected_at first; else file order.
    is_ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False).astype(bool)
    collected = pc.fill_null(table.column("collected_at"), "").to_numpy(zero_copy_only=False).astype(str)
    # stable sort by key, then by (not ok), then by collected_at descending
    order = np.lexsort((np.arange(n), np.where(is_ok, 0, _desc_rank(collected)), ~is_ok, *_key_codes(table)[::-1]))
    code = np.stack(_key_codes(table), axis=1)[order]
    first = np.ones(n, dtype=bool)
    first[1:] = np.any(code[1:] != code[:-1], axis=1)
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    # Classify the dropped ones.
    files = table.column("_file").to_pylist() if "_file" in table.column_names else [None] * n
    rows = table.column("_row").to_pylist() if "_row" in table.column_names else [None] * n
    leader = np.empty(n, dtype=np.int64)
    lead = -1
    for pos, i in enumerate(order):
        if first[pos]:
            lead = i
        leader[i] = lead
    for i in np.flatnonzero(~keep):
        j = leader[i]
        if is_ok[i] and is_ok[j]:
            err = DataError(
                f"duplicate record for key {tuple(table.slice(i, 1).select(list(KEY_FIELDS)).to_pylist()[0].values())}"
                f" (first seen at {files[j]}, row {rows[j]})",
                path=files[i],
                row=rows[i],
                kind="duplicate record (same dicom_id, teacher, task, sample)",
            )
            handle(err, on_error, skips)
        elif skips is not None:
            skips.add("failed request superseded by a later result for the same key", f"{files[i]}:{rows[i]}")
    return table.filter(pa.array(keep))


def _key_codes(table: pa.Table) -> list[np.ndarray]:
    codes = []
    for f in KEY_FIELDS:
        col = table.column(f).combine_chunks()
        if pa.types.is_integer(col.type):
            codes.append(col.to_numpy(zero_copy_only=False).astype(np.int64))
        else:
            codes.append(pc.dictionary_encode(col).indices.to_numpy(zero_copy_only=False).astype(np.int64))
    return codes


def _desc_rank(values: np.ndarray) -> np.ndarray:
    """Ranks such that the largest string sorts first."""
    _, inv = np.unique(values, return_inverse=True)
    return -inv


def read_trajectories(
    source: str | Path | Iterable[str | Path],
    *,
    mapping: Mapping[str, str] | None = None,
    adapter: str | None = None,
    adapter_kwargs: Mapping[str, Any] | None = None,
    include_failed: bool = False,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
    keep_bookkeeping: bool = False,
) -> pa.Table:
    """Read every trajectory file of ``source`` into one canonical table, duplicates resolved.

    Failed requests (``status="failed"``) are dropped unless ``include_failed``; they are counted in
    ``skips`` when one is given (they are the collector's record of work it could not do, not data).
    """
    files: list[Path] = []
    for s in [source] if isinstance(source, (str, Path)) else source:
        files.extend(list_trajectory_files(s))
    if not files:
        raise DataError("no trajectory files (*.jsonl, *.jsonl.gz, *.parquet) found", path=source)
    tables = [
        read_trajectory_file(f, mapping=mapping, adapter=adapter, adapter_kwargs=adapter_kwargs, on_error=on_error, skips=skips)
        for f in files
    ]
    table = pa.concat_tables(tables) if tables else FULL_SCHEMA.empty_table()
    table = resolve_duplicates(table, on_error=on_error, skips=skips)
    if not include_failed:
        failed = pc.equal(table.column("status"), "failed")
        n_failed = pc.sum(failed).as_py() or 0
        if n_failed and skips is not None:
            skips.counts["failed request (status=failed), excluded"] += n_failed
        table = table.filter(pc.invert(failed))
    return table if keep_bookkeeping else drop_bookkeeping(table)


def drop_bookkeeping(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in BOOKKEEPING if c in table.column_names])


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write canonical records (normalised) as JSONL; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(normalize_record(dict(rec)), ensure_ascii=False) + "\n")
            n += 1
    return n

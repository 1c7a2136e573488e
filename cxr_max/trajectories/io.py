"""Read trajectory folders into Arrow tables in the canonical schema.

Sources: JSONL (``*.jsonl``, ``*.jsonl.gz``) and parquet files in the canonical schema
(:mod:`cxr_max.trajectories.schema`); other layouts through ``mapping`` (rename columns) or an
adapter. With an adapter or a mapping, ``*.json`` files are read too, as a JSON array of rows (the
authors' ``SPD.json`` / ``APO.json``) or as JSON lines. Adapters (:data:`ADAPTERS`):

* ``"ms_swift"``: ms-swift rows, any of its layouts, detected per row: ``messages`` (+ ``images``,
  ``rejected_messages`` / ``rejected_images`` or ``rejected_response``), ShareGPT ``conversations``
  (``from``/``value``), ``query``/``response`` (+ ``history``, ``system``), alpaca
  ``instruction``/``input``/``output`` (or ``chosen``/``rejected``);
* ``"sharegpt"``, ``"alpaca"``, ``"query_response"``: the same, with the layout forced.

Images may be strings or ``{"path": ...}`` dicts; the dicom_id is the file name, subject and study
ids come from a PhysioNet-style path or the metadata. A ``system`` turn is kept (``system`` field).
A row's ``model`` / ``teacher`` / ``source`` field names the chosen side's teacher, and
``rejected_model`` / ``rejected_teacher`` / ``rejected_source`` the rejected side's; rows without
them get ``ms-swift-chosen`` / ``ms-swift-rejected``. With an adapter, ``mapping`` renames the
row's fields first (``{"conv": "conversations"}``).

Files are read in batches (:func:`iter_trajectory_batches`), so memory is bounded by a batch, not a file.

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
FOREIGN_SUFFIXES = TRAJECTORY_SUFFIXES + (".json", ".json.gz")
BOOKKEEPING = ("_file", "_row")
FULL_SCHEMA = ARROW_SCHEMA.append(pa.field("_file", pa.string())).append(pa.field("_row", pa.int64()))
ADAPTERS = ("ms_swift", "sharegpt", "alpaca", "query_response")
BATCH_ROWS = 200_000  # at most this many rows per batch when a file is streamed
BATCH_BYTES = 64 * 2**20  # and about this many bytes


def list_trajectory_files(source: str | Path, *, foreign: bool = False, warn_json: bool = False) -> list[Path]:
    """All trajectory files under ``source`` (a file or a folder, searched recursively), sorted.

    ``foreign`` (an adapter or a mapping is used) also lists ``*.json`` files; without it they are
    left out (with ``warn_json``, a warning names them: a JSON-array file needs ``adapter=`` or ``mapping=``).
    """
    src = Path(source).expanduser()
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError("no such trajectory file or folder", path=src)
    suffixes = FOREIGN_SUFFIXES if foreign else TRAJECTORY_SUFFIXES
    files, ignored = [], []
    for p in sorted(src.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name.endswith(suffixes):
            files.append(p)
        elif p.name.endswith((".json", ".json.gz")):
            ignored.append(p)
    if ignored and warn_json:
        import logging

        logging.getLogger("cxr_max").warning(
            "%d .json file(s) under %s not read as trajectories (e.g. %s): JSON-array files are read with "
            "adapter='ms_swift' (or another adapter) or mapping=", len(ignored), src, ignored[0])
    return files


# ---------------------------------------------------------------------------------------------
# One file


def read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when its name ends in ``.gz``."""
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


def iter_json_lines(path: Path, data, on_error: OnError, skips: SkipLog | None, first: int = 1) -> Iterator[tuple[int, dict]]:
    """JSON lines -> (line number, object); ``data`` is bytes or an iterable of byte lines."""
    lines = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    for lineno, line in enumerate(lines, start=first):
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


# ms-swift and the other chat layouts --------------------------------------------------------------

_CHOSEN_TEACHER_FIELDS = ("teacher", "model", "source")
_REJECTED_TEACHER_FIELDS = ("rejected_teacher", "rejected_model", "rejected_source")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                   "model": "assistant", "system": "system"}


def _image_path(img: Any) -> str:
    """An image entry as a path: a string, or a ``{"path": ...}`` / ``{"image": ...}`` / ``{"url": ...}`` dict."""
    if isinstance(img, str) and img:
        return img
    if isinstance(img, Mapping):
        for k in ("path", "image", "url", "file"):
            if isinstance(img.get(k), str) and img[k]:
                return img[k]
        if img.get("bytes") is not None:
            raise ValueError("an image given as bytes without a path: its dicom_id cannot be known")
    raise ValueError(f"an image must be a path or a {{'path': ...}} dict, got {type(img).__name__}")


def _ids_from_image_path(path: str) -> dict[str, str]:
    """dicom_id from the file name; subject_id/study_id from a PhysioNet-style path when present."""
    p = Path(path.split("://", 1)[-1])
    ids = {"dicom_id": p.name.split(".")[0]}
    for part in p.parts:
        if len(part) == 9 and part[0] == "p" and part[1:].isdigit():
            ids["subject_id"] = part[1:]
        if len(part) == 9 and part[0] == "s" and part[1:].isdigit():
            ids["study_id"] = part[1:]
    return ids


def _text_of(content: Any) -> str | None:
    if isinstance(content, list):  # OpenAI-style parts
        return "".join(part.get("text") or "" for part in content if isinstance(part, Mapping) and part.get("type", "text") == "text")
    return content if isinstance(content, str) or content is None else str(content)


def _assistant_text(messages: list[dict]) -> str | None:
    for m in reversed(messages or []):
        if isinstance(m, Mapping) and m.get("role") == "assistant":
            return _text_of(m.get("content"))
    return None


def _role_text(messages: list[dict], role: str) -> str | None:
    for m in messages or []:
        if isinstance(m, Mapping) and m.get("role") == role:
            return _text_of(m.get("content"))
    return None


def _user_text(messages: list[dict]) -> str | None:
    return _role_text(messages, "user")


def _messages_from_sharegpt(conv: Any) -> list[dict]:
    if not isinstance(conv, list):
        raise ValueError("'conversations' must be a list of {from, value} turns")
    out = []
    for turn in conv:
        if not isinstance(turn, Mapping):
            raise ValueError("a ShareGPT turn must be an object with 'from' and 'value'")
        who = turn.get("from", turn.get("role"))
        role = _SHAREGPT_ROLES.get(str(who).lower()) if who is not None else None
        if role is None:
            raise ValueError(f"unknown ShareGPT speaker {who!r}; expected human/gpt/system")
        out.append({"role": role, "content": turn.get("value", turn.get("content"))})
    return out


def _as_messages_row(obj: Mapping[str, Any], layout: str) -> dict:
    """Any supported chat layout -> an ms-swift ``messages`` row (system/user/assistant turns)."""
    row = dict(obj)
    if layout == "ms_swift":  # detect
        layout = ("messages" if "messages" in row else "sharegpt" if "conversations" in row else
                  "query_response" if "query" in row else "alpaca" if "instruction" in row else "messages")
    if layout == "messages":
        if "messages" not in row:
            raise ValueError("an ms-swift row needs 'messages' (or 'conversations', 'query'/'response', 'instruction'/'output')")
        return row
    if layout == "sharegpt":
        if "conversations" not in row:
            raise ValueError("a ShareGPT row needs 'conversations'")
        msgs = _messages_from_sharegpt(row.pop("conversations"))
        if row.get("system") and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": row["system"]})
        row["messages"] = msgs
        return row
    if layout == "query_response":
        if "query" not in row or "response" not in row:
            raise ValueError("a query/response row needs 'query' and 'response'")
        msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        row["messages"] = msgs + [{"role": "user", "content": row.pop("query")}, {"role": "assistant", "content": row.pop("response")}]
        return row
    if layout == "alpaca":
        if "instruction" not in row:
            raise ValueError("an alpaca row needs 'instruction' and 'output' (or 'chosen'/'rejected')")
        prompt = row.pop("instruction") or ""
        if row.get("input"):
            prompt = f"{prompt}\n{row.pop('input')}"
        chosen, rejected = row.pop("output", None), None
        if chosen is None and "chosen" in row:
            chosen, rejected = row.pop("chosen"), row.pop("rejected", None)
        if chosen is None:
            raise ValueError("an alpaca row needs 'output' (or 'chosen'/'rejected')")
        msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        row["messages"] = msgs + [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}]
        if rejected is not None:
            row["rejected_response"] = rejected
        return row
    raise ValueError(f"unknown layout {layout!r}")


def _first_name(obj: Mapping[str, Any], fields: tuple[str, ...]) -> str | None:
    for f in fields:
        v = obj.get(f)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def adapt_ms_swift(
    obj: Mapping[str, Any], *, chosen_teacher: str = "ms-swift-chosen", rejected_teacher: str = "ms-swift-rejected",
    layout: str = "ms_swift",
) -> list[dict]:
    """One ms-swift (or ShareGPT / alpaca / query-response) row -> canonical records.

    The chosen side (``messages``) gives one record; a DPO row's rejected side (``rejected_messages``
    or ``rejected_response``) another. Teachers come from the row's model/source fields when present
    (see the module docs), else ``chosen_teacher`` / ``rejected_teacher``. ``sample`` numbers are
    assigned later, per (dicom_id, teacher, task), in file order.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"a row must be an object, got {type(obj).__name__}")
    row = _as_messages_row(obj, layout)
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not all(isinstance(m, Mapping) for m in msgs):
        raise ValueError("'messages' must be a list of {role, content} objects")
    images = row.get("images", row.get("image"))
    if isinstance(images, (str, Mapping)):
        images = [images]
    if not images:
        raise ValueError("row has no image ('images' is missing or empty)")
    paths = [_image_path(i) for i in images]
    ids = _ids_from_image_path(paths[0])
    for f in ("subject_id", "study_id", "dicom_id"):
        if row.get(f) not in (None, ""):
            ids[f] = str(row[f])
    system = _role_text(msgs, "system")
    prompt = _user_text(msgs)
    chosen_name = _first_name(row, _CHOSEN_TEACHER_FIELDS) or chosen_teacher
    rejected_name = _first_name(row, _REJECTED_TEACHER_FIELDS) or rejected_teacher
    sides: list[tuple[str, str | None, list[str]]] = []
    raw = _assistant_text(msgs)
    if raw is None:
        raise ValueError("'messages' has no assistant message")
    sides.append((chosen_name, raw, paths))
    rejected_msgs = row.get("rejected_messages")
    if rejected_msgs:
        r_raw = _assistant_text(rejected_msgs)
        if r_raw is None:
            raise ValueError("'rejected_messages' has no assistant message")
        r_imgs = row.get("rejected_images") or images
        r_imgs = [r_imgs] if isinstance(r_imgs, (str, Mapping)) else r_imgs
        sides.append((rejected_name, r_raw, [_image_path(i) for i in r_imgs]))
    elif row.get("rejected_response") not in (None, ""):
        r = row["rejected_response"]
        sides.append((rejected_name, _text_of(r) if not isinstance(r, list) else _assistant_text(r), paths))
    out = []
    for teacher, text, side_paths in sides:
        side_ids = dict(ids) if side_paths is paths else {**ids, **_ids_from_image_path(side_paths[0])}
        rec = {**side_ids, "teacher": teacher, "task": "diagnose", "prompt": prompt, "raw": text, "system": system}
        for f in ("teacher_version", "collected_at", "task"):
            if row.get(f) not in (None, ""):
                rec[f] = row[f]
        out.append(_derive_missing(rec))
    return out


class _SampleNumbers:
    """Give adapted records their sample index per (dicom_id, teacher, task); merge exact repeats
    (the chosen answer repeated on every pairwise row is one record). State spans a file's batches."""

    def __init__(self):
        self.seen: dict[tuple, list[str]] = {}

    def __call__(self, records: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
        out = []
        for lineno, rec in records:
            k = (rec["dicom_id"], rec["teacher"], rec["task"])
            texts = self.seen.setdefault(k, [])
            if rec["raw"] in texts:
                continue
            rec["sample"] = len(texts)
            texts.append(rec["raw"])
            out.append((lineno, rec))
        return out


def _number_samples(records: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    return _SampleNumbers()(records)


def _json_rows(path: Path, on_error: OnError, skips: SkipLog | None) -> Iterator[tuple[int, Any]]:
    """Rows of a ``.json`` file: a JSON array (row numbers count from 1 in the array), or JSON lines."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):
        with opener(path, "rb") as f:
            yield from iter_json_lines(path, f, on_error, skips)
        return
    try:
        with opener(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        handle(DataError(f"malformed JSON array ({e})", path=path), on_error, skips)
        return
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            handle(DataError(f"an element of the JSON array must be an object, got {type(obj).__name__}", path=path, row=i),
                   on_error, skips)
            continue
        yield i, obj


def _line_blocks(path: Path, n: int, max_bytes: int = BATCH_BYTES) -> Iterator[tuple[int, bytes, int]]:
    """(first line number, data, number of lines) blocks of a JSONL file: at most ``n`` lines and about
    ``max_bytes`` bytes each, cut at line ends, read incrementally (gzip transparently)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    first, rest = 1, b""
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(max_bytes)
            data = rest + chunk
            if not data:
                return
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a line longer than max_bytes: keep reading
                    rest = data
                    continue
                data, rest = data[:cut], data[cut:]
            else:
                rest = b""
            lines = data.count(b"\n") + (not data.endswith(b"\n"))
            if lines <= n:
                yield first, data, lines
            else:
                parts = data.splitlines(keepends=True)
                for i in range(0, len(parts), n):
                    block = parts[i:i + n]
                    yield first + i, b"".join(block), len(block)
            first += lines
            if not chunk:
                return


def _fast_canonical(data: bytes) -> pa.Table | None:
    """The vectorised read of canonical JSON lines, or None when the exact path must find the bad row."""
    try:
        table = pj.read_json(io.BytesIO(data), parse_options=pj.ParseOptions(
            explicit_schema=ARROW_SCHEMA, unexpected_field_behavior="error"))
        table = table.select(list(FIELDS)).cast(ARROW_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if b"\n\n" not in data and not data.startswith(b"\n"):  # no blank lines: count them in C
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
    else:
        lines = sum(1 for ln in data.splitlines() if ln.strip())
    if table.num_rows == lines and _fast_valid(table):
        return _fill_defaults(table)
    return None


def _foreign_rows(raw_rows, path, *, mapping, adapter, adapter_kwargs, numbers, on_error, skips):
    """Adapt or map raw rows; bad rows raise or are counted with file and row."""
    out = []
    for lineno, obj in raw_rows:
        try:
            if adapter is not None:
                if mapping:
                    obj = {mapping.get(k, k): v for k, v in obj.items()}
                layout = adapter if adapter != "ms_swift" else "ms_swift"
                out.extend((lineno, rec) for rec in adapt_ms_swift(obj, layout=layout, **(adapter_kwargs or {})))
            else:
                out.append((lineno, apply_mapping(obj, mapping)))
        except (ValueError, TypeError, AttributeError) as e:
            handle(DataError(str(e), path=path, row=lineno), on_error, skips)
    return numbers(out) if adapter is not None else out


def iter_trajectory_batches(
    path: str | Path,
    *,
    mapping: Mapping[str, str] | None = None,
    adapter: str | None = None,
    adapter_kwargs: Mapping[str, Any] | None = None,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.Table]:
    """One file -> canonical Arrow tables (plus ``_file``/``_row``) of at most ``batch_rows`` rows each.

    JSONL is read block by block and parquet row group by row group, so a large file never sits in
    memory whole (a ``.json`` array is the exception: JSON has no streaming boundary).
    """
    path = Path(path)
    if adapter is not None and adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; known: {ADAPTERS}")
    foreign = mapping is not None or adapter is not None
    numbers = _SampleNumbers()
    ids_from_meta = foreign

    def finish(raw_rows) -> pa.Table:
        if foreign:
            raw_rows = _foreign_rows(raw_rows, path, mapping=mapping, adapter=adapter, adapter_kwargs=adapter_kwargs,
                                     numbers=numbers, on_error=on_error, skips=skips)
        return _canonical_rows(path, raw_rows, on_error, skips, ids_from_metadata=ids_from_meta)

    if path.suffix == ".parquet":
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for corrupt files
            handle(DataError(f"unreadable parquet file ({e})", path=path), on_error, skips)
            return
        canonical = not foreign and set(names) <= set(FIELDS) and set(REQUIRED) <= set(names)
        offset = 0
        try:
            batches = pf.iter_batches(batch_size=batch_rows)
            for batch in batches:
                table = pa.Table.from_batches([batch])
                rows = np.arange(offset + 1, offset + table.num_rows + 1)
                offset += table.num_rows
                if canonical:
                    try:
                        canon = table.select([c for c in FIELDS if c in table.column_names])
                        for f in FIELDS:
                            if f not in canon.column_names:
                                canon = canon.append_column(ARROW_SCHEMA.field(f), pa.nulls(canon.num_rows, ARROW_SCHEMA.field(f).type))
                        canon = canon.select(list(FIELDS)).cast(ARROW_SCHEMA)
                        if _fast_valid(canon):
                            yield _with_bookkeeping(_fill_defaults(canon), path, rows)
                            continue
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                        pass
                yield finish(zip(rows.tolist(), table.to_pylist()))
        except (OSError, pa.ArrowInvalid) as e:
            handle(DataError(f"unreadable parquet file ({e})", path=path, row=offset + 1), on_error, skips)
        return

    try:
        if path.name.endswith((".json", ".json.gz")):
            rows = list(_json_rows(path, on_error, skips))
            for start in range(0, max(len(rows), 1), batch_rows):
                yield finish(rows[start:start + batch_rows])
            return
        for first, data, n_lines in _line_blocks(path, batch_rows):
            if not foreign:
                table = _fast_canonical(data)
                if table is not None:
                    if table.num_rows == n_lines:  # no blank lines: the rows are the lines
                        rows = np.arange(first, first + n_lines, dtype=np.int64)
                    else:
                        rows = np.array([first + i for i, ln in enumerate(data.splitlines()) if ln.strip()], dtype=np.int64)
                    yield _with_bookkeeping(table, path, rows)
                    continue
            yield finish(iter_json_lines(path, data, on_error, skips, first=first))
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        handle(DataError(f"unreadable file ({e})", path=path), on_error, skips)


def read_trajectory_file(
    path: str | Path,
    *,
    mapping: Mapping[str, str] | None = None,
    adapter: str | None = None,
    adapter_kwargs: Mapping[str, Any] | None = None,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
) -> pa.Table:
    """One file -> canonical Arrow table (plus ``_file``/``_row``); see :func:`iter_trajectory_batches`."""
    parts = list(iter_trajectory_batches(path, mapping=mapping, adapter=adapter, adapter_kwargs=adapter_kwargs,
                                         on_error=on_error, skips=skips))
    parts = [p for p in parts if p.num_rows] or [FULL_SCHEMA.empty_table()]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


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


def canonical_columns(table: pa.Table) -> pa.Table:
    """A table in :data:`ARROW_SCHEMA`'s columns and types; optional fields it lacks (e.g. ``system``,
    added after older files were written) become nulls. A missing required field raises KeyError."""
    missing = [f for f in REQUIRED if f not in table.column_names]
    if missing:
        raise KeyError(f"missing required column(s) {missing}")
    for field in ARROW_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(list(FIELDS)).cast(ARROW_SCHEMA)


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

"""Reading the compare stage's inputs: trajectory shards and the stream order of the images.

``read_trajectories`` defers to :func:`cxr_max.trajectories.io.read_trajectories` when that module
exists; until then it reads the canonical JSONL / parquet shards itself with pyarrow.

``stream_positions`` orders the images the way the drift analysis sees them: by study date and time
from the MIMIC-CXR-JPG metadata table (``StudyDate``, ``StudyTime``), scaled to ``[0, 1)`` by the
study's rank, exactly as the synthetic world defines ``stream_pos``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from cxr_max.errors import DataError, OnError, SkipLog
from cxr_max.trajectories.schema import ARROW_SCHEMA

METADATA_NAME = "mimic-cxr-2.0.0-metadata.csv.gz"


def read_trajectories(path: str | Path, *, on_error: OnError = "raise", skips: SkipLog | None = None) -> pa.Table:
    """All trajectory records under ``path`` (a folder of ``*.jsonl``/``*.parquet`` shards, or one file).

    Uses ``cxr_max.trajectories.io.read_trajectories`` (failed requests kept, so the compare stage
    counts them) when available. Otherwise every shard is read with the canonical
    :data:`ARROW_SCHEMA`; a shard that does not fit the schema raises a :class:`DataError` naming the file.
    """
    try:
        from cxr_max.trajectories.io import read_trajectories as _shared_reader  # type: ignore
    except ImportError:
        _shared_reader = None
    if _shared_reader is not None:
        return _shared_reader(path, include_failed=True, on_error=on_error, skips=skips)

    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file())
    else:
        raise DataError("no such trajectory file or folder", path=path)
    if not files:
        raise DataError("no *.jsonl or *.parquet trajectory shards found", path=path)
    tables = []
    opts = pajson.ParseOptions(explicit_schema=ARROW_SCHEMA, unexpected_field_behavior="error")
    for f in files:
        try:
            if f.suffix == ".parquet":
                from cxr_max.trajectories.io import canonical_columns  # older shards lack later optional fields

                t = canonical_columns(pq.read_table(f))
            else:
                t = pajson.read_json(f, parse_options=opts)
        except (pa.ArrowInvalid, KeyError) as e:
            raise DataError(f"not a canonical trajectory shard: {e}", path=f) from e
        tables.append(t)
    return pa.concat_tables(tables)


def _study_rank(dates: pd.Series, times: pd.Series, study_ids: pd.Series) -> np.ndarray:
    """Rank of each row's study in (date, time, study_id) order, scaled to [0, 1)."""
    t = pd.to_numeric(times, errors="coerce").fillna(0.0)
    key = pd.DataFrame({"d": dates.astype(str), "t": t, "s": study_ids.astype(str)})
    studies = key.drop_duplicates("s").sort_values(["d", "t", "s"], kind="stable")
    rank = pd.Series(np.arange(len(studies), dtype=np.float64) / max(len(studies), 1), index=studies["s"].to_numpy())
    return rank.reindex(key["s"].to_numpy()).to_numpy()


def stream_positions(data_dir: str | Path) -> pd.Series:
    """``dicom_id -> stream_pos`` from ``<data_dir>/mimic-cxr-2.0.0-metadata.csv.gz``.

    ``data_dir`` may be the MIMIC-CXR-JPG root or a root that holds ``mimic-cxr-jpg/``. Rows with a
    missing ``StudyDate`` raise a :class:`DataError` naming the row.
    """
    data_dir = Path(data_dir)
    candidates = [data_dir / METADATA_NAME, data_dir / "mimic-cxr-jpg" / METADATA_NAME]
    meta_path = next((p for p in candidates if p.is_file()), None)
    if meta_path is None:
        raise DataError(f"metadata table not found (looked for {', '.join(map(str, candidates))})", path=data_dir)
    meta = pd.read_csv(meta_path, dtype={"dicom_id": str, "study_id": str, "StudyDate": str, "StudyTime": str})
    for col in ("dicom_id", "study_id", "StudyDate", "StudyTime"):
        if col not in meta.columns:
            raise DataError(f"missing column {col!r}", path=meta_path)
    bad = meta["StudyDate"].isna()
    if bad.any():
        # +2: one for the header line, one for 1-based row numbers.
        raise DataError("missing StudyDate", path=meta_path, row=int(np.flatnonzero(bad.to_numpy())[0]) + 2)
    pos = _study_rank(meta["StudyDate"], meta["StudyTime"], meta["study_id"])
    return pd.Series(pos, index=meta["dicom_id"].to_numpy(), name="stream_pos")


def collected_positions(table: pa.Table) -> pd.Series:
    """``dicom_id -> stream_pos`` from the earliest ``collected_at`` of each image's trajectories."""
    df = table.select(["dicom_id", "collected_at"]).to_pandas()
    ts = pd.to_datetime(df["collected_at"], utc=True, errors="coerce", format="ISO8601")
    if ts.isna().all():
        raise DataError("order='collected' needs collected_at timestamps; none are set")
    first = ts.groupby(df["dicom_id"]).min().dropna().sort_values(kind="stable")
    return pd.Series(np.arange(len(first), dtype=np.float64) / max(len(first), 1), index=first.index, name="stream_pos")

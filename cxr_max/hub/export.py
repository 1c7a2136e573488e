"""Export builder configs to a Hub-ready folder: equal-sized parquet shards + a README card + a manifest.

Layout of an export folder::

    README.md                       card; YAML `configs:` maps each config/split to its shards, plus `dataset_info`
    cxr_max_export.json             manifest: source, what was included, dropped columns, shards, row counts
    data/<config>/<split>-00000-of-00008.parquet

Plain ``datasets.load_dataset(folder, config)`` (or the Hub repo) loads it without cxr_max, also with
``streaming=True``. What goes in is decided by :mod:`cxr_max.hub.safety`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.table import embed_table_storage
from datasets.utils.metadata import MetadataConfigs
from rich.progress import Progress

from cxr_max.errors import DataError, OnError, SkipLog
from cxr_max.hub import cards, safety

MANIFEST = "cxr_max_export.json"
MANIFEST_FORMAT = "cxr_max-export"
MANIFEST_VERSION = 1
Source = Literal["mimic", "synthetic"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SCAN_ROWS = 10_000


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_dataset` wrote."""

    out_dir: Path
    manifest: dict[str, Any]
    card: Any  # huggingface_hub.DatasetCard
    skips: SkipLog

    @property
    def files(self) -> list[str]:
        """Every file of the export, relative to ``out_dir``, sorted."""
        return sorted(p.relative_to(self.out_dir).as_posix() for p in self.out_dir.rglob("*") if p.is_file())


def num_shards(num_rows: int, shard_rows: int, multiple: int = 8) -> int:
    """How many equal shards for ``num_rows`` rows of at most about ``shard_rows`` each.

    More than one shard is rounded up to a multiple of ``multiple`` (8 by default) so that 1, 2, 4 or 8
    data-parallel readers each get whole shards (``datasets.distributed.split_dataset_by_node`` then
    hands out files instead of making every node read and skip); when the rounding would leave a shard
    empty (fewer rows than shards) the unrounded count is kept. Shards differ by at most one row.
    """
    if shard_rows < 1 or multiple < 1:
        raise ValueError("shard_rows and multiple must be positive")
    n = max(1, math.ceil(num_rows / shard_rows))
    rounded = math.ceil(n / multiple) * multiple
    if n > 1 and rounded <= num_rows:
        n = rounded
    return max(1, min(n, num_rows))


def _as_dataset_dict(name: str, value: Any) -> datasets.DatasetDict:
    if isinstance(value, datasets.DatasetDict):
        return value
    if isinstance(value, datasets.Dataset):
        return datasets.DatasetDict({"train": value})
    raise DataError(f"config {name!r} must be a datasets.DatasetDict or Dataset, got {type(value).__name__}",
                    path=name)


def _string_values(ds: datasets.Dataset, column: str) -> Iterable[str]:
    """Every non-empty string in ``column`` of ``ds``, nested lists and structs included."""
    col = ds.select_columns([column]).with_format("arrow")[:].column(column).combine_chunks()
    rows = pa.array(range(len(col)), pa.int64())
    for _, leaf, _ in safety.leaves(col, rows, column):
        if pa.types.is_string(leaf.type) or pa.types.is_large_string(leaf.type):
            yield from (v for v in leaf.to_pylist() if v)


def _teacher_frame(dd: datasets.DatasetDict) -> pd.DataFrame:
    """The columns the teachers table needs, from every split of a config, as one DataFrame."""
    wanted = ("teacher", "teacher_version", "dicom_id", "refusal", "status")
    return pd.concat([d.select_columns([c for c in wanted if c in d.column_names]).to_pandas() for d in dd.values()],
                     ignore_index=True)


EMBED_BATCH_ROWS = 64  # images embedded per batch (a MIMIC-CXR JPG is ~1.5 MB)


def _embed(ds: datasets.Dataset) -> datasets.Dataset:
    """Embed the bytes of local image files referenced by Image features (as ``push_to_hub`` does)."""
    if not any(safety.holds_pixels(f) for f in ds.features.values()):
        return ds
    # Written to a cache file in small batches, never held in memory: with pixels, a real copy is ~0.5 TB.
    return ds.with_format("arrow").map(embed_table_storage, batched=True, batch_size=EMBED_BATCH_ROWS,
                                       writer_batch_size=EMBED_BATCH_ROWS, desc="embedding images").with_format(None)


@contextlib.contextmanager
def _quiet_datasets():
    was = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            datasets.utils.enable_progress_bars()


def export_dataset(
    configs: Mapping[str, datasets.DatasetDict | datasets.Dataset],
    out_dir: str | Path,
    *,
    source: Source,
    include_pixels: bool | None = None,
    include_reports: bool | None = None,
    keep_columns: Sequence[str] = (),
    reports: Iterable[str] | None = None,
    min_sentence_chars: int = 40,
    shard_rows: int = 20_000,
    shard_multiple: int = 8,
    card: Mapping[str, Any] | None = None,
    on_error: OnError = "raise",
    overwrite: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Materialise builder configs to ``out_dir`` as parquet shards with a dataset card and a manifest.

    Args:
        configs: config name -> DatasetDict (a bare Dataset is the ``train`` split).
        source: ``"mimic"`` (credentialed; safe defaults) or ``"synthetic"`` (exempt: exported in full).
        include_pixels / include_reports: keep image and report-text columns. Default False for mimic,
            True for synthetic. A mimic export with either is *sensitive*: it can only be pushed private
            or gated.
        keep_columns: columns that must be in the export; naming a pixel or report column here without
            its flag is an error (instead of the column being dropped).
        reports: report texts to protect; the text of dropped report columns is added automatically.
            Any exported string containing one of their sentences of ``min_sentence_chars`` or more
            characters is a violation.
        shard_rows: target rows per parquet shard (see :func:`num_shards`).
        card: extra card fields: ``pretty_name``, ``description``, ``template_path``.
        on_error: "raise" stops at the first violation with a DataError naming config/split, row and
            column; "skip" drops the row and counts it in the returned SkipLog.
        overwrite: replace ``out_dir`` when it is an earlier export (any other non-empty folder is refused).

    The folder is written next to ``out_dir`` and renamed into place at the end, so an interrupted
    export leaves no half-written export behind.
    """
    if source not in ("mimic", "synthetic"):
        raise ValueError(f"source must be 'mimic' or 'synthetic', not {source!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if not configs:
        raise DataError("nothing to export: no configs given")
    synthetic = source == "synthetic"
    include_pixels = synthetic if include_pixels is None else bool(include_pixels)
    include_reports = synthetic if include_reports is None else bool(include_reports)
    out_dir = Path(out_dir)
    card = dict(card or {})
    skips = SkipLog()

    dsets = {name: _as_dataset_dict(name, value) for name, value in configs.items()}
    for name, dd in dsets.items():
        if not _NAME.match(name):
            raise DataError("config name must be letters, digits, '_' or '-'", path=name)
        for split in dd:
            if not _NAME.match(split):
                raise DataError(f"split name {split!r} must be letters, digits, '_' or '-'", path=name)

    # 1. Column semantics: what is dropped, and the report text to protect.
    dropped: dict[str, list[str]] = {}
    protect: list[str] = list(reports or [])
    for name, dd in dsets.items():
        for split, ds in dd.items():
            for col, feature in ds.features.items():
                pixel = safety.is_pixel_column(col, feature)
                report = safety.is_report_column(col)
                if pixel and not include_pixels or report and not include_reports:
                    if col in keep_columns:
                        flag = "include_pixels" if pixel and not include_pixels else "include_reports"
                        raise DataError(
                            f"column {col!r} holds {'pixels' if pixel else 'MIMIC report text'}, which a "
                            f"{source} export includes only with {flag}=True (--{flag.replace('_', '-')})",
                            path=f"{name}/{split}",
                        )
                    if col not in dropped.setdefault(name, []):
                        dropped[name].append(col)
                    if report:
                        protect.extend(_string_values(ds, col))
    dropped = {k: v for k, v in dropped.items() if v}
    sentences = safety.report_sentences(protect, min_sentence_chars) if not include_reports else frozenset()

    # 2. Values: scan what is left; raise or skip rows.
    cleaned: dict[str, datasets.DatasetDict] = {}
    for name, dd in dsets.items():
        cleaned[name] = datasets.DatasetDict()
        for split, ds in dd.items():
            ds = ds.remove_columns([c for c in dropped.get(name, []) if c in ds.column_names])
            bad_rows: set[int] = set()
            if not include_pixels or sentences:
                table = ds.with_format("arrow")
                for start in range(0, len(ds), _SCAN_ROWS):
                    chunk = table[start : start + _SCAN_ROWS]
                    for v in safety.scan_table(chunk, check_pixels=not include_pixels, sentences=sentences,
                                               row_offset=start):
                        err = DataError(f"column {v.column!r} holds {v.reason}; it must not leave this machine "
                                        f"in a {source} export", path=f"{name}/{split}", row=v.row)
                        if on_error == "raise":
                            raise err
                        if v.row not in bad_rows:
                            bad_rows.add(v.row)
                            skips.add(err.reason, f"{name}/{split}:{v.row}")
            if bad_rows:
                ds = ds.select([i for i in range(len(ds)) if i not in bad_rows])
            cleaned[name][split] = ds
    for name, dd in cleaned.items():
        if all(len(ds) == 0 for ds in dd.values()):
            raise DataError("every row was removed or the config is empty; nothing to export", path=name)

    # 3. Write shards into a staging folder.
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST).is_file():
            raise DataError("output folder exists, is not empty and is not a cxr_max export; refusing to touch it",
                            path=out_dir)
        if not overwrite:
            raise DataError("output folder already holds an export; pass overwrite=True (--overwrite) to replace it",
                            path=out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    manifest_configs: dict[str, Any] = {}
    infos = DatasetInfosDict()
    metadata = MetadataConfigs()
    card_configs = []
    plan = [(name, split, ds, num_shards(len(ds), shard_rows, shard_multiple))
            for name, dd in cleaned.items() for split, ds in dd.items() if len(ds)]
    try:
        with _quiet_datasets(), Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("writing parquet shards", total=sum(p[3] for p in plan))
            for name, split, ds, n in plan:
                if include_pixels:
                    ds = _embed(ds)
                files, nbytes = [], 0
                for i in range(n):
                    rel = f"data/{name}/{split}-{i:05d}-of-{n:05d}.parquet"
                    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                    nbytes += ds.shard(num_shards=n, index=i, contiguous=True).to_parquet(stage / rel)
                    files.append(rel)
                    bar.advance(task)
                entry = manifest_configs.setdefault(name, {})
                entry[split] = {"num_rows": len(ds), "files": files,
                                "download_size": sum((stage / f).stat().st_size for f in files)}
                info = infos.setdefault(name, DatasetInfo(features=ds.features, config_name=name, splits=SplitDict()))
                info.splits.add(SplitInfo(name=split, num_bytes=nbytes, num_examples=len(ds)))
                info.download_size = (info.download_size or 0) + entry[split]["download_size"]
                info.dataset_size = (info.dataset_size or 0) + nbytes
        for name in manifest_configs:
            metadata[name] = {"data_files": [{"split": s, "path": f"data/{name}/{s}-*.parquet"}
                                             for s in manifest_configs[name]]}
            feats = infos[name].features
            card_configs.append({
                "name": name,
                "splits": [{"name": s, "num_rows": v["num_rows"], "num_shards": len(v["files"])}
                           for s, v in manifest_configs[name].items()],
                "columns": [{"name": c, "type": _feature_str(f)} for c, f in feats.items()],
            })

        sensitive = source == "mimic" and (include_pixels or include_reports)
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "source": source,
            "include_pixels": include_pixels,
            "include_reports": include_reports,
            "sensitive": sensitive,
            "dropped_columns": dropped,
            "skipped_rows": skips.total,
            "configs": manifest_configs,
        }
        # 4. The card: metadata via datasets' own writers, body from the template.
        card_data = cards.dataset_card_data(
            source=source, sensitive=sensitive, configs=[], dataset_info=None,
            pretty_name=card.get("pretty_name") or ("CXR-MAX-style trajectories (synthetic)" if synthetic
                                                     else "CXR-MAX-style trajectories over MIMIC-CXR"),
            num_rows=sum(v["num_rows"] for c in manifest_configs.values() for v in c.values()),
        )
        metadata.to_dataset_card_data(card_data)
        infos.to_dataset_card_data(card_data)
        teacher_config = next((n for n in ("trajectories", *cleaned) if n in cleaned and all(
            d.features.get("teacher") == datasets.Value("string") for d in cleaned[n].values())), None)
        teachers = cards.teacher_table(_teacher_frame(cleaned[teacher_config])) if teacher_config else []
        rendered = cards.render_dataset_card(
            card_data,
            template_path=card.get("template_path"),
            pretty_name=card_data.pretty_name,
            description=card.get("description") or _default_description(source, manifest_configs),
            source=source,
            include_pixels=include_pixels,
            include_reports=include_reports,
            dropped_columns=dropped,
            teachers=teachers,
            configs=card_configs,
        )
        (stage / "README.md").write_text(rendered.content, encoding="utf-8")
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        stage.rename(out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ExportResult(out_dir=out_dir, manifest=manifest, card=rendered, skips=skips)


def _feature_str(feature: Any) -> str:
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, dict):
        if len(feature) > 4:
            return f"struct of {len(feature)} fields ({', '.join(list(feature)[:3])}, ...)"
        return "struct{" + ", ".join(f"{k}: {_feature_str(v)}" for k, v in feature.items()) + "}"
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"list<{_feature_str(inner)}>"
    return type(feature).__name__


def _default_description(source: str, manifest_configs: Mapping[str, Any]) -> str:
    rows = ", ".join(f"`{c}` ({sum(v['num_rows'] for v in splits.values())} rows)" for c, splits in manifest_configs.items())
    what = "the embedded synthetic MIMIC-CXR" if source == "synthetic" else "MIMIC-CXR"
    return f"Multi-teacher chest X-ray reasoning trajectories over {what}. Configs: {rows}."


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Check that ``folder`` is a complete cxr_max export and return its manifest.

    A DataError names the folder when the manifest or card is missing or malformed, a shard listed in
    the manifest is missing, or a shard holds a pixel or report column that the manifest says was
    not included (a hand-edited or mixed-up folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", path=folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise DataError(f"not a cxr_max export: no {MANIFEST} (make one with `cxr-max export`)", path=folder)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"manifest is not valid JSON: {e.msg}", path=mpath, row=f"line {e.lineno}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"not a cxr_max export manifest (format must be {MANIFEST_FORMAT!r})", path=mpath)
    for key in ("source", "include_pixels", "include_reports", "configs"):
        if key not in manifest:
            raise DataError(f"manifest lacks {key!r}", path=mpath)
    readme = folder / "README.md"
    if not readme.is_file():
        raise DataError("export has no README.md card", path=folder)
    meta = cards.check_card_metadata(readme.read_text(encoding="utf-8"), where=readme, required=("configs", "license"))
    card_configs = {c.get("config_name") for c in meta["configs"] if isinstance(c, dict)}
    if card_configs != set(manifest["configs"]):
        raise DataError(f"README configs {sorted(map(str, card_configs))} do not match the manifest's "
                        f"{sorted(manifest['configs'])}", path=readme)
    for name, splits in manifest["configs"].items():
        for split, entry in splits.items():
            for rel in entry["files"]:
                shard = folder / rel
                if not shard.is_file():
                    raise DataError("shard listed in the manifest is missing", path=shard)
                try:
                    schema = pq.read_schema(shard)
                except Exception as e:  # noqa: BLE001 - any unreadable shard is the same bad input
                    raise DataError(f"shard is not a readable parquet file: {e}", path=shard) from e
                features = datasets.Features.from_arrow_schema(schema)
                for col, feat in features.items():
                    if safety.is_pixel_column(col, feat) and not manifest["include_pixels"] and manifest["source"] == "mimic":
                        raise DataError(f"shard holds pixel column {col!r} but the manifest says no pixels", path=shard)
                    if safety.is_report_column(col) and not manifest["include_reports"] and manifest["source"] == "mimic":
                        raise DataError(f"shard holds report column {col!r} but the manifest says no report text",
                                        path=shard)
    return manifest

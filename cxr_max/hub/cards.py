"""Dataset and model cards rendered from the templates in ``hub_cards/`` with huggingface_hub's card classes.

In a checkout the templates are read from the top-level ``hub_cards/``; an installed wheel carries them as
``cxr_max/hub/templates/`` (:func:`template_dir`).

Templates are Jinja2 files whose YAML front matter is ``{{ card_data }}`` (a
:class:`~huggingface_hub.DatasetCardData` / :class:`~huggingface_hub.ModelCardData`). Before rendering,
the template's variables are compared with the fields given, so a missing field is a
:class:`~cxr_max.errors.DataError` naming the template and the field instead of an empty section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from cxr_max.errors import DataError

# The templates live in the project's top-level hub_cards/; a wheel carries a copy as cxr_max/hub/templates/
# (copied there at build time). An installed package reads its copy; a checkout reads hub_cards/.
INSTALLED_TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
CHECKOUT_TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "hub_cards"
TEMPLATE_NAMES = ("dataset_card.md", "model_card.md")


def template_dir() -> Path:
    """The folder the card templates are read from: the installed copy, else a checkout's ``hub_cards/``.

    When neither holds them, the checkout path is returned and rendering raises a DataError naming the file.
    """
    for folder in (INSTALLED_TEMPLATE_DIR, CHECKOUT_TEMPLATE_DIR):
        if all((folder / name).is_file() for name in TEMPLATE_NAMES):
            return folder
    return CHECKOUT_TEMPLATE_DIR


TEMPLATE_DIR = template_dir()
DATASET_TEMPLATE = TEMPLATE_DIR / "dataset_card.md"
MODEL_TEMPLATE = TEMPLATE_DIR / "model_card.md"

TRAJECTORY_LICENSE = "cc-by-nc-sa-4.0"
PHYSIONET_LICENSE_NAME = "physionet-credentialed-health-data-1.5.0"
PHYSIONET_LICENSE_LINK = "https://physionet.org/content/mimic-cxr/view-license/2.1.0/"
DATASET_TAGS = ("medical", "radiology", "chest-x-ray", "mimic-cxr", "reasoning", "distillation", "cxr_max")
MODEL_TAGS = ("medical", "radiology", "chest-x-ray", "distillation", "apo", "trl", "cxr_max")
# Every model card carries these metadata fields (what the Hub reads for search, widgets and lineage).
MODEL_CARD_FIELDS = ("license", "base_model", "datasets", "tags", "pipeline_tag", "library_name")


def _template_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise DataError("card template not found", path=p)
    return p.read_text(encoding="utf-8")


def check_template_fields(template_path: str | Path, provided: Mapping[str, Any]) -> None:
    """Raise a DataError naming ``template_path`` when the template uses a field that ``provided`` lacks."""
    text = _template_text(template_path)
    try:
        ast = jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise DataError(f"card template is not valid Jinja2: {e.message}", path=template_path, row=f"line {e.lineno}") from e
    needed = jinja2.meta.find_undeclared_variables(ast) - {"card_data"}
    missing = sorted(n for n in needed if n not in provided or provided[n] is None)
    if missing:
        raise DataError(f"card template needs field(s) {missing} that were not given", path=template_path)


def _render(card_cls, card_data, template_path: str | Path, fields: Mapping[str, Any]):
    provided = {**card_data.to_dict(), **fields}
    check_template_fields(template_path, provided)
    card = card_cls.from_template(card_data, template_path=str(template_path), **fields)
    check_card_metadata(card.content, where=template_path)
    return card


def check_card_metadata(content: str, *, where: object = "README.md", required: Sequence[str] = ()) -> dict:
    """Parse a card's YAML front matter; raise a DataError when it is not valid YAML, not a mapping, or lacks ``required``."""
    if not content.startswith("---"):
        raise DataError("card has no YAML front matter (it must start with '---')", path=where)
    try:
        _, front, _ = content.split("---", 2)
        meta = yaml.safe_load(front)
    except (ValueError, yaml.YAMLError) as e:
        raise DataError(f"card front matter is not valid YAML: {e}", path=where) from e
    if not isinstance(meta, dict):
        raise DataError("card front matter must be a YAML mapping", path=where)
    missing = [k for k in required if meta.get(k) in (None, "", [])]
    if missing:
        raise DataError(f"card metadata lacks {missing}", path=where)
    return meta


def teacher_table(trajectories) -> list[dict[str, Any]]:
    """One row per teacher of a ``trajectories``-config dataset: versions, trajectory and image counts, refusal rate.

    ``trajectories`` is a :class:`datasets.Dataset` (or anything with ``to_pandas``) with a ``teacher``
    column and optionally ``teacher_version``, ``dicom_id``, ``refusal`` and ``status``. The refusal
    rate is over completed (``status == "ok"``) trajectories; failed requests are counted apart.
    """
    df = trajectories.to_pandas() if hasattr(trajectories, "to_pandas") else trajectories
    if "teacher" not in df.columns:
        return []
    ok = df["status"].fillna("ok").eq("ok") if "status" in df.columns else None
    rows = []
    for name, group in df.groupby("teacher", sort=True):
        g_ok = group[ok.loc[group.index]] if ok is not None else group
        versions = sorted({str(v) for v in group["teacher_version"].dropna()}) if "teacher_version" in group else []
        refusals = g_ok["refusal"].fillna(False).astype(bool).sum() if "refusal" in g_ok else 0
        rows.append(
            {
                "name": str(name),
                "versions": ", ".join(versions) or "n/a",
                "trajectories": int(len(g_ok)),
                "images": int(g_ok["dicom_id"].nunique()) if "dicom_id" in g_ok else int(len(g_ok)),
                "refusal_rate": float(refusals / len(g_ok)) if len(g_ok) else 0.0,
                "failed": int(len(group) - len(g_ok)),
            }
        )
    return rows


def dataset_card_data(*, source: str, sensitive: bool, configs: list[dict], dataset_info, pretty_name: str,
                      num_rows: int) -> DatasetCardData:
    """The YAML metadata of an export's card: licence, tags, task categories, configs and dataset_info."""
    licence: dict[str, Any] = {"license": TRAJECTORY_LICENSE}
    if sensitive:  # joined credentialed data: the PhysioNet licence governs
        licence = {"license": "other", "license_name": PHYSIONET_LICENSE_NAME, "license_link": PHYSIONET_LICENSE_LINK}
    size = next(c for n, c in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                               (math.inf, "n>1M")) if num_rows < n)
    tags = list(DATASET_TAGS) + (["synthetic"] if source == "synthetic" else [])
    return DatasetCardData(
        pretty_name=pretty_name,
        language=["en"],
        task_categories=["image-text-to-text", "visual-question-answering"],
        size_categories=[size],
        tags=tags,
        configs=configs,
        dataset_info=dataset_info,
        **licence,
    )


def render_dataset_card(card_data: DatasetCardData, *, template_path: str | Path | None = None, **fields) -> DatasetCard:
    """Render the dataset card template with ``card_data`` as front matter and ``fields`` for the body."""
    return _render(DatasetCard, card_data, template_path or DATASET_TEMPLATE, fields)


def _format_metric(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    if isinstance(value, Mapping):  # {"value"|"mean": x, "low"/"ci_low": a, "high"/"ci_high": b}
        centre = next((value[k] for k in ("value", "mean", "point", "estimate") if k in value), None)
        low = next((value[k] for k in ("low", "ci_low", "lower") if k in value), None)
        high = next((value[k] for k in ("high", "ci_high", "upper") if k in value), None)
        if isinstance(centre, (int, float)) and not isinstance(centre, bool):
            if isinstance(low, (int, float)) and isinstance(high, (int, float)):
                return f"{centre:.4g} [{low:.4g}, {high:.4g}]"
            return f"{centre:.4g}"
    return None


def metrics_rows(metrics: Mapping[str, Any], prefix: str = "") -> list[dict[str, str]]:
    """Flatten a metrics JSON object into table rows ``{"metric": "a/b", "value": "0.78 [0.74, 0.81]"}``.

    Numbers are leaves; an object with ``value``/``mean`` (and optionally ``low``/``high``) is one leaf
    with its confidence interval; other objects are walked; strings, lists and booleans are skipped.
    """
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        shown = _format_metric(value)
        if shown is not None:
            rows.append({"metric": name, "value": shown})
        elif isinstance(value, Mapping):
            rows.extend(metrics_rows(value, name))
    return rows


def load_metrics(path: str | Path) -> list[dict[str, str]]:
    """Read a metrics JSON file into table rows; a DataError names the file when it is unreadable or has no numbers."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError("metrics JSON not found", path=p) from e
    except json.JSONDecodeError as e:
        raise DataError(f"metrics file is not valid JSON: {e.msg}", path=p, row=f"line {e.lineno}") from e
    rows = metrics_rows(data) if isinstance(data, Mapping) else []
    if not rows:
        raise DataError("metrics JSON holds no numeric metric", path=p)
    return rows


def check_hub_id(value: Any, what: str, where: object) -> str:
    """``value`` when it is a Hub repo id ``namespace/name`` (not a local path); else a DataError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{what} must be a Hugging Face Hub repo id such as 'Qwen/Qwen2.5-VL-7B-Instruct', got {value!r}",
                        path=where)
    try:
        validate_repo_id(value)
    except HFValidationError as e:
        raise DataError(f"{what} {value!r} is not a valid Hub repo id: {e}", path=where) from e
    if "/" not in value or Path(value).is_absolute() or Path(value).exists():
        raise DataError(f"{what} must be a Hub repo id 'namespace/name', not a local path: {value!r}", path=where)
    return value


def render_model_card(
    *,
    base_model: str,
    datasets: Sequence[str],
    stages: Sequence[Mapping[str, Any]],
    metrics: str | Path | Mapping[str, Any],
    model_name: str,
    data_description: str,
    limitations: Sequence[str] = (),
    license: str = TRAJECTORY_LICENSE,
    library_name: str = "transformers",
    pipeline_tag: str = "image-text-to-text",
    tags: Sequence[str] = MODEL_TAGS,
    template_path: str | Path | None = None,
) -> ModelCard:
    """Render the model card: base model, the training stages with their hyperparameters, data, evaluation table.

    ``stages`` is a list of ``{"name", "description", "hyperparameters": {...}}``; ``metrics`` is a
    metrics JSON path or an already loaded object. The base model and datasets must be Hub repo ids
    (never ``None`` or a local folder), so the Hub can link the model to them.
    """
    template_path = template_path or MODEL_TEMPLATE
    base_model = check_hub_id(base_model, "base_model", template_path)
    if not datasets:
        raise DataError("the model card needs the training dataset(s) as Hub repo ids", path=template_path)
    datasets = [check_hub_id(d, "dataset", template_path) for d in datasets]
    if not stages:
        raise DataError("the model card needs the training stages", path=template_path)
    for i, s in enumerate(stages):
        if not isinstance(s, Mapping) or not s.get("name") or not isinstance(s.get("hyperparameters"), Mapping):
            raise DataError("each stage needs a 'name' and a 'hyperparameters' object", path=template_path, row=f"stage {i}")
    stages = [{"description": "", **s} for s in stages]
    if isinstance(metrics, Mapping):
        eval_rows, metrics_source = metrics_rows(metrics), "the metrics given"
        if not eval_rows:
            raise DataError("metrics hold no numeric metric", path=template_path)
    else:
        eval_rows, metrics_source = load_metrics(metrics), Path(metrics).name
    card_data = ModelCardData(
        base_model=base_model,
        datasets=list(datasets),
        license=license,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=list(tags),
        language=["en"],
    )
    card = _render(
        ModelCard,
        card_data,
        template_path,
        {
            "model_name": model_name,
            "stages": stages,
            "eval_rows": eval_rows,
            "metrics_source": metrics_source,
            "data_description": data_description,
            "limitations": list(limitations),
        },
    )
    check_card_metadata(card.content, where=template_path, required=MODEL_CARD_FIELDS)
    return card

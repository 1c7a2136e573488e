"""Push an export folder or a checkpoint folder to the Hub: private by default, one atomic commit, a dry run.

The token comes only from huggingface_hub's usual sources (``HF_TOKEN``, the token file written by
``hf auth login``); it is never printed, logged or written. A push is: check the token (``whoami``),
create the repo if needed (private unless asked otherwise), check the repo's visibility, set gating,
then upload every file in **one** ``create_commit`` (not ``upload_folder``, which with ``hf_xet``
installed may split a large folder into several commits). A commit is atomic on the Hub, so a push
that fails mid-way leaves the previous revision as the default one and the same command can be rerun.

Credentialed-data rule (PhysioNet's data use agreement, see :mod:`cxr_max.hub.safety`): an export that holds MIMIC pixels or report text
(manifest ``sensitive``) can only go to a private repo or a gated one. For a public gated repo the
repo is created private, gated, filled, and only then made public, so it is never public and ungated.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id
from rich.console import Console
from rich.table import Table

from cxr_max.errors import DataError
from cxr_max.hub import cards
from cxr_max.hub.export import MANIFEST, read_manifest

Gated = Literal["auto", "manual"]
# Files of a training output folder that are not part of the published model.
CHECKPOINT_IGNORE = (
    "checkpoint-*", "checkpoint-*/*", "runs/*", "optimizer.pt", "scheduler.pt", "rng_state*.pth", "scaler.pt",
    "*.lock", ".git/*", ".cache/*", "__pycache__/*", ".*", "*/.*", "README.md",
    "ref_logps_*.parquet",  # APOTrainer's cache of reference log-probs (training data, not part of the model)
)
STAGES_FILE = "training_stages.json"
METRICS_FILES = ("eval_results.json", "metrics.json", "all_results.json")


class PushError(RuntimeError):
    """A push that cannot or did not happen, with what to do about it (never contains the token)."""


@dataclasses.dataclass
class PushPlan:
    """Exactly what a push uploads, and where; the result of a dry run, completed by a real push."""

    repo_id: str
    repo_type: str
    private: bool
    gated: str | None
    files: list[tuple[str, int]]  # (path in repo, size in bytes), README.md included
    card: str
    commit_message: str
    commit_url: str | None = None
    commit_oid: str | None = None
    _sources: dict[str, Path | bytes] = dataclasses.field(default_factory=dict, repr=False)

    def describe(self) -> Table:
        """A rich table of the files with the repo settings as its title."""
        vis = "private" if self.private else "public"
        title = f"{self.repo_type} repo {self.repo_id} ({vis}{', gated: ' + self.gated if self.gated else ''})"
        table = Table(title=title)
        table.add_column("path in repo")
        table.add_column("bytes", justify="right")
        for path, size in self.files:
            table.add_row(path, str(size))
        table.caption = f"{len(self.files)} file(s), {sum(s for _, s in self.files)} bytes, one commit: {self.commit_message!r}"
        return table

    def print(self, console: Console | None = None) -> None:
        """Print the file table and the rendered card (what a dry run shows)."""
        console = console or Console()
        console.print(self.describe())
        console.rule("README.md (rendered card)")
        console.print(self.card, markup=False, highlight=False, soft_wrap=True)


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1:
        raise PushError(f"invalid repo id {repo_id!r}: use 'namespace/name' or 'name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PushError(f"invalid repo id {repo_id!r}: {e}") from None


def _collect(folder: Path, ignore: Sequence[str] = ()) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(rel, pat) for pat in ignore) or any(part.startswith(".") for part in rel.split("/")):
            continue
        out[rel] = p
    return out


def _plan(repo_id, repo_type, private, gated, sources: dict[str, Path | bytes], card: str, message: str) -> PushPlan:
    _check_repo_id(repo_id)
    if gated not in (None, "auto", "manual"):
        raise PushError(f"gated must be 'auto' or 'manual', not {gated!r}")
    files = [(path, len(src) if isinstance(src, bytes) else src.stat().st_size) for path, src in sorted(sources.items())]
    return PushPlan(repo_id=repo_id, repo_type=repo_type, private=private, gated=gated, files=files, card=card,
                    commit_message=message, _sources=sources)


def _http_reason(err: HfHubHTTPError) -> str:
    status = err.response.status_code if err.response is not None else "?"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"HTTP {status}: {first}"


def execute(plan: PushPlan, *, endpoint: str | None = None) -> PushPlan:
    """Carry out ``plan`` against the Hub (or ``endpoint``) in one commit; fill in the commit url and id."""
    if not get_token():
        raise PushError("no Hugging Face token found: set the HF_TOKEN environment variable or run `hf auth login`")
    api = HfApi(endpoint=endpoint)
    try:
        me = api.whoami()
    except OfflineModeIsEnabled:
        raise PushError("Hugging Face offline mode is on (HF_HUB_OFFLINE=1); unset it to push") from None
    except httpx2.TransportError as e:
        raise PushError(f"could not reach the Hub at {api.endpoint}: {type(e).__name__}") from None
    except HfHubHTTPError as e:
        if e.response is None or e.response.status_code != 401:
            raise PushError(f"checking the token failed ({_http_reason(e)})") from None
        raise PushError("the Hugging Face token was rejected (expired, revoked or mistyped); make a new write token "
                        "at https://huggingface.co/settings/tokens and set HF_TOKEN or run `hf auth login --force`") from None
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PushError("the Hugging Face token is read-only; a push needs a write (or fine-grained write) token")
    repo_id = plan.repo_id if "/" in plan.repo_id else f"{me['name']}/{plan.repo_id}"
    plan.repo_id = repo_id
    kind = plan.repo_type
    try:
        # Sensitive-or-private pushes are created private; a public gated repo is opened only after gating.
        api.create_repo(repo_id, repo_type=kind, private=plan.private or plan.gated is not None, exist_ok=True)
        info = api.repo_info(repo_id, repo_type=kind)
        if plan.private and not info.private:
            raise PushError(f"{kind} repo {repo_id} already exists and is public; this push is private (the "
                            "default). Make the repo private on the Hub, or pass --public if it may be public.")
        if plan.gated is not None:
            api.update_repo_settings(repo_id, repo_type=kind, gated=plan.gated)
        ops = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=src if isinstance(src, bytes) else str(src))
               for path, src in sorted(plan._sources.items())]
        try:
            info_commit = api.create_commit(repo_id, ops, repo_type=kind, commit_message=plan.commit_message)
        except (HfHubHTTPError, httpx2.TransportError) as e:
            why = _http_reason(e) if isinstance(e, HfHubHTTPError) else type(e).__name__
            raise PushError(f"the commit to {repo_id} failed ({why}); nothing was published, the "
                            "repo's default revision is unchanged (a commit is atomic). Run the same push again.") from None
        if not plan.private and plan.gated is not None and info.private:
            api.update_repo_settings(repo_id, repo_type=kind, private=False)
    except HfHubHTTPError as e:
        raise PushError(f"push to {kind} repo {repo_id} failed ({_http_reason(e)})") from None
    except httpx2.TransportError as e:
        raise PushError(f"push to {kind} repo {repo_id} failed: could not reach {api.endpoint} ({type(e).__name__})") from None
    plan.commit_url, plan.commit_oid = info_commit.commit_url, info_commit.oid
    return plan


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool = True,
    gated: Gated | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
    ignore: Sequence[str] = (),
    card: str | None = None,
    endpoint: str | None = None,
) -> PushPlan:
    """Push every file of ``folder`` (minus ``ignore`` globs and hidden files) as one commit.

    ``card`` replaces the folder's README.md. With ``dry_run`` nothing is sent and no token is needed:
    the returned plan lists the files and the card.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"{folder}: not a folder")
    sources: dict[str, Path | bytes] = dict(_collect(folder, ignore))
    if card is not None:
        sources["README.md"] = card.encode("utf-8")
    if "README.md" not in sources:
        raise PushError(f"{folder}: no README.md card to push")
    text = card if card is not None else Path(sources["README.md"]).read_text(encoding="utf-8")
    plan = _plan(repo_id, repo_type, private, gated, sources, text,
                 commit_message or f"Upload {folder.name} with cxr_max")
    return plan if dry_run else execute(plan, endpoint=endpoint)


def push_dataset(
    export_dir: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    gated: Gated | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> PushPlan:
    """Push a ``cxr-max export`` folder to a dataset repo (private by default, one commit).

    The folder is checked first (:func:`~cxr_max.hub.export.read_manifest`); an export holding MIMIC
    pixels or report text is refused unless the repo is private or ``gated`` is set.
    """
    try:
        manifest = read_manifest(export_dir)
    except DataError as e:
        raise PushError(str(e)) from None
    if manifest.get("sensitive") and not private and gated is None:
        raise PushError(f"{export_dir}: this export holds credentialed MIMIC-CXR data (pixels or report text); it can "
                        "only be pushed to a private repo (the default) or a gated one (--gated manual)")
    return push_folder(export_dir, repo_id, repo_type="dataset", private=private, gated=gated, dry_run=dry_run,
                       commit_message=commit_message or f"Upload {manifest['source']} export with cxr_max",
                       endpoint=endpoint)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg}", path=path, row=f"line {e.lineno}") from e


def checkpoint_base_model(folder: str | Path) -> str | None:
    """The base model a checkpoint was trained from: PEFT's ``base_model_name_or_path``, else config ``_name_or_path``."""
    folder = Path(folder)
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        if (folder / name).is_file():
            value = _read_json(folder / name).get(key)
            if value:
                return str(value)
    return None


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    gated: Gated | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    stages: Sequence[Mapping[str, Any]] | str | Path | None = None,
    metrics: Mapping[str, Any] | str | Path | None = None,
    model_name: str | None = None,
    data_description: str | None = None,
    limitations: Sequence[str] = (),
    license: str = cards.TRAJECTORY_LICENSE,
    template_path: str | Path | None = None,
) -> PushPlan:
    """Push a trained checkpoint with a model card rendered from ``hub_cards/model_card.md``; what ``--push_to_hub`` calls.

    Defaults are read from the folder: the base model from ``adapter_config.json`` / ``config.json``
    (it must be a Hub id, never None or a local path; pass ``base_model`` otherwise), the stages from
    ``training_stages.json`` (a list of ``{"name", "description", "hyperparameters"}``) and the metrics
    from ``eval_results.json`` / ``metrics.json`` / ``all_results.json``. ``datasets`` (Hub ids of the
    training data) is required. Optimizer states, intermediate ``checkpoint-*`` folders and the
    trainer's own README are not uploaded.
    """
    folder = Path(folder)
    try:
        if not folder.is_dir():
            raise DataError("not a folder", path=folder)
        has_adapter = (folder / "adapter_config.json").is_file()
        if not (has_adapter or (folder / "config.json").is_file()):
            raise DataError("not a checkpoint folder (no config.json or adapter_config.json)", path=folder)
        if (folder / MANIFEST).is_file():
            raise DataError("this is a dataset export; push it as a dataset", path=folder)
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise DataError("checkpoint folder has no weights (*.safetensors or *.bin)", path=folder)
        base_model = base_model or checkpoint_base_model(folder)
        if stages is None and (folder / STAGES_FILE).is_file():
            stages = folder / STAGES_FILE
        if isinstance(stages, (str, Path)):
            stages = _read_json(Path(stages))
        if metrics is None:
            metrics = next((folder / m for m in METRICS_FILES if (folder / m).is_file()), None)
        if metrics is None:
            raise DataError(f"no metrics JSON ({', '.join(METRICS_FILES)}) in the folder; pass metrics=", path=folder)
        name = model_name or repo_id.split("/")[-1]
        card = cards.render_model_card(
            base_model=base_model, datasets=list(datasets or []), stages=list(stages or []), metrics=metrics,
            model_name=name,
            data_description=data_description or ("Trained on " + ", ".join(datasets or []) + " with the images "
                                                  "and reports joined locally by the cxr_max builder."),
            limitations=limitations, license=license, library_name="peft" if has_adapter else "transformers",
            template_path=template_path,
        )
    except DataError as e:
        raise PushError(str(e)) from None
    return push_folder(folder, repo_id, repo_type="model", private=private, gated=gated, dry_run=dry_run,
                       commit_message=commit_message or f"Upload {name} with cxr_max", ignore=CHECKPOINT_IGNORE,
                       card=card.content, endpoint=endpoint)

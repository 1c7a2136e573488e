"""Optional model-based report metrics: CheXbert F1 and RadGraph F1, from local weights only.

Both metrics need a third-party package and trained weights that this toolkit does not ship:

* **CheXbert F1** (``f1chexbert`` package, Smit et al. 2020 labeler): the 14 CheXpert labels of each
  generated and reference report are predicted by the CheXbert model; the result holds sklearn's
  micro/macro F1 over the 14 labels and over the 5 usual ones (Cardiomegaly, Edema, Consolidation,
  Atelectasis, Pleural Effusion), plus the 5-label exact-match accuracy.
* **RadGraph F1** (``radgraph`` package, Jain et al. 2021; Delbrouck et al. 2022): entities and
  relations are extracted from each report; the result holds the mean "simple", "partial" and
  "complete" F1 rewards.

Nothing is ever downloaded. A metric is computed only when its package is importable **and** the
caller names local weights; otherwise the function returns ``{"skipped": "<reason>"}`` (it does not
raise) so an evaluation run can carry on with the other metrics. While the package runs, the
Hugging Face libraries are put in offline mode, so a missing tokenizer in the local cache gives a
skip reason instead of a network call. Bad arguments (different lengths, non-strings) do raise.

Weights layout, as each package expects it:

* ``chexbert_f1(weights_path=".../chexbert.pth")``: the CheXbert checkpoint file (``model_state_dict``
  inside); the ``bert-base-uncased`` tokenizer and config must be in the local Hugging Face cache.
* ``radgraph_f1(weights_path=".../radgraph_models", model_type="radgraph")``: a folder holding
  ``<model_type>/config.json``, ``<model_type>/vocabulary/`` and the weights, as the ``radgraph``
  package unpacks them; the transformer it names must be in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cxr_max.errors import DataError

__all__ = ["chexbert_f1", "radgraph_f1"]

_RADGRAPH_MODEL_TYPES = ("radgraph", "radgraph-xl", "echograph", "modern-radgraph-xl")


def _check_pairs(preds: Sequence[Any], refs: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Both sequences of str, same non-zero length; a bad item raises DataError naming its index."""
    if isinstance(preds, str) or isinstance(refs, str):
        raise TypeError("preds and refs must be sequences of strings, not a single string")
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise DataError(f"{len(preds)} predictions but {len(refs)} references; they must pair up one to one",
                        path="preds")
    if not preds:
        raise DataError("no predictions to score", path="preds")
    for where, items in (("preds", preds), ("refs", refs)):
        for i, x in enumerate(items):
            if not isinstance(x, str):
                raise DataError(f"{where} must hold str, got {type(x).__name__}", path=where, row=i)
    return preds, refs


def _check_weights_arg(weights_path: Any) -> Path | None:
    if weights_path is None:
        return None
    if not isinstance(weights_path, str | os.PathLike):
        raise TypeError(f"weights_path must be a path (str or os.PathLike), not {type(weights_path).__name__}")
    return Path(weights_path).expanduser()


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Hugging Face Hub and transformers in offline mode for the duration (no downloads, no HEAD calls)."""
    import huggingface_hub.constants as hf_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_const = hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = saved_const
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _missing_package(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return (f"the '{name}' package is not installed (pip install {name}); "
                "this optional metric is not computed")
    return None


def chexbert_f1(preds: Sequence[str], refs: Sequence[str], *, weights_path: str | os.PathLike | None = None,
                device: str = "cpu") -> dict[str, Any]:
    """CheXbert label F1 of generated reports ``preds`` against ``refs`` (one reference each).

    Returns ``{"chexbert_micro_f1_14", "chexbert_macro_f1_14", "chexbert_micro_f1_5",
    "chexbert_macro_f1_5", "chexbert_accuracy_5", "n"}``, or ``{"skipped": reason}`` when the
    ``f1chexbert`` package is missing, no ``weights_path`` (the ``chexbert.pth`` file) is given, the
    file does not exist, or the model cannot be loaded offline. Never downloads.
    Raises DataError / TypeError for bad arguments (lengths differ, non-str items, bad path type).
    """
    preds, refs = _check_pairs(preds, refs)
    path = _check_weights_arg(weights_path)
    if (reason := _missing_package("f1chexbert")) is not None:
        return {"skipped": reason}
    if path is None:
        return {"skipped": "no local CheXbert weights given (chexbert_f1(..., weights_path='.../chexbert.pth')); "
                           "weights are never downloaded"}
    if not path.is_file():
        return {"skipped": f"CheXbert weights file not found: {path}"}

    # f1chexbert looks for <CACHE_DIR>/chexbert.pth and downloads it when absent: point it at the user's file.
    if path.name != "chexbert.pth":
        return {"skipped": f"f1chexbert needs the checkpoint to be named 'chexbert.pth' (got {path.name}); "
                           "rename or link it"}

    import f1chexbert.f1chexbert as fc

    saved_dir = fc.CACHE_DIR
    try:
        with _hf_offline():
            fc.CACHE_DIR = str(path.parent)
            scorer = fc.F1CheXbert(device=device)
            accuracy, _per_example, report_14, report_5 = scorer(preds, refs)
    except (OSError, ValueError, RuntimeError) as e:  # e.g. tokenizer not in the local HF cache
        return {"skipped": f"CheXbert could not run offline from {path}: {type(e).__name__}: {e}"}
    finally:
        fc.CACHE_DIR = saved_dir
    return {
        "chexbert_micro_f1_14": float(report_14["micro avg"]["f1-score"]),
        "chexbert_macro_f1_14": float(report_14["macro avg"]["f1-score"]),
        "chexbert_micro_f1_5": float(report_5["micro avg"]["f1-score"]),
        "chexbert_macro_f1_5": float(report_5["macro avg"]["f1-score"]),
        "chexbert_accuracy_5": float(accuracy),
        "n": len(preds),
    }


def radgraph_f1(preds: Sequence[str], refs: Sequence[str], *, weights_path: str | os.PathLike | None = None,
                model_type: str = "radgraph") -> dict[str, Any]:
    """RadGraph F1 (mean simple / partial / complete reward) of ``preds`` against ``refs``.

    ``weights_path`` is the folder holding ``<model_type>/`` as the ``radgraph`` package unpacks it.
    Returns ``{"radgraph_f1_simple", "radgraph_f1_partial", "radgraph_f1_complete", "n"}``, or
    ``{"skipped": reason}`` when the ``radgraph`` package is missing, no weights folder is given, the
    ``<model_type>`` sub-folder is missing or empty, or the model cannot be loaded offline. Never
    downloads. Raises DataError / TypeError / ValueError for bad arguments.
    """
    preds, refs = _check_pairs(preds, refs)
    path = _check_weights_arg(weights_path)
    if model_type not in _RADGRAPH_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {_RADGRAPH_MODEL_TYPES}, not {model_type!r}")
    if (reason := _missing_package("radgraph")) is not None:
        return {"skipped": reason}
    if path is None:
        return {"skipped": "no local RadGraph weights given (radgraph_f1(..., weights_path='<folder with "
                           f"{model_type}/>')); weights are never downloaded"}
    model_dir = path / model_type
    # the radgraph package downloads when this folder is missing or empty: check first
    if not model_dir.is_dir() or not any(model_dir.iterdir()):
        return {"skipped": f"RadGraph weights folder not found or empty: {model_dir}"}

    from radgraph import F1RadGraph

    try:
        with _hf_offline():
            scorer = F1RadGraph(reward_level="all", model_type=model_type, model_cache_dir=str(path))
            mean_reward, _rewards, _hyp_ann, _ref_ann = scorer(refs=refs, hyps=preds)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        return {"skipped": f"RadGraph could not run offline from {model_dir}: {type(e).__name__}: {e}"}
    simple, partial, complete = (float(x) for x in mean_reward)
    return {"radgraph_f1_simple": simple, "radgraph_f1_partial": partial, "radgraph_f1_complete": complete,
            "n": len(preds)}

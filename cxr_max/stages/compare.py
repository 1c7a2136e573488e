"""Compare: N teachers' trajectories -> one consensus positive + N weighted negatives per image (stage 2 of APO).

    python recipes/compare.py --consensus vote --negative_weighting drift \
        --trajectories <folder> --data_dir <mimic-cxr-jpg root> --output_dir <folder>
    python recipes/compare.py --config my_compare.yaml      # every flag also works from YAML

With no ``--trajectories``/``--data_dir`` it runs on the embedded synthetic world. Writes
``<output_dir>/preferences.jsonl`` (the builder's ``apo`` config reads it; ``cxr_max.stages.critique`` takes
the folder as ``--preferences``) and the drift report (``--report_dir``, default ``<output_dir>/drift_report``).
The per-teacher summary (coverage, agreement with the consensus, refusal and laterality-swap rates, drift
points) also goes to the trackers of ``--report_to`` (:mod:`cxr_max.stages.tracking`). The method is in
docs/method.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trl import TrlParser

from cxr_max.stages.tracking import Tracker, report_to_field

NAME = "compare"
HELP = "Consensus positive and weighted teacher negatives per image, and the drift report"


@dataclass
class CompareArguments:
    """Options of the compare stage."""

    trajectories: str | None = field(default=None, metadata={"help": "Teacher trajectories, file or folder "
                                     "(None: the embedded synthetic world's)."})
    data_dir: str | None = field(default=None, metadata={"help": "MIMIC-CXR-JPG root with the metadata table that "
                                 "orders the stream by study time (None: the embedded synthetic world)."})
    output_dir: str = field(default="outputs/compare", metadata={"help": "Folder for preferences.jsonl.",
                                                                 "aliases": ["--out"]})
    report_dir: str | None = field(default=None, metadata={"help": "Folder for the drift report (None: "
                                   "<output_dir>/drift_report)."})
    split: str | None = field(default=None, metadata={"help": "Only the trajectories of the images of this split "
                              "of --data_dir (train, validation, test; None: every image)."})
    consensus: Literal["vote", "dawid_skene", "model"] = field(default="vote", metadata={"help": "How the "
                                                               "consensus is formed."})
    negative_weighting: Literal["uniform", "reliability", "drift"] = field(default="uniform", metadata={
        "help": "Weights of the teacher negatives: uniform (the paper) | reliability | drift."})
    positive_text: Literal["closest-or-rendered", "closest", "rendered"] = field(default="closest-or-rendered",
                                                                                 metadata={"help": "The positive's "
        "text: the teacher trajectory closest to the consensus (closest), that or the consensus rendered as text "
        "when none matches (closest-or-rendered), or always rendered."})
    labels: Literal["auto", "text", "stored"] = field(default="auto", metadata={"help": "Re-extract findings from "
                                                      "the text, or trust the stored labels."})
    order: Literal["study", "collected"] = field(default="study", metadata={"help": "Stream order for drift "
                                                 "detection: study time (needs --data_dir) or collection time."})
    detector: Literal["adwin", "kswin", "page_hinkley"] = field(default="adwin", metadata={"help": "Drift detector."})
    drop_refusals: bool = field(default=False, metadata={"help": "Leave refusals out of the negatives."})
    drop_agreeing: bool = field(default=False, metadata={"help": "Leave negatives equal to the positive out."})
    model: str | None = field(default=None, metadata={"help": "--consensus model: the learn-stage student folder."})
    batch_size: int | None = field(default=None, metadata={"help": "--consensus model: generation batch size."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "--consensus model: answer length."})
    report: bool = field(default=True, metadata={"help": "Write the drift report (false: preferences only)."})
    format: Literal["jsonl", "parquet"] = field(default="jsonl", metadata={"help": "Preference file format."})
    report_to: list[str] = report_to_field()
    run_name: str | None = field(default=None, metadata={"help": "Tracker run name (None: <output_dir>'s name)."})


DATACLASS_TYPES = (CompareArguments,)


def main(script_args: CompareArguments, **model_consensus_kwargs: Any) -> Path:
    """Run the compare stage; returns the preferences file. ``model_consensus_kwargs`` (in process) go to the
    model consensus with ``--batch_size``/``--max_new_tokens`` (see ``cxr_max.drift.consensus``)."""
    from cxr_max.drift.compare import run_compare
    from cxr_max.drift.report import print_table

    a = script_args
    out = Path(a.output_dir)
    tracker = Tracker(a.report_to, run_name=a.run_name or f"{out.name}", output_dir=out)
    from cxr_max.sources import resolve_source

    # the images are needed to order by study and to pick a split's images; a time order reads trajectories only
    src = resolve_source(a.data_dir, a.trajectories, stage="compare",
                         needs=("trajectories", "images") if a.order == "study" or a.split else ("trajectories",))
    trajectories = str(src.trajectories)
    data_dir = None if src.data_dir is None else str(src.data_dir)
    mk = {k: v for k, v in (("batch_size", a.batch_size), ("max_new_tokens", a.max_new_tokens)) if v is not None}
    mk.update(model_consensus_kwargs)
    if a.consensus == "model":
        if a.model is None:
            raise ValueError("--consensus model needs --model (the learn-stage student folder)")
        mk["model"] = str(a.model)
    report_dir = (Path(a.report_dir) if a.report_dir else out / "drift_report") if a.report else None
    result = run_compare(
        split_trajectories(trajectories, data_dir, a.split), data_dir=data_dir, out=out, report_dir=report_dir,
        order=a.order, source=a.labels, fmt=a.format, consensus=a.consensus, negative_weighting=a.negative_weighting,
        positive_text=a.positive_text, detector=a.detector, drop_refusals=a.drop_refusals,
        drop_agreeing=a.drop_agreeing, model_consensus_kwargs=mk or None,
    )
    print_table(result.report)
    print(result.skips.summary())
    print(f"wrote {len(result.rows)} preference rows to {result.preferences_path}")
    tracker.log(summary(result))
    return result.preferences_path


def split_trajectories(trajectories: str, data_dir: str, split: str | None):
    """The trajectories of ``split``'s images (a table), or the file/folder itself when ``split`` is None."""
    if split is None:
        return trajectories
    import pyarrow as pa

    import cxr_max
    from cxr_max.drift import io as drift_io

    ids = set(cxr_max.load_dataset("mimic", split=split, images="path", data_dir=data_dir)["dicom_id"])
    table = drift_io.read_trajectories(trajectories)
    return table.filter(pa.array([d in ids for d in table.column("dicom_id").to_pylist()]))


def summary(result) -> dict[str, float]:
    """The numbers of the compare stage for a tracker: rows written, and per teacher the columns of the printed
    table (``compare/<teacher>/<metric>``)."""
    out: dict[str, float] = {"compare/preference_rows": len(result.rows)}
    for name, t in result.report.get("teachers", {}).items():
        for key in ("coverage", "agreement", "refusal_rate", "laterality_swap_rate", "verbosity_mean"):
            if t.get(key) is not None:
                out[f"compare/{name}/{key}"] = t[key]
        out[f"compare/{name}/drift_points"] = len(t.get("drift_points", []))
    return out


def make_parser(subparsers=None, prog: str | None = None):
    """``(CompareArguments,)``; every flag also works from ``--config file.yaml``."""
    if subparsers is not None:
        return subparsers.add_parser(NAME, help=HELP, dataclass_types=DATACLASS_TYPES)
    return TrlParser(DATACLASS_TYPES, prog=prog)

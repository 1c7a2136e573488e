"""TRL's dataset flags for the stages: ``--dataset_name``, ``--dataset_config``, ``--dataset_train_split``,
``--dataset_test_split``.

``--dataset_name`` is

* ``cxr_max`` (the default): the cxr_max builder, loaded with ``cxr_max.load_dataset`` (the builder that
  ``datasets.load_dataset("cxr_max", ...)`` loads), with ``--dataset_config`` one of its configs and the
  builder's own options (``--data_dir``, ``--trajectories``, ``--preferences``, ...; no data location means
  the embedded synthetic world, see the README's "Data" section);
* a local folder (an export written by ``cxr-max export``, whose card maps each config to its splits, or any
  folder ``datasets`` reads: ``train``/``validation``/``test`` files become those splits) or a local
  JSON/JSONL/parquet/CSV file (one split, named by ``--dataset_train_split``);
* a Hub dataset id (``namespace/name``).

Everything but the builder is read with ``datasets.load_dataset`` (a local folder through its local loader,
which sends no request to the Hub).

The fields mirror ``trl.ScriptArguments`` (same names and meaning); ``dataset_streaming`` is not offered
because the stages select and filter rows by index. The evaluation split defaults to ``validation`` so that
evaluation during training never looks at the test split that ``cxr_max.stages.evaluate`` reports on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILDER = "cxr_max"
_ROW_FILES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class DatasetArguments:
    """Where a training stage's rows come from (``trl.ScriptArguments``' dataset fields, and the builder's root)."""

    dataset_name: str = field(default=BUILDER, metadata={"help": "'cxr_max' (the builder), a local export folder "
                              "or rows file, or a Hub dataset id; read with datasets.load_dataset."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (the builder's "
                                       "config; ignored by a dataset that has only a default config)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="validation", metadata={"help": "Split evaluated during training "
                                    "(with --eval_strategy steps/epoch)."})
    data_dir: str | None = field(default=None, metadata={"help": "cxr_max builder: MIMIC-CXR-JPG root (None: the "
                                 "embedded synthetic world)."})


@dataclass
class TrainingStageArguments(DatasetArguments):
    """The options every training stage (learn, critique, dpo) shares beside its data: the embedded world's size,
    row caps, the card's data id, the no-silent-synthetic guard, LoRA scope, Qwen-VL image bounds and the vision
    side's own learning rates."""

    synthetic_patients: int | None = field(default=None, metadata={"help": "cxr_max builder: size of the embedded "
                                           "synthetic data."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N rows only."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "With --push_to_hub: the training data's Hub "
                                       "dataset id(s) for the model card (namespace/name, comma-separated; "
                                       "default: --dataset_name when that is a Hub id)."})
    require_data: bool = field(default=False, metadata={"help": "Stop unless --data_dir or another --dataset_name "
                               "is given (the Qwen YAMLs set it: no silent training on the embedded synthetic world)."})
    freeze_vit: bool = field(default=True, metadata={"help": "With --use_peft, leave the vision encoder and merger "
                             "out of LoRA (the released recipe's setting); false adapts them too."})
    min_pixels: int | None = field(default=None, metadata={"help": "Qwen-VL processors: fewest pixels per image."})
    max_pixels: int | None = field(default=None, metadata={"help": "Qwen-VL processors: most pixels per image "
                                   "(1003520 = 1280 visual tokens in the Qwen YAMLs; None: the processor's own)."})
    vision_lr: float | None = field(default=None, metadata={"help": "Learning rate of the vision encoder (None: "
                                    "--learning_rate for everything; 0 freezes it)."})
    projector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the projector (None: "
                                       "--vision_lr)."})


def uses_builder(dataset_name: str | None) -> bool:
    """Whether ``dataset_name`` names the cxr_max builder (rather than ready rows on disk or on the Hub)."""
    return dataset_name in (None, BUILDER)


def local_path(dataset_name: str) -> Path | None:
    """The local file or folder ``dataset_name`` names, None for a Hub id; a path that does not exist (it
    starts with ``.``, ``/`` or ``~``, has more than one ``/``, or a rows-file suffix) is an error, not a Hub id."""
    p = Path(dataset_name).expanduser()
    if p.exists():
        return p
    if dataset_name.startswith((".", "/", "~")) or dataset_name.count("/") > 1 or p.suffix in _ROW_FILES:
        raise FileNotFoundError(f"--dataset_name {dataset_name}: no such file or folder (and not a Hub dataset id)")
    return None


def load_dataset_dict(args, *, splits: list[str] | None = None, file_split: str | None = None,
                      **builder_kwargs: Any):
    """The splits of the dataset ``args`` (a :class:`DatasetArguments` or a dataclass with its fields) names,
    as a ``DatasetDict``: every split, or for the builder only ``splits`` when given (a config such as ``apo``
    built from the train split's preferences has empty others). A single rows file is one split,
    ``file_split`` (default ``--dataset_train_split``).

    ``builder_kwargs`` (``trajectories=``, ``preferences=``, ...) are options of the cxr_max builder; with value
    None they are left to its defaults, and given for any other dataset they are an error (they would be ignored).
    """
    import datasets

    given = {"data_dir": getattr(args, "data_dir", None), **builder_kwargs}
    if uses_builder(args.dataset_name):
        import cxr_max

        if not args.dataset_config:
            raise ValueError("--dataset_name cxr_max needs --dataset_config (a builder config such as sft or apo)")
        kwargs = {k: v for k, v in given.items() if v is not None}
        if splits is None:
            return cxr_max.load_dataset(args.dataset_config, **kwargs)
        out = {}
        for split in splits:
            try:
                out[split] = cxr_max.load_dataset(args.dataset_config, split=split, **kwargs)
            except ValueError as e:
                if "corresponds to no data" not in str(e) and "Unknown split" not in str(e):
                    raise
                raise ValueError(f"the cxr_max {args.dataset_config!r} config has no rows in split {split!r}; pass "
                                 "--dataset_train_split / --dataset_test_split") from None
        return datasets.DatasetDict(out)
    stray = sorted(k for k, v in given.items() if v not in (None, False))
    if stray:
        raise ValueError(f"{', '.join('--' + k for k in stray)}: option(s) of the cxr_max builder, but --dataset_name "
                         f"{args.dataset_name} names ready rows; drop them or use --dataset_name cxr_max")
    path = local_path(args.dataset_name)
    if path is not None and path.is_file():
        if path.suffix not in _ROW_FILES:
            raise ValueError(f"--dataset_name {path}: a rows file must be one of {sorted(_ROW_FILES)}")
        # a local folder with explicit data files: datasets' local loader, no Hub request
        return datasets.load_dataset(str(path.parent), data_files={file_split or args.dataset_train_split: path.name})
    where = str(path) if path is not None else args.dataset_name
    names = datasets.get_dataset_config_names(where)
    config = args.dataset_config
    if config not in names:
        if names != ["default"]:
            raise ValueError(f"--dataset_name {where} has no config {config!r} (it has {', '.join(names)}); "
                             "pass --dataset_config")
        config = None  # a dataset with one default config: the stage's builder config name means nothing there
    return datasets.load_dataset(where, config)


def pick_split(dataset, split: str, where: str):
    """``dataset[split]`` with an error that names the splits there are."""
    if split not in dataset:
        raise ValueError(f"{where} has no split {split!r} (it has {', '.join(dataset)}); pass "
                         "--dataset_train_split / --dataset_test_split")
    return dataset[split]


def train_and_eval(args: DatasetArguments, training_args, dataset=None, **builder_kwargs):
    """``(train, eval)`` rows of a training stage; ``eval`` is None unless ``training_args.eval_strategy`` asks
    for evaluation. ``dataset`` (in process) is a ``Dataset`` (train only) or a ``DatasetDict``."""
    import datasets

    wants_eval = str(getattr(training_args, "eval_strategy", "no")).lower().rsplit(".", 1)[-1] != "no"
    where = "the in-process dataset" if dataset is not None else f"--dataset_name {args.dataset_name}"
    if dataset is None:
        wanted = [args.dataset_train_split] + ([args.dataset_test_split] if wants_eval else [])
        dataset = load_dataset_dict(args, splits=wanted, **builder_kwargs)
    if isinstance(dataset, datasets.Dataset):
        if wants_eval:
            raise ValueError("--eval_strategy asks for evaluation, but the in-process dataset is one Dataset; "
                             "pass a DatasetDict with a test split (--dataset_test_split)")
        return dataset, None
    train = pick_split(dataset, args.dataset_train_split, where)
    return train, pick_split(dataset, args.dataset_test_split, where) if wants_eval else None

"""``cxr-max synth``, ``cxr-max validate`` and ``cxr-max info``: make, check and count the data."""

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cxr_max.cli.options import many, opt, positional
from cxr_max.synthetic.build import DEFAULT_N_PATIENTS

# cxr_max.builder.CONFIG_NAMES and cxr_max.trajectories.io.ADAPTERS, written out so that building the parser
# imports neither (tests/test_cli.py checks they are equal).
CONFIG_NAMES = ("mimic", "trajectories", "studies", "sft", "apo", "ms_cxr_t")
ADAPTERS = ("ms_swift", "sharegpt", "alpaca", "query_response")


@dataclass
class SynthArguments:
    """Build (once) the synthetic MIMIC-CXR in PhysioNet's layout and print its root."""

    out: Path | None = opt(None, "Folder to build in (default: the cache, $CXR_MAX_CACHE).")
    seed: int = opt(0, "World seed; the same seed gives identical files.")
    n_patients: int = opt(DEFAULT_N_PATIENTS, "Number of synthetic patients.")
    n_images: int | None = opt(None, "Exact image count instead of --n_patients (CXR-MAX: 24426).")
    pixels: Literal["full", "tiny", "none"] = opt("full", "full (256 px), tiny (32 px) or none (no image files).")
    teachers: bool = opt(True, "Also write the simulated teachers' trajectories (--no_teachers: do not).")
    samples: int = opt(1, "Trajectories per image and teacher (sampling variability).")
    shifted_test: bool = opt(False, "Render the whole test split in the shifted domain.")
    test_patients: int = opt(0, "That many more patients, all in the test split (a larger test set).")
    image_shape: str | None = opt(None, "ROWSxCOLUMNS of every image, e.g. 320x256.")
    jpg_style: Literal["plain", "physionet"] = opt(
        "plain", "plain, or physionet (min-max, MONOCHROME1 inverted, histogram equalisation, quality 95).")
    broken: str | None = opt(None, "Damage JPGs on purpose, e.g. missing=3,truncated=2,empty=1.")

    def __post_init__(self) -> None:
        self.shape(), self.damage()  # a malformed value stops the command at parse time

    def shape(self) -> tuple[int, int] | None:
        if not self.image_shape:
            return None
        try:
            rows, cols = (int(x) for x in self.image_shape.lower().split("x"))
        except ValueError:
            raise ValueError(f"--image_shape must be ROWSxCOLUMNS, e.g. 320x256, not {self.image_shape!r}") from None
        return rows, cols

    def damage(self) -> dict[str, int] | None:
        if not self.broken:
            return None
        try:
            return {k.strip(): int(v) for k, v in (item.split("=") for item in self.broken.split(","))}
        except ValueError:
            raise ValueError(f"--broken must look like missing=3,truncated=2, not {self.broken!r}") from None


def make_synth_parser(subparsers):
    return subparsers.add_parser("synth", help="Build the embedded synthetic MIMIC-CXR.",
                                 description=SynthArguments.__doc__, dataclass_types=[SynthArguments])


def synth(args: SynthArguments) -> int:
    from cxr_max.synthetic import ensure_synthetic

    t0 = time.perf_counter()
    root = ensure_synthetic(args.out, seed=args.seed, n_patients=args.n_patients, n_images=args.n_images,
                            pixels=args.pixels, teachers=args.teachers, samples=args.samples,
                            shifted_test=args.shifted_test, image_shape=args.shape(), jpg_style=args.jpg_style,
                            broken=args.damage(), test_patients=args.test_patients)
    print(f"synthetic MIMIC-CXR ready at {root} ({time.perf_counter() - t0:.1f} s)")
    return 0


@dataclass
class ValidateArguments:
    """Check a MIMIC root and a trajectory folder; each problem with a count and an example path.

    With --trajectories, images the trajectories need but the copy lacks are errors; other absent images are a
    partial copy (a note), since most users hold only the images they use. Exit status 1 when there are errors.
    """

    data_dir: Path | None = opt(None, "MIMIC-CXR-JPG root (default: the embedded synthetic one); also positional.")
    dicom_dir: Path | None = opt(None, "MIMIC-CXR (DICOM/reports) root.")
    trajectories: Path | None = opt(None, "Trajectory file or folder to check against the metadata.")
    adapter: Literal[ADAPTERS] | None = opt(None, "Read the trajectories through an adapter.")
    verify_images: bool = opt(False, "Check every JPG's end-of-image marker (slow).")


def make_validate_parser(subparsers):
    parser = subparsers.add_parser("validate", help="Check a MIMIC-CXR root and a trajectory folder.",
                                   description=ValidateArguments.__doc__, dataclass_types=[ValidateArguments])
    positional(parser, ("data_dir", Path))
    return parser


def validate(args: ValidateArguments) -> int:
    from rich.console import Console

    from cxr_max.errors import SkipLog
    from cxr_max.mimic import MimicRoot
    from cxr_max.trajectories.io import read_trajectories

    console = Console()
    from cxr_max.sources import resolve_source

    src = resolve_source(args.data_dir, args.trajectories, dicom_dir=args.dicom_dir, stage="validate")
    data_dir, dicom_dir, trajectories = src.data_dir, src.dicom_dir, src.trajectories
    mimic = MimicRoot(data_dir, dicom_dir)
    table = None
    skips = SkipLog(max_examples=3)
    if trajectories is not None:
        with console.status("reading trajectories"):
            table = read_trajectories(trajectories, adapter=args.adapter, on_error="skip", skips=skips,
                                      include_failed=True, keep_bookkeeping=True)
    needed = table.column("dicom_id").combine_chunks() if table is not None else None
    report = mimic.validate(verify_images=args.verify_images, needed=needed)
    if table is not None:
        _trajectory_issues(report, mimic, table, skips, Path(trajectories), bool(args.adapter))
    console.print(report)
    return 0 if report.ok else 1


def _trajectory_issues(report, mimic, table, skips, source: Path, foreign: bool) -> None:
    """Add the trajectory folder's problems to ``report`` (counts, examples as file:row)."""
    import pyarrow.compute as pc

    report.counts["trajectory records"] = table.num_rows
    try:
        ids = mimic.images().column("dicom_id")
    except Exception:  # noqa: BLE001 - the metadata problem is already in the report
        ids = None
    if ids is not None:
        unknown = table.filter(pc.invert(pc.is_in(table.column("dicom_id"), ids)))
        if unknown.num_rows:
            where = [f"{f}:{r}" for f, r in zip(unknown.column("_file")[:5].to_pylist(),
                                                 unknown.column("_row")[:5].to_pylist())]
            report.add("error", "trajectory-unknown-ids", "trajectory records whose dicom_id is not in the metadata",
                       unknown.num_rows, where)
    for reason, n in skips.counts.most_common():
        if "superseded" in reason or "status=failed" in reason:
            report.add("info", "trajectory-failed-requests", reason, n, skips.examples.get(reason, []))
        else:
            report.add("error", "trajectory-bad-records", reason, n, skips.examples.get(reason, []))
    if source.is_dir() and not foreign:
        json_files = [p for p in sorted(source.rglob("*.json")) if p.is_file()]
        if json_files:
            report.add("warning", "trajectory-json-not-read", "JSON files not read as trajectories (JSON-array files "
                       "like SPD.json need --adapter ms_swift)", len(json_files), [str(p) for p in json_files[:3]])


@dataclass
class InfoArguments:
    """Counts per builder config, split and teacher."""

    dataset_config: list[str] = many(("mimic", "trajectories"), "Builder config(s) to count (repeatable).",
                                     choices=CONFIG_NAMES, aliases=["-c"])
    data_dir: Path | None = opt(None, "MIMIC-CXR-JPG root (default: synthetic).")
    trajectories: Path | None = opt(None, "Trajectory files or folder for the builder.")
    preferences: Path | None = opt(None, "Preference rows for the apo config.")


def make_info_parser(subparsers):
    return subparsers.add_parser("info", help="Counts per builder config, split and teacher.",
                                 description=InfoArguments.__doc__, dataclass_types=[InfoArguments])


def info(args: InfoArguments) -> int:
    from rich.console import Console
    from rich.table import Table

    from cxr_max.builder import load_dataset

    console = Console()
    kw = {"images": "path"}
    if args.trajectories:
        kw["trajectories"] = str(args.trajectories)
    if args.preferences:
        kw["preferences"] = str(args.preferences)
    for name in args.dataset_config:
        ds = load_dataset(name, data_dir=args.data_dir, **kw)
        table = Table(title=f"cxr_max / {name}")
        table.add_column("split")
        table.add_column("rows", justify="right")
        has_teacher = "teacher" in next(iter(ds.values())).column_names
        if has_teacher:
            table.add_column("per teacher")
        for split, d in ds.items():
            row = [split, str(d.num_rows)]
            if has_teacher:
                c = collections.Counter(d["teacher"])
                row.append(", ".join(f"{t}={n}" for t, n in sorted(c.items())))
            table.add_row(*row)
        console.print(table)
    return 0

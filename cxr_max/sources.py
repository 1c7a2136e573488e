"""Where a job's data comes from: the one place that decides it.

The rule, for every entry point (the builder, the commands, the recipes):

* A MIMIC-CXR-JPG root given (``data_dir``) means that copy. Nothing synthetic is added to it: a location
  the caller needs and did not give (``trajectories``, ``preferences``, ...) is an error naming the option,
  never a silent mix of a real copy with the synthetic world's files. (When ``data_dir`` is a synthetic
  world's own ``mimic-cxr-jpg``, that same world provides the needed locations not given.)
* No ``data_dir`` and every needed location given (for example a compare stage ordered by time, which reads
  trajectories only) means exactly those locations; no world is built.
* Otherwise (no ``data_dir`` and something needed is missing) the embedded synthetic MIMIC-CXR
  (:func:`cxr_max.synthetic.ensure_synthetic`, built once under ``$CXR_MAX_CACHE``) provides the MIMIC roots
  and every location not given: its ``trajectories/``, ``ms-cxr-t/`` and, when the world has one,
  ``preferences/``. ``require_data=True`` turns this case into an error (a config that must never train on
  the synthetic world by accident).

A ``data_dir`` that is itself a synthetic world's ``mimic-cxr-jpg`` folder (a ``truth.jsonl`` beside it or
in it) is data the caller chose, and is reported as synthetic (:attr:`DataSource.synthetic`).

>>> src = resolve_source()                                   # doctest: +SKIP
>>> src.data_dir, src.trajectories, src.default_world         # doctest: +SKIP
(PosixPath('~/.cache/cxr_max/synthetic-v6-seed0-n160-full/mimic-cxr-jpg'), PosixPath('.../trajectories'), True)
>>> resolve_source("/data/mimic-cxr-jpg/2.1.0").describe()     # doctest: +SKIP
{'source': 'mimic-cxr-jpg', 'synthetic': False, 'location': '/data/mimic-cxr-jpg/2.1.0'}

The synthetic world's layout is described in :mod:`cxr_max.synthetic` and in the README ("Data").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

# What a caller may say it needs; "images" is the MIMIC-CXR-JPG root (data_dir).
NEEDS = ("images", "trajectories", "preferences", "ms_cxr_t")
_FLAGS = {"images": "data_dir", "trajectories": "trajectories", "preferences": "preferences", "ms_cxr_t": "ms_cxr_t"}
_WORLD_FOLDERS = {"trajectories": "trajectories", "preferences": "preferences", "ms_cxr_t": "ms-cxr-t"}

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class DataSource:
    """The resolved locations of one job's data (absent ones are None).

    Attributes:
        data_dir: the MIMIC-CXR-JPG root (``files/`` and the ``mimic-cxr-2.0.0-*.csv.gz`` tables).
        dicom_dir: the MIMIC-CXR (DICOM, reports) root, when there is one.
        trajectories / preferences / ms_cxr_t: the teacher trajectories, the compare stage's preference rows
            and the MS-CXR-T CSV (file or folder), as given or from the synthetic world.
        world: the synthetic world's root when the data is synthetic (the default world, or the world whose
            ``mimic-cxr-jpg`` was passed as ``data_dir``; it holds ``truth.jsonl``), else None.
        default_world: True when the embedded world was used because no data location was given.
        seed / synthetic_patients: the default world's parameters (what :func:`resolve_source` was given).
    """

    data_dir: Path | None
    dicom_dir: Path | None = None
    trajectories: Path | None = None
    preferences: Path | None = None
    ms_cxr_t: Path | None = None
    world: Path | None = None
    default_world: bool = False
    seed: int = 0
    synthetic_patients: int | None = None

    @property
    def synthetic(self) -> bool:
        """Whether the images are the synthetic world's (the default one or one passed explicitly)."""
        return self.world is not None

    def describe(self) -> dict[str, Any]:
        """What the job reads, for records and cards: ``{"source", "synthetic", "location"}``.

        ``source`` is ``"embedded synthetic"`` or ``"mimic-cxr-jpg"``, and ``location`` the ``data_dir`` the
        caller gave (None for the default world): the dict :func:`cxr_max.training.recipe_utils.describe_data`
        gives. Without any MIMIC root (files only) it is ``{"source": "files", "synthetic": None,
        "location": <the first file location>}``.
        """
        if self.data_dir is None:  # files only (e.g. trajectories), no MIMIC root: what they hold is not known
            files = self.trajectories or self.preferences or self.ms_cxr_t
            return {"source": "files", "synthetic": None, "location": None if files is None else str(files)}
        given = None if self.default_world else str(self.data_dir)
        return {"source": "embedded synthetic" if self.synthetic else "mimic-cxr-jpg", "synthetic": self.synthetic,
                "location": given}


def synthetic_world_of(data_dir: PathLike) -> Path | None:
    """The synthetic world a MIMIC-CXR-JPG root belongs to (``truth.jsonl`` in it or beside it), or None."""
    root = Path(data_dir).expanduser()
    for candidate in (root, root.parent):
        if (candidate / "truth.jsonl").is_file():
            return candidate
    return None


def _path(value: PathLike | None) -> Path | None:
    return Path(value).expanduser() if value else None


def resolve_source(
    data_dir: PathLike | None = None,
    trajectories: PathLike | None = None,
    *,
    dicom_dir: PathLike | None = None,
    preferences: PathLike | None = None,
    ms_cxr_t: PathLike | None = None,
    needs: Collection[str] = ("images",),
    synthetic_patients: int | None = None,
    seed: int = 0,
    require_data: bool = False,
    stage: str = "data",
) -> DataSource:
    """Decide where the data comes from (the rule is in the module docstring).

    Args:
        data_dir: MIMIC-CXR-JPG root. None: see ``needs``.
        trajectories / dicom_dir / preferences / ms_cxr_t: the other locations, when given.
        needs: what the caller cannot do without, among :data:`NEEDS` (``"images"`` is ``data_dir``). The
            synthetic world is used only when ``data_dir`` is None and one of these is missing.
        synthetic_patients / seed: the default world's size (patients; None: its default) and seed.
        require_data: refuse the default world (a ValueError naming the options to pass).
        stage: who is asking, for the messages.

    Raises:
        ValueError: an unknown entry of ``needs``; a needed location missing next to a ``data_dir`` that is
            not a synthetic world's; the default world refused by ``require_data``.
    """
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        raise ValueError(f"unknown need(s) {unknown}; known: {list(NEEDS)}")
    given = {"images": _path(data_dir), "trajectories": _path(trajectories), "preferences": _path(preferences),
             "ms_cxr_t": _path(ms_cxr_t)}
    missing = [n for n in needs if given[n] is None]
    if data_dir:
        root = given["images"]
        world = synthetic_world_of(root)
        if missing and world is None:
            raise ValueError(f"{stage}: data_dir={str(data_dir)!r} was given without "
                             + " and ".join(f"{_FLAGS[n]}=" for n in missing)
                             + "; pass it (the synthetic world's files are not mixed with another copy)")
        if missing:  # a synthetic world's own mimic-cxr-jpg: that same world has the rest
            given.update({n: world / _WORLD_FOLDERS[n] for n in missing})
        return DataSource(root, _path(dicom_dir), given["trajectories"], given["preferences"], given["ms_cxr_t"],
                          world=world, seed=seed, synthetic_patients=synthetic_patients)
    if not missing:
        return DataSource(None, _path(dicom_dir), given["trajectories"], given["preferences"], given["ms_cxr_t"],
                          seed=seed, synthetic_patients=synthetic_patients)
    if require_data:
        raise ValueError(f"{stage}: this job requires a data location (data_dir=<MIMIC-CXR-JPG root>"
                         + "".join(f", {_FLAGS[n]}=" for n in missing if n != "images")
                         + "); without one it would use the embedded synthetic world")
    from cxr_max.synthetic import ensure_synthetic

    kwargs: dict[str, Any] = {"seed": seed}
    if synthetic_patients:
        kwargs["n_patients"] = synthetic_patients
    world = Path(ensure_synthetic(**kwargs))
    world_preferences = world / "preferences"
    return DataSource(
        data_dir=world / "mimic-cxr-jpg",
        dicom_dir=_path(dicom_dir) or world / "mimic-cxr",
        trajectories=given["trajectories"] or world / "trajectories",
        preferences=given["preferences"] or (world_preferences if world_preferences.exists() else None),
        ms_cxr_t=given["ms_cxr_t"] or world / "ms-cxr-t",
        world=world,
        default_world=True,
        seed=seed,
        synthetic_patients=synthetic_patients,
    )

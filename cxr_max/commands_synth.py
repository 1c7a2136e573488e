"""The ``cxr-max synth`` command: build the embedded synthetic MIMIC-CXR (+ simulated teachers)."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Optional

import typer

from cxr_max.synthetic.build import DEFAULT_N_PATIENTS


class Pixels(str, enum.Enum):
    full = "full"
    tiny = "tiny"
    none = "none"


def synth(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to build in (default: the cache, $CXR_MAX_CACHE)."),
    seed: int = typer.Option(0, "--seed", help="World seed; the same seed gives identical files."),
    n_patients: int = typer.Option(DEFAULT_N_PATIENTS, "--n-patients", help="Number of synthetic patients."),
    n_images: Optional[int] = typer.Option(None, "--n-images", help="Exact image count instead of --n-patients (CXR-MAX: 24426)."),
    pixels: Pixels = typer.Option(Pixels.full, "--pixels", help="full (256 px), tiny (32 px) or none (no image files)."),
    teachers: bool = typer.Option(True, "--teachers/--no-teachers", help="Also write the simulated teachers' trajectories."),
    samples: int = typer.Option(1, "--samples", help="Trajectories per image and teacher (sampling variability)."),
    shifted_test: bool = typer.Option(False, "--shifted-test", help="Render the whole test split in the shifted domain."),
    image_shape: Optional[str] = typer.Option(None, "--image-shape", help="ROWSxCOLUMNS of every image, e.g. 320x256."),
    jpg_style: str = typer.Option("plain", "--jpg-style", help="plain, or physionet (min-max, MONOCHROME1 inverted, "
                                  "histogram equalisation, quality 95)."),
    broken: Optional[str] = typer.Option(None, "--broken", help="Damage JPGs on purpose, e.g. missing=3,truncated=2,empty=1."),
) -> None:
    """Build (once) the synthetic MIMIC-CXR in PhysioNet's layout and print its root."""
    from cxr_max.synthetic import ensure_synthetic

    shape = None
    if image_shape:
        try:
            rows, cols = (int(x) for x in image_shape.lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"--image-shape must be ROWSxCOLUMNS, e.g. 320x256, not {image_shape!r}") from None
        shape = (rows, cols)
    damaged = None
    if broken:
        try:
            damaged = {k.strip(): int(v) for k, v in (item.split("=") for item in broken.split(","))}
        except ValueError:
            raise typer.BadParameter(f"--broken must look like missing=3,truncated=2, not {broken!r}") from None
    t0 = time.perf_counter()
    root = ensure_synthetic(out, seed=seed, n_patients=n_patients, n_images=n_images, pixels=pixels.value,
                            teachers=teachers, samples=samples, shifted_test=shifted_test, image_shape=shape,
                            jpg_style=jpg_style, broken=damaged)
    typer.echo(f"synthetic MIMIC-CXR ready at {root} ({time.perf_counter() - t0:.1f} s)")


def register(app: typer.Typer) -> None:
    """Add ``synth`` to the ``cxr-max`` app."""
    app.command("synth")(synth)

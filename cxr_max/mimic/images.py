"""Reading MIMIC-CXR images: the JPGs of MIMIC-CXR-JPG and the DICOMs of MIMIC-CXR, as 8-bit grayscale.

DICOM to 8-bit follows the standard display pipeline (pydicom 3):

1. stored values -> modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence),
   :func:`pydicom.pixels.apply_modality_lut`;
2. -> VOI LUT Sequence, else Window Center/Width (first window), :func:`pydicom.pixels.apply_voi_lut`;
   the VOI output range is then mapped to 0..255 (for windowing the range pydicom windows into, so
   the window's clipping is kept; for a VOI LUT the range of the LUT's own values);
3. with neither, min-max scaling of the modality output to 0..255 (a constant image gives zeros);
4. MONOCHROME1 (white = low values) is inverted so that, like MONOCHROME2, bone is bright.

Only MONOCHROME1 / MONOCHROME2 are accepted; anything else (RGB, YBR_FULL, PALETTE COLOR...) is a
:class:`~cxr_max.errors.DataError` naming the file and the value. A multi-frame file gives its
first frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxr_max.errors import DataError, OnError, SkipLog, handle

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


def read_jpg(path: str | os.PathLike, *, on_error: OnError = "raise", skips: SkipLog | None = None) -> Image.Image | None:
    """A MIMIC-CXR-JPG image as a fully decoded PIL image in mode "L".

    The pixels are decoded now, so a truncated or corrupt file raises here (a DataError naming the
    file), not later in a training loop. Colour images are converted to "L". Under ``on_error="skip"``
    a bad file returns ``None`` and is counted.
    """
    try:
        try:
            with Image.open(path) as img:
                img.load()
                out = img if img.mode == "L" else img.convert("L")
                out.load()
                return out if out is not img else img.copy()
        except FileNotFoundError:
            raise DataError("image file not found", path=path) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"corrupt or truncated image: {e}", path=path) from e
    except DataError as err:
        handle(err, on_error, skips)
        return None


def read_dicom_header(path: str | os.PathLike, *, on_error: OnError = "raise", skips: SkipLog | None = None) -> pydicom.Dataset | None:
    """The DICOM header only (``stop_before_pixels=True``): fast for scanning many files."""
    try:
        return _dcmread(path, stop_before_pixels=True)
    except DataError as err:
        handle(err, on_error, skips)
        return None


def _dcmread(path: str | os.PathLike, *, stop_before_pixels: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise DataError("DICOM file not found", path=path) from None
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"not a readable DICOM file: {e}", path=path) from e


def dicom_to_uint8(ds: pydicom.Dataset, where: str | os.PathLike = "<dataset>") -> np.ndarray:
    """The display pipeline of the module docs on an already-read dataset: a 2-D uint8 array."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in GRAYSCALE:
        raise DataError(
            f"unsupported PhotometricInterpretation {photometric or '(missing)'!r}; expected one of {GRAYSCALE}",
            path=where,
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError("DICOM file has no pixel data", path=where)
    try:
        stored = ds.pixel_array
    except (ValueError, NotImplementedError, RuntimeError, AttributeError, TypeError, KeyError) as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise DataError(f"cannot decode pixel data (transfer syntax {name}): {e}", path=where) from e
    if stored.ndim == 3:  # frames x rows x columns
        stored = stored[0]
    if stored.ndim != 2:
        raise DataError(f"expected a 2-D grayscale image, got pixel array of shape {stored.shape}", path=where)

    try:
        values = apply_modality_lut(stored, ds)
        has_voi_lut = bool(ds.get("VOILUTSequence")) and "LUTData" in ds.VOILUTSequence[0]
        has_window = "WindowCenter" in ds and "WindowWidth" in ds
        if has_voi_lut:
            if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
                values = values.astype(np.int64)  # a VOI LUT is indexed by whole numbers
            out = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
            entries, first = int(ds.VOILUTSequence[0].LUTDescriptor[0]) or 2**16, int(ds.VOILUTSequence[0].LUTDescriptor[1])
            table = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds, prefer_lut=True)
            low, high = float(np.min(table)), float(np.max(table))
        elif has_window:
            out = np.asarray(apply_voi_lut(values, ds, prefer_lut=False), dtype=np.float64)
            # The range pydicom windows into: push two extreme values through the same window.
            with np.errstate(over="ignore"):
                ends = apply_voi_lut(np.array([-1e12, 1e12]), ds, prefer_lut=False)
            low, high = float(ends[0]), float(ends[1])
        else:
            out = np.asarray(values, dtype=np.float64)
            low, high = float(out.min()), float(out.max())
    except (ValueError, NotImplementedError, AttributeError, TypeError, KeyError, IndexError) as e:
        raise DataError(f"cannot apply the modality/VOI LUT: {e}", path=where) from e

    if high > low:
        scaled = np.clip((out - low) / (high - low), 0.0, 1.0) * 255.0
    else:
        scaled = np.zeros_like(out)
    pixels = np.rint(scaled).astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels


def read_dicom(path: str | os.PathLike, *, on_error: OnError = "raise", skips: SkipLog | None = None) -> Image.Image | None:
    """A MIMIC-CXR DICOM as a PIL image in mode "L", through the pipeline of the module docs.

    Corrupt, truncated, non-DICOM or colour files raise a DataError naming the file (or return
    ``None``, counted, under ``on_error="skip"``).
    """
    try:
        ds = _dcmread(path, stop_before_pixels=False)
        return Image.fromarray(dicom_to_uint8(ds, Path(path)), mode="L")
    except DataError as err:
        handle(err, on_error, skips)
        return None


def image_problem(path: str | None, level: str) -> str | None:
    """What is wrong with one image file, or None. ``level``: "exists", "verify" or "decode".

    "verify" checks the file is not empty, starts with a JPEG (or PNG) signature, is readable by
    PIL and, for a JPEG, ends with the end-of-image marker ``FF D9`` (trailing zero padding allowed):
    a download cut short fails here. "decode" decodes the pixels in full (slow on real copies).
    """
    if not path:
        return "missing image path"
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing image file"
    if level == "exists":
        return None
    if size == 0:
        return "empty image file"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 64))
            tail = f.read().rstrip(b"\x00")
    except OSError as e:
        return f"unreadable image file ({e.strerror})"
    is_jpeg = head[:2] == b"\xff\xd8"
    if not is_jpeg and head != b"\x89PNG\r\n\x1a\n" and not head.startswith(b"DICM"):
        return "not a JPEG or PNG file (bad signature)"
    if is_jpeg and not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    try:
        with Image.open(path) as im:
            if level == "decode":
                im.load()
            else:
                im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"corrupt image file ({e})"
    return None

"""cxr_max.mimic.images: JPG and DICOM to 8-bit grayscale, and their bad inputs."""

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxr_max.errors import DataError, SkipLog
from cxr_max.mimic import read_dicom, read_dicom_header, read_jpg

try:
    from fixtures_mimic import gradient, write_dicom, write_rgb_dicom
except ImportError:  # tests/ imported as a package
    from tests.fixtures_mimic import gradient, write_dicom, write_rgb_dicom


def linear_window(x, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, written out independently, as a 0..1 fraction."""
    x = np.asarray(x, dtype=np.float64)
    c, w = center - 0.5, width - 1
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))


# ---------------------------------------------------------------------------------------------- JPG


def test_read_jpg_gray_and_rgb(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    Image.fromarray(gray, mode="L").save(tmp_path / "g.jpg", quality=100)
    img = read_jpg(tmp_path / "g.jpg")
    assert img.mode == "L" and img.size == (16, 8)
    assert np.abs(np.asarray(img, dtype=int) - gray).max() <= 3
    Image.fromarray(np.full((6, 5, 3), (200, 200, 200), np.uint8), mode="RGB").save(tmp_path / "c.jpg")
    rgb = read_jpg(tmp_path / "c.jpg")
    assert rgb.mode == "L" and rgb.size == (5, 6) and abs(int(np.asarray(rgb).mean()) - 200) <= 2


def test_read_jpg_bad_inputs_raise_or_count(tmp_path):
    arr = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\x00\x01 not an image at all")
    cases = {"truncated.jpg": "truncated|corrupt", "garbage.jpg": "corrupt", "missing.jpg": "not found"}
    for name, reason in cases.items():
        with pytest.raises(DataError, match=reason) as info:
            read_jpg(tmp_path / name)
        assert info.value.path == tmp_path / name
    skips = SkipLog()
    assert all(read_jpg(tmp_path / n, on_error="skip", skips=skips) is None for n in cases)
    assert skips.total == 3


# -------------------------------------------------------------------------------------------- DICOM


def test_monochrome2_min_max(tmp_path):
    stored = gradient(8, 8)  # 0..4095, 12-bit
    img = read_dicom(write_dicom(tmp_path / "m2.dcm", stored))
    assert img.mode == "L" and img.size == (8, 8)
    expected = np.rint(stored / 4095 * 255)
    assert np.array_equal(np.asarray(img), expected.astype(np.uint8))


def test_monochrome1_is_inverted(tmp_path):
    stored = gradient(8, 8)
    m2 = np.asarray(read_dicom(write_dicom(tmp_path / "m2.dcm", stored)))
    m1 = np.asarray(read_dicom(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")))
    assert np.array_equal(m1, 255 - m2)
    assert m1[0, 0] == 255 and m1[-1, -1] == 0  # low stored value = white in MONOCHROME1


def test_window_center_width(tmp_path):
    stored = gradient(16, 16)
    img = np.asarray(read_dicom(write_dicom(tmp_path / "w.dcm", stored, window=(2048, 1024))))
    expected = np.rint(linear_window(stored, 2048, 1024) * 255).astype(np.uint8)
    assert np.abs(img.astype(int) - expected).max() <= 1
    assert (img == 0).sum() > 50 and (img == 255).sum() > 50  # the window clips, unlike min-max


def test_rescale_slope_intercept_then_window_in_output_units(tmp_path):
    stored = gradient(16, 16)
    slope, intercept = 2.0, -1000.0
    img = np.asarray(read_dicom(write_dicom(tmp_path / "r.dcm", stored, rescale=(slope, intercept), window=(3000, 4000))))
    modality = stored * slope + intercept
    expected = np.rint(linear_window(modality, 3000, 4000) * 255).astype(np.uint8)
    assert np.abs(img.astype(int) - expected).max() <= 1
    # without a window: min-max of the modality output (same ramp, positive slope)
    plain = np.asarray(read_dicom(write_dicom(tmp_path / "r2.dcm", stored, rescale=(slope, intercept))))
    assert np.array_equal(plain, np.rint((modality - modality.min()) / np.ptp(modality) * 255).astype(np.uint8))


def test_voi_lut_sequence_wins_over_window(tmp_path):
    stored = gradient(8, 8)
    lut = [int(round(1000 * np.sqrt(i / 4095))) for i in range(4096)]  # output range 0..1000
    path = write_dicom(tmp_path / "lut.dcm", stored, voi_lut=lut, window=(100, 10))
    img = np.asarray(read_dicom(path))
    expected = np.rint(np.asarray(lut)[stored] / 1000 * 255).astype(np.uint8)
    assert np.abs(img.astype(int) - expected).max() <= 1


def test_constant_image_gives_zeros(tmp_path):
    img = np.asarray(read_dicom(write_dicom(tmp_path / "flat.dcm", np.full((4, 4), 700, np.uint16))))
    assert not img.any()


def test_real_chest_cr_from_pydicom_data():
    path = get_testdata_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = read_dicom(path)
    assert img.mode == "L" and img.size == (ds.Columns, ds.Rows)
    pixels = np.asarray(img, dtype=int)
    # independent expectation: its own window, rescaled to 0..255, then inverted (MONOCHROME1)
    expected = 255 - np.rint(linear_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth)) * 255)
    assert np.abs(pixels - expected).max() <= 1
    assert pixels.std() > 20  # a real image, not flat
    header = read_dicom_header(path)
    assert "PixelData" not in header and header.Rows == ds.Rows


def test_unsupported_photometric_names_file_and_value(tmp_path):
    path = write_rgb_dicom(tmp_path / "rgb.dcm")
    with pytest.raises(DataError, match="unsupported PhotometricInterpretation 'RGB'") as info:
        read_dicom(path)
    assert info.value.path == path
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    with pytest.raises(DataError, match="'YBR_FULL'"):
        read_dicom(tmp_path / "ybr.dcm")


def test_corrupt_truncated_and_missing_dicom(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", gradient(32, 32))
    data = good.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[:-600])  # pixel data cut short
    (tmp_path / "garbage.dcm").write_bytes(b"\x00" * 10 + b"definitely not DICOM")
    header_only = pydicom.dcmread(good)
    del header_only.PixelData
    header_only.save_as(tmp_path / "nopixels.dcm")
    cases = {
        "truncated.dcm": "cannot decode pixel data",
        "garbage.dcm": "not a readable DICOM",
        "missing.dcm": "not found",
        "nopixels.dcm": "no pixel data",
    }
    for name, reason in cases.items():
        with pytest.raises(DataError, match=reason) as info:
            read_dicom(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    skips = SkipLog()
    assert all(read_dicom(tmp_path / n, on_error="skip", skips=skips) is None for n in cases)
    assert skips.total == 4
    with pytest.raises(DataError, match="not a readable DICOM"):
        read_dicom_header(tmp_path / "garbage.dcm")

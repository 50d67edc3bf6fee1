"""Vendor OCT files through the optional oct-converter package.

No real vendor file can be shipped, so this tests: suffix dispatch, the ImportError that names the
``vendor`` extra, the adapter from oct-converter's volume objects to our arrays and metadata (with stand-in
reader classes), and, where oct-converter is installed, a real read of a Zeiss ``.img`` (a raw byte cube,
the one vendor format that can be produced honestly) plus our reader on oct-converter's own DICOM output.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from medicraft_monai.data import vendor
from medicraft_monai.data.dicom import read_oct_dicom
from medicraft_monai.data.errors import CorruptImageError, OCTDataError, UnsupportedFormatError
from medicraft_monai.data.vendor import VENDOR_SUFFIXES, convert_vendor_to_dicom, read_vendor_volume, vendor_format

HAS_OCT_CONVERTER = importlib.util.find_spec("oct_converter") is not None


@pytest.fixture(scope="module")
def real_stack(real_bscan_paths: list[Path]) -> np.ndarray:
    """Four real 496 x 512 B-scans."""
    images = [np.asarray(Image.open(p)) for p in real_bscan_paths]
    return np.stack([a for a in images if a.shape == (496, 512)][:4])


def test_suffix_dispatch(tmp_path: Path) -> None:
    assert vendor_format(tmp_path / "exam.E2E") == "heidelberg_e2e"
    assert vendor_format(tmp_path / "a.fds") == "topcon_fds" and vendor_format(tmp_path / "a.FDA") == "topcon_fda"
    assert vendor_format(tmp_path / "cube_raw.img") == "zeiss_img"
    assert vendor_format(tmp_path / "scan.OCT") == "bioptigen_or_optovue_oct"
    assert set(VENDOR_SUFFIXES) == {".e2e", ".fds", ".fda", ".img", ".oct"}
    for name in ("scan.png", "scan.vol", "scan"):
        with pytest.raises(UnsupportedFormatError) as err:
            read_vendor_volume(tmp_path / name)  # rejected before oct-converter is even needed
        assert name in str(err.value) and ".e2e" in str(err.value)


def test_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "oct_converter", None)  # makes `import oct_converter...` fail
    monkeypatch.setitem(sys.modules, "oct_converter.readers", None)
    (tmp_path / "exam.e2e").write_bytes(b"\0" * 64)
    for call in (
        lambda: read_vendor_volume(tmp_path / "exam.e2e"),
        lambda: convert_vendor_to_dicom(tmp_path / "exam.e2e", tmp_path / "o.dcm"),
    ):
        with pytest.raises(ImportError) as err:
            call()
        message = str(err.value)
        assert "oct-converter" in message and "medicraft-monai[vendor]" in message and ".e2e" in message
    assert not (tmp_path / "o.dcm").exists()


class _Volume(SimpleNamespace):
    """Stands in for oct_converter.image_types.OCTVolumeWithMetaData."""


def _fake_readers(volumes: dict[str, list[_Volume]], fail: dict[str, Exception] | None = None) -> SimpleNamespace:
    fail = fail or {}

    def reader(name: str) -> type:
        class Reader:
            def __init__(self, filepath: str) -> None:
                self.filepath = filepath

            def read_oct_volume(self, **kwargs: object) -> object:
                if name in fail:
                    raise fail[name]
                vols = volumes[name]
                return vols if name in ("E2E", "BOCT", "POCT") else vols[0]

        return Reader

    return SimpleNamespace(**{n: reader(n) for n in ("E2E", "FDS", "FDA", "IMG", "BOCT", "POCT")})


def test_adapter_stacks_volumes_and_maps_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_stack: np.ndarray
) -> None:
    linear = real_stack.astype(np.float64) / 255.0
    volumes = {
        "E2E": [
            _Volume(volume=list(linear), laterality="L", pixel_spacing=[0.0113, 0.0039, 0.25], patient_id="H-1"),
            _Volume(volume=list(linear[:2]), laterality="R", pixel_spacing=None, patient_id="H-1"),
        ],
        "FDS": [
            _Volume(
                volume=list(real_stack.astype(np.uint16)),
                laterality="R",
                pixel_spacing=[0.0117, 0.047, 0.0026],
                patient_id="T-2",
            )
        ],
        "POCT": [_Volume(volume=list(real_stack), laterality="", pixel_spacing=[0.015, 0.015], patient_id=None)],
    }
    fail = {
        "FDA": ValueError("The binary mode of fromstring is removed, use frombuffer instead"),
        "BOCT": RuntimeError("OCT header does not match Bioptigen .OCT format"),
    }
    monkeypatch.setattr(vendor, "_readers", lambda: _fake_readers(volumes, fail))
    for name in ("h.e2e", "t.fds", "t.fda", "o.oct"):
        (tmp_path / name).write_bytes(b"\1" * 32)

    frames, meta = read_vendor_volume(tmp_path / "h.e2e")
    assert frames.shape == (4, 496, 512) and frames.dtype == np.float32
    np.testing.assert_allclose(frames, linear, rtol=1e-6)
    assert meta["laterality"] == "L" and meta["pixel_spacing"] == pytest.approx((0.0039, 0.0113))
    assert meta["num_volumes"] == 2 and meta["patient_id"] == "H-1" and meta["format"] == "heidelberg_e2e"
    second, meta2 = read_vendor_volume(tmp_path / "h.e2e", volume=1)
    assert second.shape[0] == 2 and meta2["laterality"] == "R" and meta2["pixel_spacing"] is None
    with pytest.raises(OCTDataError, match="volume 2 is out of range"):
        read_vendor_volume(tmp_path / "h.e2e", volume=2)

    frames, meta = read_vendor_volume(tmp_path / "t.fds")
    assert frames.dtype == np.uint16 and meta["pixel_spacing"] == pytest.approx((0.0026, 0.0117))  # (depth, width)

    with pytest.raises(CorruptImageError, match="NumPy >= 2.3") as err:
        read_vendor_volume(tmp_path / "t.fda")
    assert "t.fda" in str(err.value)

    frames, meta = read_vendor_volume(tmp_path / "o.oct")  # not Bioptigen -> Optovue
    np.testing.assert_array_equal(frames, real_stack)
    assert meta["pixel_spacing"] is None and meta["laterality"] == ""

    # conversion: float volumes are min-max scaled to uint16, the rest comes from the vendor metadata
    out = convert_vendor_to_dicom(tmp_path / "h.e2e", tmp_path / "h.dcm", patient_id="PSEUDO-9")
    pixels, dmeta = read_oct_dicom(out)
    assert pixels.dtype == np.uint16 and pixels.shape == (4, 496, 512)
    lo, hi = linear.min(), linear.max()
    np.testing.assert_array_equal(pixels, np.round((linear - lo) / (hi - lo) * 65535).astype(np.uint16))
    assert dmeta["laterality"] == "L" and dmeta["pixel_spacing"] == pytest.approx((0.0039, 0.0113))
    assert dmeta["patient_id"] == "PSEUDO-9" and not dmeta["synthetic"]
    pixels, dmeta = read_oct_dicom(convert_vendor_to_dicom(tmp_path / "t.fds", tmp_path / "t.dcm"))
    np.testing.assert_array_equal(pixels, real_stack.astype(np.uint16))
    assert dmeta["patient_id"] == "T-2" and dmeta["laterality"] == "R"


def test_real_oct_converter_or_clear_import_error(tmp_path: Path, real_stack: np.ndarray) -> None:
    """With oct-converter installed: a real read of a raw Zeiss cube, our reader on oct-converter's own OPT
    DICOM of it, and a Topcon file reported as corrupt naming the file (with NumPy >= 2.3 oct-converter
    0.7.0's Topcon readers fail on numpy.fromstring, and the message says so). Without oct-converter: the
    ImportError that names the extra. Both branches assert behaviour."""
    cube = np.zeros((3, 1024, 512), dtype=np.uint8)  # oct-converter's default Zeiss geometry: 1024 x 512
    cube[:, 200:696, :] = real_stack[:3]
    path = tmp_path / "P1234_Macular Cube 512x128_5-6-2021_10-11-12_OS_sn9999_cube_raw.img"
    path.write_bytes(np.transpose(cube, (1, 2, 0)).tobytes(order="F"))  # depth fastest, then A-scans, then B-scans
    if not HAS_OCT_CONVERTER:
        with pytest.raises(ImportError, match=r"medicraft-monai\[vendor\]"):
            read_vendor_volume(path)
        return
    frames, meta = read_vendor_volume(path)
    np.testing.assert_array_equal(frames, cube)
    assert meta["laterality"] == "L" and meta["patient_id"] == "P1234" and meta["pixel_spacing"] is None
    pixels, dmeta = read_oct_dicom(convert_vendor_to_dicom(path, tmp_path / "zeiss.dcm"))
    np.testing.assert_array_equal(pixels, cube)
    assert dmeta["laterality"] == "L" and dmeta["pixel_spacing"] is None

    from oct_converter.dicom import create_dicom_from_oct

    (written,) = create_dicom_from_oct(str(path), str(tmp_path / "by_oct_converter"))
    theirs, their_meta = read_oct_dicom(written)
    assert theirs.shape == cube.shape and theirs.dtype == np.uint16
    expected = np.round(cube.astype(np.float64) / cube.max() * 100)  # oct-converter rescales to 0..100
    assert np.abs(theirs.astype(np.int64) - expected).max() <= 1
    assert their_meta["laterality"] == "L" and their_meta["plane_angles"] == [None, None, None]

    topcon = tmp_path / "header_only.fds"
    topcon.write_bytes(b"FOCTFDA" + struct.pack("<II", 1, 0) + b"\0")  # a valid header, no chunks
    numpy_major_minor = tuple(int(v) for v in np.__version__.split(".")[:2])
    with pytest.raises(
        CorruptImageError, match="NumPy >= 2.3" if numpy_major_minor >= (2, 3) else "oct-converter"
    ) as err:
        read_vendor_volume(topcon)
    assert "header_only.fds" in str(err.value)

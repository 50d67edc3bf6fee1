"""B-scan readers and writers: PNG/JPEG/TIFF (8/16-bit, float), NIfTI, DICOM; formats, shapes, bad files."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.data import MetaTensor, list_data_collate
from monai.data.image_reader import ITKReader, PILReader
from monai.transforms import LoadImage
from PIL import Image, ImageFile

from medicraft_monai.data.dicom import write_oct_dicom
from medicraft_monai.data.errors import (
    CorruptImageError,
    DimensionalityError,
    OCTDataError,
    UnsupportedFormatError,
)
from medicraft_monai.data.io import (
    META_KEYS,
    SUPPORTED_SUFFIXES,
    LoadOCTImage,
    LoadOCTImageD,
    LoadOCTImaged,
    LoadOCTImageDict,
    image_format,
    probe_image,
    read_bscan,
    read_frames,
    write_bscan_png,
    write_bscan_tiff,
    write_nifti_bscan,
)


@pytest.fixture(scope="module")
def real_image(real_bscan_paths: list[Path]) -> np.ndarray:
    """A real 8-bit B-scan (H, W)."""
    return np.asarray(Image.open(real_bscan_paths[0]))


def _as_16bit(image: np.ndarray) -> np.ndarray:
    """A 16-bit image using the full range and odd values (so a silent 8-bit conversion would show)."""
    return image.astype(np.uint16) * 257 + (np.arange(image.size, dtype=np.uint16) % 7).reshape(image.shape)


def test_suffix_table_and_format_detection(tmp_path: Path, real_image: np.ndarray) -> None:
    assert SUPPORTED_SUFFIXES[".jpeg"] == SUPPORTED_SUFFIXES[".jpg"] == "jpeg"
    assert SUPPORTED_SUFFIXES[".nii.gz"] == "nifti" and SUPPORTED_SUFFIXES[""] == "dicom"
    assert all(s == s.lower() for s in SUPPORTED_SUFFIXES)
    for name, fmt in {
        "a.PNG": "png",
        "b.JPG": "jpeg",
        "c.tif": "tiff",
        "d.TIFF": "tiff",
        "e.nii": "nifti",
        "f.Nii.Gz": "nifti",
        "g.dcm": "dicom",
    }.items():
        assert image_format(tmp_path / name) == fmt
    # DICOM without a suffix, or named by a UID, is found by its preamble
    write_oct_dicom(tmp_path / "IM0001", real_image)
    write_oct_dicom(tmp_path / "1.2.826.0.1.3680043.8.498.55", real_image)
    assert image_format(tmp_path / "IM0001") == image_format(tmp_path / "1.2.826.0.1.3680043.8.498.55") == "dicom"
    assert probe_image(tmp_path / "IM0001")["shape"] == (1, *real_image.shape)
    Image.fromarray(real_image).save(tmp_path / "scan.bmp")
    (tmp_path / "noext").write_bytes(b"\0" * 300)
    for bad in ("scan.bmp", "noext"):
        with pytest.raises(UnsupportedFormatError) as err:
            probe_image(tmp_path / bad)
        assert bad in str(err.value) and ".png" in str(err.value) and ".nii.gz" in str(err.value)


@pytest.mark.parametrize("bits", [8, 16])
def test_same_array_loads_identically_from_every_format(tmp_path: Path, real_image: np.ndarray, bits: int) -> None:
    image = real_image if bits == 8 else _as_16bit(real_image)
    paths = {
        "png": write_bscan_png(tmp_path / "b.png", image),
        "tiff": write_bscan_tiff(tmp_path / "b.tif", image),
        "nifti": write_nifti_bscan(tmp_path / "b.nii.gz", image, pixel_spacing=(0.0039, 0.0117)),
        "dicom": write_oct_dicom(tmp_path / "b.dcm", image, pixel_spacing=(0.0039, 0.0117)),
    }
    expected = torch.as_tensor(image.astype(np.float32))[None]
    for fmt, path in paths.items():
        assert probe_image(path) == {
            "format": fmt,
            "shape": (1, *image.shape),
            "dtype": image.dtype.name,
            "bit_depth": bits,
        }
        img = LoadOCTImage()(path)
        assert isinstance(img, MetaTensor) and img.dtype == torch.float32 and tuple(img.shape) == (1, *image.shape)
        assert torch.equal(img.as_tensor(), expected), fmt
        assert img.meta["bit_depth"] == bits and img.meta["format"] == fmt
        assert set(META_KEYS) <= set(img.meta)
    for fmt in ("nifti", "dicom"):
        assert read_bscan(paths[fmt])[1]["pixel_spacing"] == pytest.approx((0.0039, 0.0117))
        assert torch.allclose(
            torch.diag(LoadOCTImage()(paths[fmt]).affine).float(), torch.tensor([0.0039, 0.0117, 1.0])
        )
    assert read_bscan(paths["png"])[1]["pixel_spacing"] is None
    # independent readers agree on the (H, W) display order
    np.testing.assert_array_equal(np.asarray(Image.open(paths["png"])), image)
    np.testing.assert_array_equal(
        np.asarray(LoadImage(reader=PILReader(reverse_indexing=False), image_only=True)(paths["png"])), image
    )
    np.testing.assert_array_equal(
        np.asarray(LoadImage(reader=ITKReader(reverse_indexing=True), image_only=True)(paths["nifti"])), image
    )
    np.testing.assert_array_equal(tifffile.imread(paths["tiff"]), image)


def test_nifti_axis_convention_matches_itk(tmp_path: Path, real_image: np.ndarray) -> None:
    path = write_nifti_bscan(tmp_path / "b.nii", real_image, pixel_spacing=(0.004, 0.011))
    nii = nib.load(str(path))
    height, width = real_image.shape
    assert nii.shape == (width, height)  # axis 0 = x = lateral (W), axis 1 = y = depth (H)
    assert nii.header.get_zooms()[:2] == pytest.approx((0.011, 0.004))
    itk_image = itk.imread(str(path))
    np.testing.assert_array_equal(itk.GetArrayFromImage(itk_image), real_image)
    assert tuple(itk_image.GetSpacing()) == pytest.approx((0.011, 0.004))
    # a volume (x, y, frames) is a stack of frames along its last axis
    stack = np.stack([real_image, real_image[::-1], 255 - real_image])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stack.transpose(2, 1, 0)), np.eye(4)), str(tmp_path / "stack.nii.gz"))
    frames, metas = read_frames(tmp_path / "stack.nii.gz")
    np.testing.assert_array_equal(frames, stack)
    assert metas[0]["pixel_spacing"] is None  # zooms of 1 with unknown units are not a spacing
    np.testing.assert_array_equal(read_bscan(tmp_path / "stack.nii.gz", frame=2)[0], 255 - real_image)


def test_real_jpegs_read_as_stored(
    real_bscan_paths: list[Path], oct2017_manifest: list[dict[str, str]], oct2017_dir: Path
) -> None:
    sizes = {r["file"]: (int(r["height"]), int(r["width"])) for r in oct2017_manifest}
    for path in real_bscan_paths:
        info = probe_image(path)
        rel = path.relative_to(oct2017_dir).as_posix()
        assert info == {"format": "jpeg", "shape": (1, *sizes[rel]), "dtype": "uint8", "bit_depth": 8}
        image, meta = read_bscan(path)
        np.testing.assert_array_equal(image, np.asarray(Image.open(path)))
        assert meta["laterality"] == "" and meta["plane_angle"] is None and meta["synthetic"] is False


def test_grayscale_stored_as_colour_is_accepted_true_colour_is_not(tmp_path: Path, real_image: np.ndarray) -> None:
    rgb = np.stack([real_image] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(np.dstack([rgb, np.full(real_image.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    for name in ("rgb.png", "rgba.png", "rgb.tif"):
        image, meta = read_bscan(tmp_path / name)
        np.testing.assert_array_equal(image, real_image)
        assert image.dtype == np.uint8 and meta["bit_depth"] == 8
    jpeg, _ = read_bscan(tmp_path / "rgb.jpg")
    assert jpeg.shape == real_image.shape and np.abs(jpeg.astype(int) - real_image).mean() < 3

    coloured = rgb.copy()
    coloured[100:140, 200:260, 0] = 255  # a red annotation
    Image.fromarray(coloured).save(tmp_path / "annotated.png")
    tifffile.imwrite(tmp_path / "annotated.tif", coloured, photometric="rgb")
    transparent = np.dstack([rgb, np.full(real_image.shape, 255, np.uint8)])
    transparent[:10, :10, 3] = 0
    Image.fromarray(transparent).save(tmp_path / "transparent.png")
    for name, reason in (("annotated.png", "colour"), ("annotated.tif", "colour"), ("transparent.png", "transparent")):
        with pytest.raises(DimensionalityError, match=reason) as err:
            probe_image(tmp_path / name)
        assert name in str(err.value)


def test_corrupt_truncated_and_empty_files(
    tmp_path: Path, real_bscan_paths: list[Path], real_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # even if another library tolerates truncation
    jpeg = real_bscan_paths[3].read_bytes()
    sources = {
        "cut.jpeg": jpeg[: len(jpeg) // 2],
        "cut.png": write_bscan_png(tmp_path / "ok.png", real_image).read_bytes()[:5000],
        "cut.tif": write_bscan_tiff(tmp_path / "ok.tif", _as_16bit(real_image)).read_bytes()[:30000],
        "cut.nii.gz": write_nifti_bscan(tmp_path / "ok.nii.gz", real_image).read_bytes()[:2000],
        "cut.nii": write_nifti_bscan(tmp_path / "ok.nii", real_image).read_bytes()[:2000],
        "noise.png": bytes(range(256)) * 8,
    }
    for suffix in (".png", ".jpg", ".tif", ".nii.gz", ".dcm"):
        sources[f"empty{suffix}"] = b""
    for name, content in sources.items():
        (tmp_path / name).write_bytes(content)
        for call in (probe_image, read_bscan, LoadOCTImage()):
            with pytest.raises(CorruptImageError) as err:
                call(tmp_path / name)
            assert name in str(err.value)
    with pytest.raises(CorruptImageError, match="empty"):
        probe_image(tmp_path / "empty.jpg")
    with pytest.raises(CorruptImageError, match="does not exist"):
        read_bscan(tmp_path / "missing.png")
    # the untouched originals still read
    assert probe_image(tmp_path / "ok.tif")["bit_depth"] == 16
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global setting is restored


def test_float_data_kept_and_nan_rejected(tmp_path: Path, real_image: np.ndarray) -> None:
    linear = (real_image.astype(np.float32) / 255.0) ** 2
    write_bscan_tiff(tmp_path / "linear.tif", linear)
    image, meta = read_bscan(tmp_path / "linear.tif")
    assert image.dtype == np.float32 and meta["bit_depth"] == 0
    np.testing.assert_array_equal(image, linear)
    assert LoadOCTImage()(tmp_path / "linear.tif").meta["bit_depth"] == 0
    bad = linear.copy()
    bad[10, 10] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    bad_inf = linear.T.copy()
    bad_inf[0, 0] = np.inf
    nib.save(nib.Nifti1Image(bad_inf, np.eye(4)), str(tmp_path / "inf.nii.gz"))
    for name in ("nan.tif", "inf.nii.gz"):
        with pytest.raises(CorruptImageError, match="NaN or infinite") as err:
            probe_image(tmp_path / name)
        assert name in str(err.value)


def test_dimensionality_and_frames(tmp_path: Path, real_image: np.ndarray) -> None:
    stack = np.stack([real_image, real_image // 2, real_image // 3])
    tifffile.imwrite(tmp_path / "pages.tif", stack, photometric="minisblack")
    assert probe_image(tmp_path / "pages.tif")["shape"] == (3, *real_image.shape)
    np.testing.assert_array_equal(read_bscan(tmp_path / "pages.tif", frame=1)[0], stack[1])
    assert (
        LoadOCTImaged("image")({"image": tmp_path / "pages.tif", "frame": 2})["image"][0].numpy().tolist()
        == stack[2].astype(np.float32).tolist()
    )
    for frame in (3, -1, 1.5):
        with pytest.raises(OCTDataError, match="out of range") as err:
            read_bscan(tmp_path / "pages.tif", frame=frame)
        assert "pages.tif" in str(err.value) and str(frame) in str(err.value)
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 3, 2), np.uint8), np.eye(4)), str(tmp_path / "4d.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8,), np.uint8), np.eye(4)), str(tmp_path / "1d.nii.gz"))
    for name in ("4d.nii.gz", "1d.nii.gz"):
        with pytest.raises(DimensionalityError) as err:
            probe_image(tmp_path / name)
        assert name in str(err.value)
    # trailing singleton axes are not frames
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 1, 1), np.uint16), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    assert probe_image(tmp_path / "flat.nii.gz")["shape"] == (1, 6, 8)


def test_dictionary_loader_batches_mixed_formats(tmp_path: Path, real_image: np.ndarray) -> None:
    assert LoadOCTImageD is LoadOCTImaged and LoadOCTImageDict is LoadOCTImaged
    dcm = write_oct_dicom(
        tmp_path / "exam.dcm",
        np.stack([real_image, 255 - real_image]),
        plane_angles=[0.0, 30.0],
        laterality="L",
        synthetic=True,
        provenance={"seed": 3},
    )
    items = [
        {"image": str(write_bscan_png(tmp_path / "a.png", real_image)), "label": 0},
        {"image": str(dcm), "frame": 1, "label": 1},
        {
            "image": str(write_nifti_bscan(tmp_path / "c.nii.gz", real_image, (0.0039, 0.0117))),
            "frame": None,
            "label": 2,
        },
    ]
    loader = LoadOCTImaged(keys="image")
    loaded = [loader(item) for item in items]
    assert loaded[1]["frame"] == 1 and loaded[1]["label"] == 1  # other keys untouched
    np.testing.assert_array_equal(loaded[1]["image"][0].numpy(), (255 - real_image).astype(np.float32))
    assert loaded[1]["image"].meta["plane_angle"] == pytest.approx(30.0, abs=0.01)
    assert loaded[1]["image"].meta["laterality"] == "L" and loaded[1]["image"].meta["synthetic"] is True
    batch = list_data_collate(loaded)
    assert tuple(batch["image"].shape) == (3, 1, *real_image.shape)
    meta = batch["image"].meta
    assert meta["format"] == ["png", "dicom", "nifti"]
    assert np.isnan(float(meta["plane_angle"][0])) and float(meta["plane_angle"][1]) == pytest.approx(30.0, abs=0.01)
    assert meta["provenance"] == ["", '{"seed": 3}', ""]
    assert LoadOCTImaged(keys=["image", "mask"], allow_missing_keys=True)(items[0])["image"].shape[0] == 1
    with pytest.raises(KeyError):
        LoadOCTImaged(keys=["image", "mask"])(items[0])


def test_png_provenance_and_writer_checks(tmp_path: Path, real_image: np.ndarray) -> None:
    provenance = {"model_sha256": "cd" * 32, "class": "benign", "seed": 7}
    path = write_bscan_png(tmp_path / "synthetic_0001.png", real_image, provenance=provenance)
    image, meta = read_bscan(path)
    np.testing.assert_array_equal(image, real_image)
    assert meta["synthetic"] is True and meta["provenance"] == provenance
    assert write_bscan_png(tmp_path / "chw.png", real_image[None]).exists()  # (1, H, W) is accepted
    with pytest.raises(TypeError):
        write_bscan_png(tmp_path / "f.png", real_image.astype(np.float32))
    with pytest.raises(ValueError):
        write_bscan_tiff(tmp_path / "rgb.tif", np.stack([real_image] * 3, axis=-1))
    with pytest.raises(ValueError):
        write_nifti_bscan(tmp_path / "x.nii", real_image, pixel_spacing=(0.0, 0.01))


def test_manifest_sizes_cover_sample(oct2017_dir: Path) -> None:
    """Real B-scans of every width in the sample decode to their manifest size as 8-bit grayscale."""
    with open(oct2017_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = rows[::23] + [r for r in rows if r["width"] not in ("512", "768")]  # spread + the rare widths
    for row in picked:
        info = probe_image(oct2017_dir / row["file"])
        assert info["shape"] == (1, int(row["height"]), int(row["width"])) and info["dtype"] == "uint8"
    assert len({row["width"] for row in picked}) >= 3


def test_gzip_nifti_with_scaling_is_float(tmp_path: Path, real_image: np.ndarray) -> None:
    nii = nib.Nifti1Image(np.ascontiguousarray(real_image.T.astype(np.int16)), np.eye(4))
    nii.header.set_slope_inter(0.5, 0.0)
    nib.save(nii, str(tmp_path / "scaled.nii.gz"))
    image, meta = read_bscan(tmp_path / "scaled.nii.gz")
    assert image.dtype == np.float32 and meta["bit_depth"] == 0
    np.testing.assert_allclose(image, real_image * 0.5)
    with gzip.open(tmp_path / "scaled.nii.gz") as f:
        assert len(f.read()) > real_image.size  # really written gzip-compressed

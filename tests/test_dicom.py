"""DICOM Ophthalmic Tomography: write-then-read round trips, MONAI reader/writer, tags, bad files, folders."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import LoadImage
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medicraft_monai.data.dicom import (
    OPT_SOP_CLASS_UID,
    OphthalmicTomographyReader,
    OphthalmicTomographyWriter,
    angle_from_reference_coordinates,
    dicom_folder_items,
    read_oct_dicom,
    write_oct_dicom,
)
from medicraft_monai.data.errors import (
    CorruptImageError,
    DataProblems,
    EmptyDatasetError,
    UnsupportedFormatError,
)
from medicraft_monai.data.io import LoadOCTImage, probe_image, read_bscan

RADIAL = [30.0 * i for i in range(12)]
PROVENANCE = {"model_sha256": "ab" * 32, "class": "melanoma", "seed": 1234, "steps": 50, "guidance": 2.5}


def _angle_error(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


@pytest.fixture(scope="module")
def real_frames(real_bscan_paths: list[Path]) -> np.ndarray:
    """12 real B-scans of one size (496 x 512), cycling through the 512-wide real images."""
    same = [np.asarray(Image.open(p)) for p in real_bscan_paths]
    same = [a for a in same if a.shape == (496, 512)]
    assert len(same) >= 6
    return np.stack([same[i % len(same)] for i in range(12)])


@pytest.mark.parametrize("bits", [8, 16])
def test_round_trip_keeps_pixels_and_metadata(tmp_path: Path, real_frames: np.ndarray, bits: int) -> None:
    frames = (
        real_frames
        if bits == 8
        else real_frames.astype(np.uint16) * 257 + np.arange(12, dtype=np.uint16)[:, None, None]
    )
    path = write_oct_dicom(
        tmp_path / "exam.dcm",
        frames,
        plane_angles=RADIAL,
        laterality="OS",
        pixel_spacing=(0.0039, 0.0113),
        patient_id="P-0042",
        synthetic=True,
        provenance=PROVENANCE,
    )
    pixels, meta = read_oct_dicom(path)
    assert pixels.dtype == frames.dtype and pixels.shape == (12, 496, 512)
    np.testing.assert_array_equal(pixels, frames)
    assert meta["laterality"] == "L"
    assert meta["pixel_spacing"] == pytest.approx((0.0039, 0.0113))
    assert len(meta["plane_angles"]) == 12
    for got, want in zip(meta["plane_angles"], RADIAL):
        assert _angle_error(got, want) < 0.01
    assert meta["patient_id"] == "P-0042"
    assert meta["synthetic"] is True
    assert meta["provenance"] == PROVENANCE
    assert meta["bit_depth"] == bits
    # the per-frame reader view agrees
    frame7, meta7 = read_bscan(path, frame=7)
    np.testing.assert_array_equal(frame7, frames[7])
    assert _angle_error(meta7["plane_angle"], 210.0) < 0.01
    assert meta7["frame"] == 7 and meta7["num_frames"] == 12


def test_unknown_geometry_round_trips_as_none(tmp_path: Path, real_frames: np.ndarray) -> None:
    path = write_oct_dicom(tmp_path / "plain.dcm", real_frames[:3], pixel_spacing=None)
    _, meta = read_oct_dicom(path)
    assert meta["plane_angles"] == [None, None, None]
    assert meta["pixel_spacing"] is None
    assert meta["laterality"] == ""
    assert meta["synthetic"] is False and meta["provenance"] is None


def test_pydicom_reads_back_the_tags(tmp_path: Path, real_frames: np.ndarray) -> None:
    syn = write_oct_dicom(
        tmp_path / "syn.dcm",
        real_frames[:4],
        plane_angles=[0, 90, 180, 270],
        laterality="R",
        synthetic=True,
        provenance=PROVENANCE,
        series_description="phantom melanoma",
    )
    ds = pydicom.dcmread(syn)
    assert ds.SOPClassUID == OPT_SOP_CLASS_UID == pydicom.uid.OphthalmicTomographyImageStorage
    assert ds.file_meta.MediaStorageSOPClassUID == OPT_SOP_CLASS_UID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "OPT"
    assert int(ds.NumberOfFrames) == 4 and (ds.Rows, ds.Columns) == (496, 512)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SeriesDescription.startswith("SYNTHETIC") and "phantom melanoma" in ds.SeriesDescription
    assert ds.BurnedInAnnotation == "NO"
    assert str(ds.PatientName) == "SYNTHETIC"
    assert ds.PatientID.startswith("SYN-")
    assert not ds.get("PatientBirthDate")
    assert ds.ImageLaterality == "R"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8, 8, 7)
    assert json.loads(ds.ImageComments)["medicraft_provenance"] == PROVENANCE
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx([0.0039, 0.0117])
    assert shared.FrameAnatomySequence[0].FrameLaterality == "R"
    # ReferenceCoordinates are (row, column) pairs on the nominal SLO; rows point down.
    loc0 = ds.PerFrameFunctionalGroupsSequence[0].OphthalmicFrameLocationSequence[0]
    loc90 = ds.PerFrameFunctionalGroupsSequence[1].OphthalmicFrameLocationSequence[0]
    r0, c0, r1, c1 = (float(v) for v in loc0.ReferenceCoordinates)
    assert r0 == pytest.approx(r1) and c1 > c0  # 0 degrees: left to right on one row
    r0, c0, r1, c1 = (float(v) for v in loc90.ReferenceCoordinates)
    assert c0 == pytest.approx(c1) and r1 < r0  # 90 degrees: upwards, i.e. to smaller rows
    assert loc0.ReferencedSOPInstanceUID == loc90.ReferencedSOPInstanceUID
    assert [
        float(v) for v in ds.PerFrameFunctionalGroupsSequence[1].PlaneOrientationSequence[0].ImageOrientationPatient
    ] == pytest.approx([0, 0, 1, 0, 1, 0], abs=1e-9)
    content = ds.PerFrameFunctionalGroupsSequence[3].FrameContentSequence[0]
    assert content.InStackPositionNumber == 4 and list(content.DimensionIndexValues) == [1, 4]

    real = pydicom.dcmread(write_oct_dicom(tmp_path / "real.dcm", real_frames[:1], patient_name="Doe^Jane"))
    assert str(real.PatientName) == "Doe^Jane" and real.PatientID == "ANONYMOUS"
    assert not real.SeriesDescription.startswith("SYNTHETIC") and "ImageComments" not in real
    assert real.ImageLaterality == "U"


def test_angle_convention_from_reference_coordinates() -> None:
    # (row, column) pairs: right = 0, up (smaller row) = 90, left = 180, down = 270
    assert angle_from_reference_coordinates([100, 50, 100, 300]) == pytest.approx(0.0)
    assert angle_from_reference_coordinates([300, 100, 50, 100]) == pytest.approx(90.0)
    assert angle_from_reference_coordinates([100, 300, 100, 50]) == pytest.approx(180.0)
    assert angle_from_reference_coordinates([50, 100, 300, 100]) == pytest.approx(270.0)
    assert angle_from_reference_coordinates([200, 100, 150, 150, 100, 200]) == pytest.approx(45.0)
    with pytest.raises(ValueError):
        angle_from_reference_coordinates([1.0, 2.0])


def test_load_image_with_the_reader(tmp_path: Path, real_frames: np.ndarray) -> None:
    path = write_oct_dicom(tmp_path / "exam.dcm", real_frames, plane_angles=RADIAL, laterality="L")
    reader = OphthalmicTomographyReader()
    assert reader.verify_suffix(path) and not reader.verify_suffix(tmp_path / "x.png")
    img = LoadImage(reader=reader, image_only=True)(path)
    assert tuple(img.shape) == (12, 496, 512) and img.dtype == torch.float32
    np.testing.assert_array_equal(img.numpy(), real_frames.astype(np.float32))
    assert img.meta["laterality"] == "L" and img.meta["num_frames"] == 12
    assert [round(a, 2) % 360 for a in img.meta["plane_angles"]] == RADIAL
    assert torch.allclose(torch.diag(img.affine).float(), torch.tensor([0.0039, 0.0117, 1.0]))
    assert img.meta["provenance"] == "" and img.meta["synthetic"] is False
    # channel-first frames: ensure_channel_first leaves them alone
    assert tuple(LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(path).shape) == (12, 496, 512)
    # a one-frame file is the project's (1, H, W) B-scan, identical to LoadOCTImage
    one = write_oct_dicom(tmp_path / "one.dcm", real_frames[5], plane_angles=[60.0])
    a = LoadImage(reader=reader, image_only=True)(one)
    b = LoadOCTImage()(one)
    assert tuple(a.shape) == tuple(b.shape) == (1, 496, 512)
    assert torch.equal(a.as_tensor(), b.as_tensor())
    assert b.meta["plane_angle"] == pytest.approx(60.0, abs=0.01)
    # collate-safe metadata: a file without angles batches with one that has them
    two = list_data_collate(
        [{"image": LoadOCTImage()(one)}, {"image": LoadOCTImage()(write_oct_dicom(tmp_path / "n.dcm", real_frames[0]))}]
    )
    assert tuple(two["image"].shape) == (2, 1, 496, 512)
    assert np.isnan(float(two["image"].meta["plane_angle"][1]))


def test_writer_class_round_trips_a_loaded_bscan(tmp_path: Path, real_frames: np.ndarray) -> None:
    src = write_oct_dicom(
        tmp_path / "src.dcm",
        real_frames[2],
        plane_angles=[120.0],
        laterality="R",
        pixel_spacing=(0.004, 0.012),
        synthetic=True,
        provenance=PROVENANCE,
        patient_id="SYN-7",
    )
    img = LoadOCTImage()(src)
    writer = OphthalmicTomographyWriter()
    writer.set_data_array(img)
    writer.set_metadata(img.meta)
    out = writer.write(tmp_path / "copy.dcm")
    pixels, meta = read_oct_dicom(out)
    assert pixels.dtype == np.uint8  # float values of an 8-bit image are written back as 8-bit
    np.testing.assert_array_equal(pixels[0], real_frames[2])
    assert meta["laterality"] == "R" and meta["pixel_spacing"] == pytest.approx((0.004, 0.012))
    assert _angle_error(meta["plane_angles"][0], 120.0) < 0.01
    assert meta["synthetic"] and meta["provenance"] == PROVENANCE and meta["patient_id"] == "SYN-7"


def test_float_frames_rule_and_writer_guards(tmp_path: Path) -> None:
    x = np.linspace(0.0, 1.0, 2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    pixels, meta = read_oct_dicom(write_oct_dicom(tmp_path / "f.dcm", x))
    assert pixels.dtype == np.uint16 and meta["bit_depth"] == 16
    np.testing.assert_array_equal(pixels, np.round(x * 65535).astype(np.uint16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_oct_dicom(tmp_path / "bad.dcm", x * 2)
    with pytest.raises(ValueError, match="NaN"):
        write_oct_dicom(tmp_path / "bad.dcm", np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="patient name"):
        write_oct_dicom(tmp_path / "bad.dcm", x, synthetic=True, patient_name="Doe^John")
    with pytest.raises(ValueError, match="synthetic=True"):
        write_oct_dicom(tmp_path / "bad.dcm", x, provenance={"seed": 1})
    with pytest.raises(ValueError, match="plane angles"):
        write_oct_dicom(tmp_path / "bad.dcm", x, plane_angles=[0.0])
    assert not (tmp_path / "bad.dcm").exists()


def _save_other_sop_class(path: Path, sop_class: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientID = "X"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 1, 8, 8, 7
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.PixelData = bytes(16)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return path


def test_other_sop_class_is_rejected_with_its_name(tmp_path: Path) -> None:
    sc = _save_other_sop_class(tmp_path / "capture.dcm", SecondaryCaptureImageStorage)
    for call in (read_oct_dicom, probe_image, read_bscan, OphthalmicTomographyReader().read):
        with pytest.raises(UnsupportedFormatError) as err:
            call(sc)
        assert SecondaryCaptureImageStorage in str(err.value) and "capture.dcm" in str(err.value)
    ct = _save_other_sop_class(tmp_path / "ct", pydicom.uid.CTImageStorage)  # extension-less
    with pytest.raises(UnsupportedFormatError, match="CT Image Storage"):
        probe_image(ct)


def test_truncated_empty_and_non_dicom_files(tmp_path: Path, real_frames: np.ndarray) -> None:
    good = write_oct_dicom(tmp_path / "good.dcm", real_frames[:2], plane_angles=[0.0, 30.0])
    data = good.read_bytes()
    for name, content in {
        "half.dcm": data[: len(data) // 2],
        "header_only.dcm": data[:700],
        "empty.dcm": b"",
        "text.dcm": b"this is not DICOM at all\n" * 20,
    }.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CorruptImageError) as err:
            read_oct_dicom(tmp_path / name)
        assert name in str(err.value)
        with pytest.raises(CorruptImageError):
            probe_image(tmp_path / name)
    with pytest.raises(CorruptImageError, match="empty"):
        read_oct_dicom(tmp_path / "empty.dcm")
    with pytest.raises(CorruptImageError, match="truncated"):
        read_oct_dicom(tmp_path / "half.dcm")


def test_dicom_folder_items(tmp_path: Path, real_frames: np.ndarray) -> None:
    folder = tmp_path / "dicom"
    (folder / "sub").mkdir(parents=True)
    study = generate_uid()
    write_oct_dicom(
        folder / "a.dcm", real_frames, plane_angles=RADIAL, laterality="R", patient_id="P1", study_instance_uid=study
    )
    write_oct_dicom(
        folder / "sub" / "IM0001",
        real_frames[:2],
        plane_angles=[0.0, 90.0],
        laterality="L",
        patient_id="P1",
        study_instance_uid=study,
    )
    syn = write_oct_dicom(folder / "sub" / "syn.dcm", real_frames[:1], synthetic=True, provenance=PROVENANCE)
    data = syn.read_bytes()
    (folder / "sub" / "broken.dcm").write_bytes(data[: len(data) // 3])
    _save_other_sop_class(folder / "ct.dcm", pydicom.uid.CTImageStorage)
    (folder / "README.txt").write_text("not an image")

    with pytest.warns(UserWarning) as record:
        items = dicom_folder_items(folder)
    messages = [str(w.message) for w in record]
    assert any("broken.dcm" in m for m in messages) and any("ct.dcm" in m for m in messages)
    assert len(items) == 12 + 2 + 1
    a = [i for i in items if i["image"].endswith("a.dcm")]
    assert [i["frame"] for i in a] == list(range(12))
    assert all(_angle_error(i["plane_angle"], w) < 0.01 for i, w in zip(a, RADIAL))
    assert {i["exam_id"] for i in items if i["patient_id"] == "P1"} == {f"{study}_R", f"{study}_L"}
    assert all(Path(i["image"]).is_absolute() for i in items)
    (s,) = [i for i in items if i["synthetic"]]
    assert s["plane_angle"] is None and s["patient_id"].startswith("SYN-")
    assert set(a[0]) >= {
        "image",
        "frame",
        "patient_id",
        "exam_id",
        "plane_angle",
        "laterality",
        "synthetic",
        "study_uid",
        "series_uid",
    }
    # every item loads
    img = LoadOCTImage()(items[13]["image"], items[13]["frame"])
    np.testing.assert_array_equal(img[0].numpy(), real_frames[1])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items2, problems = dicom_folder_items(folder, return_problems=True)
    assert items2 == items
    assert sorted(type(p).__name__ for p in problems) == ["CorruptImageError", "UnsupportedFormatError"]

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(folder / "sub" / "broken.dcm", only_bad / "broken.dcm")
    (only_bad / "zero.dcm").write_bytes(b"")
    with pytest.raises(DataProblems) as err:
        dicom_folder_items(only_bad)
    assert len(err.value.problems) == 2 and "broken.dcm" in str(err.value) and "zero.dcm" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(EmptyDatasetError, match="no DICOM files"):
        dicom_folder_items(empty)
    with pytest.raises(EmptyDatasetError, match="not a folder"):
        dicom_folder_items(tmp_path / "missing")

"""LateralityFlip / RandLateralityFlip and OCTResize, on real B-scans, the phantom and synthetic arrays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.transforms import Compose

from medicraft_monai.data.io import LoadOCTImage, LoadOCTImaged
from medicraft_monai.data.phantom import OCTPhantom
from medicraft_monai.transforms import (
    FlattenRetinad,
    LateralityFlip,
    LateralityFlipd,
    OCTResize,
    OCTResized,
    RandLateralityFlip,
    RandLateralityFlipd,
    RetinaCropd,
    ScaleOCTIntensityd,
    flip_plane_angle,
    get_flatten_shifts,
    swap_laterality,
)


def _bscan(laterality: str = "R", angle: float = 30.0, h: int = 12, w: int = 20) -> MetaTensor:
    data = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)
    meta = {"laterality": laterality, "plane_angle": angle, "pixel_spacing": (0.0039, 0.0117), "bit_depth": 8}
    return MetaTensor(data, meta=meta)


# ----------------------------------------------------------------------------------------------------------
# laterality flip
# ----------------------------------------------------------------------------------------------------------


def test_plane_angle_and_laterality_helpers() -> None:
    assert [flip_plane_angle(a) for a in (0.0, 30.0, 90.0, 180.0, 330.0)] == [0.0, 330.0, 270.0, 180.0, 30.0]
    assert math.isnan(flip_plane_angle(float("nan"))) and flip_plane_angle(None) is None
    np.testing.assert_allclose(flip_plane_angle(np.arange(0, 360, 30.0)), (-np.arange(0, 360, 30.0)) % 360)
    assert flip_plane_angle([30.0, 60.0]) == [330.0, 300.0]
    torch.testing.assert_close(flip_plane_angle(torch.tensor([30.0, 0.0])), torch.tensor([330.0, 0.0]))
    assert swap_laterality("OD") == "L" and swap_laterality("left") == "R" and swap_laterality("") == ""


def test_flip_pixels_meta_and_twice_is_identity(real_bscan_paths: list[Path]) -> None:
    img = LoadOCTImage()(real_bscan_paths[0])
    img.meta["laterality"], img.meta["plane_angle"] = "R", 30.0
    flip = LateralityFlip()
    once = flip(img)
    torch.testing.assert_close(once.as_tensor(), torch.flip(img.as_tensor(), dims=[-1]))
    assert once.meta["laterality"] == "L" and once.meta["plane_angle"] == 330.0
    assert img.meta["laterality"] == "R" and img.meta["plane_angle"] == 30.0 and not img.applied_operations
    twice = flip(once)
    torch.testing.assert_close(twice.as_tensor(), img.as_tensor())
    assert twice.meta["laterality"] == "R" and twice.meta["plane_angle"] == 30.0
    torch.testing.assert_close(twice.affine, img.affine)
    # inverse (undo the record) gives the original too
    back = flip.inverse(once)
    torch.testing.assert_close(back.as_tensor(), img.as_tensor())
    assert back.meta["laterality"] == "R" and back.meta["plane_angle"] == 30.0 and not back.applied_operations
    # unknown laterality / plane angle stay unknown
    unknown = LateralityFlip()(LoadOCTImage()(real_bscan_paths[1]))
    assert unknown.meta["laterality"] == "" and math.isnan(float(unknown.meta["plane_angle"]))
    # plain arrays: pixels only
    arr = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    np.testing.assert_array_equal(LateralityFlip()(arr), arr[..., ::-1])


def test_flip_matches_the_fellow_eye_on_the_phantom() -> None:
    """The angle convention, checked on anatomy: a flipped right eye at angle a shows the optic nerve head where a
    left eye at (-a) mod 360 shows it (and a right eye at 0 has it at the right end)."""
    phantom = OCTPhantom()
    w = phantom.config.width
    for angle in (0.0, 180.0):
        img_r, truth_r = phantom.generate_bscan(4, "healthy", angle, laterality="R")
        flipped = LateralityFlip()(
            MetaTensor(torch.from_numpy(img_r)[None], meta={"laterality": "R", "plane_angle": angle})
        )
        assert flipped.meta["laterality"] == "L"
        _, truth_l = phantom.generate_bscan(4, "healthy", flipped.meta["plane_angle"], laterality="L")
        assert truth_r.onh_columns is not None and truth_l.onh_columns is not None
        mirrored = (w - 1 - truth_r.onh_columns[1], w - 1 - truth_r.onh_columns[0])
        assert abs(mirrored[0] - truth_l.onh_columns[0]) <= 3 and abs(mirrored[1] - truth_l.onh_columns[1]) <= 3
        if angle == 0.0:
            assert truth_r.onh_columns[0] > w // 2 and truth_l.onh_columns[1] < w // 2


def test_canonicalise_to_right_eye() -> None:
    to_r = LateralityFlip(to_laterality="OD")
    right, left = _bscan("R", 60.0), _bscan("L", 60.0)
    same = to_r(right)
    torch.testing.assert_close(same.as_tensor(), right.as_tensor())
    assert same.meta["laterality"] == "R" and same.meta["plane_angle"] == 60.0
    flipped = to_r(left)
    torch.testing.assert_close(flipped.as_tensor(), torch.flip(left.as_tensor(), dims=[-1]))
    assert flipped.meta["laterality"] == "R" and flipped.meta["plane_angle"] == 300.0
    torch.testing.assert_close(to_r.inverse(flipped).as_tensor(), left.as_tensor())
    torch.testing.assert_close(to_r.inverse(same).as_tensor(), right.as_tensor())
    with pytest.raises(ValueError, match="unknown laterality"):
        to_r(_bscan(""))
    with pytest.raises(ValueError):
        to_r(np.zeros((1, 2, 2)))  # no metadata, no laterality argument
    np.testing.assert_array_equal(to_r(np.eye(3)[None], laterality="L"), np.eye(3)[None][..., ::-1])
    with pytest.raises(ValueError):
        LateralityFlip(to_laterality="")


def test_random_flip_seeded_and_invertible() -> None:
    img = _bscan("L", 90.0)
    flips = []
    for seed in range(40):
        out = RandLateralityFlip(prob=0.5).set_random_state(seed=seed)(img)
        flipped = out.meta["laterality"] == "R"
        flips.append(flipped)
        expected = torch.flip(img.as_tensor(), dims=[-1]) if flipped else img.as_tensor()
        torch.testing.assert_close(out.as_tensor(), expected)
        assert out.meta["plane_angle"] == (270.0 if flipped else 90.0)
    assert 8 < sum(flips) < 32
    a = [RandLateralityFlip(0.5).set_random_state(seed=11)(img).meta["laterality"] for _ in range(3)]
    b = [RandLateralityFlip(0.5).set_random_state(seed=11)(img).meta["laterality"] for _ in range(3)]
    assert a == b
    always = RandLateralityFlip(prob=1.0)
    out = always(img)
    back = always.inverse(out)
    torch.testing.assert_close(back.as_tensor(), img.as_tensor())
    assert back.meta["laterality"] == "L" and back.meta["plane_angle"] == 90.0
    assert RandLateralityFlip(prob=0.0)(img).meta["laterality"] == "L"


def test_flip_dict_updates_item_keys() -> None:
    item = {"image": _bscan("R", 120.0), "mask": _bscan("R", 120.0), "laterality": "R", "plane_angle": 120.0}
    xform = LateralityFlipd(keys=["image", "mask"])
    out = xform(item)
    assert out["laterality"] == "L" and out["plane_angle"] == 240.0
    assert out["image"].meta["laterality"] == "L" and out["mask"].meta["plane_angle"] == 240.0
    back = xform.inverse(out)
    assert back["laterality"] == "R" and back["plane_angle"] == 120.0
    torch.testing.assert_close(back["image"].as_tensor(), item["image"].as_tensor())
    # canonicalisation decided by the item's laterality when the image metadata does not know it
    item2 = {"image": _bscan("", 30.0), "laterality": "OS", "plane_angle": 30.0}
    out2 = LateralityFlipd(keys="image", to_laterality="R")(item2)
    assert out2["laterality"] == "R" and out2["plane_angle"] == 330.0
    with pytest.raises(ValueError, match="says"):
        LateralityFlipd(keys="image", to_laterality="R")({"image": _bscan("R"), "laterality": "L"})
    with pytest.raises(ValueError, match="unknown laterality"):
        LateralityFlipd(keys="image", to_laterality="R")({"image": _bscan("")})
    rand = RandLateralityFlipd(keys=["image", "mask"], prob=1.0).set_random_state(seed=0)
    out3 = rand(item)
    assert out3["laterality"] == "L" and out3["image"].meta["laterality"] == "L"
    assert rand.inverse(out3)["plane_angle"] == 120.0
    none = RandLateralityFlipd(keys="image", prob=0.0)(item)
    assert none["laterality"] == "R"


# ----------------------------------------------------------------------------------------------------------
# OCTResize
# ----------------------------------------------------------------------------------------------------------


def test_resize_fit_keeps_aspect_and_pads(real_bscan_paths: list[Path]) -> None:
    wide = next(p for p in real_bscan_paths if LoadOCTImage()(p).shape[-1] == 768)
    img = LoadOCTImage()(wide)
    img.meta["pixel_spacing"] = (0.0039, 0.0117)
    resize = OCTResize(spatial_size=(128, 256))
    out = resize(img)
    assert out.shape == (1, 128, 256)
    # 496 x 768 -> scale 128 / 496: content 128 x 198, padded with 29 zero columns on each side
    content = out[0].numpy()
    assert np.abs(content[:, :29]).sum() == 0 and np.abs(content[:, -29:]).sum() == 0
    content_cols = int((np.abs(content).sum(axis=0) > 0).sum())
    assert content_cols == 198 and (np.abs(content[:, 29:-29]).sum(axis=0) > 0).all()
    assert content_cols / 128 == pytest.approx(768 / 496, rel=0.01)  # aspect kept
    row, col = out.meta["pixel_spacing"]
    assert row == pytest.approx(0.0039 * 496 / 128) and col == pytest.approx(0.0117 * 768 / 198)
    # the mean brightness of the content is preserved by the (anti-aliased) resampling
    assert content[:, 29:-29].mean() == pytest.approx(float(img.mean()), rel=0.02)
    back = resize.inverse(out)
    assert back.shape == img.shape and back.meta["pixel_spacing"] == pytest.approx((0.0039, 0.0117))
    assert not back.applied_operations
    assert np.corrcoef(back[0].numpy().ravel(), img[0].numpy().ravel())[0, 1] > 0.8


def test_resize_stretch_and_tall_input_and_unknown_spacing() -> None:
    img = MetaTensor(torch.rand(1, 496, 512), meta={"pixel_spacing": (float("nan"), float("nan"))})
    out = OCTResize((128, 256), mode="stretch")(img)
    assert out.shape == (1, 128, 256)
    assert all(math.isnan(v) for v in out.meta["pixel_spacing"])
    tall = np.random.default_rng(0).random((1, 400, 100)).astype(np.float32)
    out = OCTResize((128, 256))(tall)  # fit by height: 128 x 32, padded to 256 columns
    assert isinstance(out, np.ndarray) and out.shape == (1, 128, 256)
    assert (np.abs(out[0]).sum(axis=0) > 0).sum() == 32
    same = MetaTensor(torch.rand(1, 128, 256))
    out = OCTResize((128, 256))(same)
    torch.testing.assert_close(out.as_tensor(), same.as_tensor())
    assert not same.applied_operations  # recorded on a copy, not on the caller's tensor
    with pytest.raises(ValueError):
        OCTResize((128,))
    with pytest.raises(ValueError, match="'fit', 'stretch' or 'crop'"):
        OCTResize(mode="letterbox")


def test_resize_crop_gives_every_scan_width_the_same_field_of_view(real_bscan_paths: list[Path]) -> None:
    """Spectralis 768- and 512-wide scans (after a 256-row retina crop) both fill a 128 x 256 output with no bars:
    the wide one loses 128 columns at each lateral end, the other is only resampled; the inverse puts the content
    back where it was, the cut ends as zeros."""
    wide = next(p for p in real_bscan_paths if LoadOCTImage()(p).shape[-1] == 768)
    narrow = next(p for p in real_bscan_paths if LoadOCTImage()(p).shape[-1] == 512)
    resize = OCTResize(spatial_size=(128, 256), mode="crop")
    for path, cut in ((wide, 128), (narrow, 0)):
        img = RetinaCropd(keys="image", height=256)(
            {"image": ScaleOCTIntensityd(keys="image")({"image": LoadOCTImage()(path)})["image"]}
        )["image"]
        img.meta["pixel_spacing"] = (0.0039, 0.0117)
        assert resize.crop_box(img.shape) == ((0, 0), (cut, cut))
        out = resize(img)
        assert out.shape == (1, 128, 256)
        assert (np.abs(out[0].numpy()).sum(axis=0) > 0).all()  # no padding column
        # one scale factor for both axes: 256 rows -> 128, (W - 2 * cut) columns -> 256
        row, col = out.meta["pixel_spacing"]
        assert row == pytest.approx(0.0039 * 2) and col == pytest.approx(0.0117 * (img.shape[-1] - 2 * cut) / 256)
        # the output is the centre of the scan: it matches a stretch-resize of the same centre crop
        centre = img[:, :, cut : img.shape[-1] - cut]
        ref = OCTResize((128, 256), mode="stretch")(centre)
        torch.testing.assert_close(out.as_tensor(), ref.as_tensor(), atol=1e-5, rtol=0)
        back = resize.inverse(out)
        assert back.shape == img.shape and len(back.applied_operations) == len(img.applied_operations)
        assert back.meta["pixel_spacing"] == pytest.approx((0.0039, 0.0117))
        if cut:
            assert float(back[..., :cut].abs().sum()) == 0 and float(back[..., -cut:].abs().sum()) == 0
        inner = back[0, :, cut : img.shape[-1] - cut].numpy().ravel()
        assert np.corrcoef(inner, centre[0].numpy().ravel())[0, 1] > 0.8
    tall = OCTResize((128, 256), mode="crop")
    assert tall.crop_box((1, 496, 512)) == ((120, 120), (0, 0))  # a taller scan loses rows at top and bottom


def test_resize_dict_mask_nearest() -> None:
    r = np.arange(496)[:, None]
    mask = ((r > 200) & (r < 300)).astype(np.float32) * np.ones((1, 768), np.float32)
    item = {"image": MetaTensor(torch.rand(1, 496, 768)), "mask": MetaTensor(torch.from_numpy(mask)[None])}
    xform = OCTResized(keys=["image", "mask"], spatial_size=(128, 256), interp_mode=["bilinear", "nearest"])
    out = xform(item)
    assert out["image"].shape == out["mask"].shape == (1, 128, 256)
    assert set(np.unique(out["mask"].numpy())) == {0.0, 1.0}
    back = xform.inverse(out)
    assert back["mask"].shape == (1, 496, 768) and set(np.unique(back["mask"].numpy())) <= {0.0, 1.0}


def test_real_pipeline_batches_mixed_widths(real_bscan_paths: list[Path]) -> None:
    """Load -> scale -> crop -> flatten -> flip -> resize on real scans of different widths, then batch them:
    the metadata stays collatable and the batch decollates and inverts."""
    widths = {}
    for p in real_bscan_paths:
        widths.setdefault(LoadOCTImage()(p).shape[-1], p)
    assert len(widths) >= 2
    pipeline = Compose(
        [
            LoadOCTImaged(keys="image"),
            ScaleOCTIntensityd(keys="image"),
            RetinaCropd(keys="image", height=256),
            FlattenRetinad(keys="image"),
            RandLateralityFlipd(keys="image", prob=0.5),
            OCTResized(keys="image", spatial_size=(128, 256)),
        ]
    ).set_random_state(seed=0)
    items = [pipeline({"image": str(p), "laterality": "R", "plane_angle": 30.0}) for p in widths.values()]
    batch = list_data_collate(items)
    assert batch["image"].shape == (len(items), 1, 128, 256)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    for item in decollate_batch(batch):
        assert get_flatten_shifts(item["image"]).shape[0] in widths
        restored = pipeline.inverse(item)
        assert restored["image"].shape[-1] in widths and restored["image"].shape[-2] == 496

"""ScaleOCTIntensity and RandOCTSpeckleNoise: known truth on synthetic data, and real B-scans."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from medicraft_monai.data.io import LoadOCTImage
from medicraft_monai.transforms import (
    SCALED_KEY,
    RandOCTSpeckleNoise,
    RandOCTSpeckleNoised,
    ScaleOCTIntensity,
    ScaleOCTIntensityd,
)

# ----------------------------------------------------------------------------------------------------------
# ScaleOCTIntensity
# ----------------------------------------------------------------------------------------------------------


def test_scale_real_8bit_auto_from_loader(real_bscan_paths: list[Path]) -> None:
    loader = LoadOCTImage()
    for path in real_bscan_paths[:6]:
        img = loader(path)
        assert int(img.meta["bit_depth"]) == 8
        raw = img.as_tensor().clone()
        out = ScaleOCTIntensity()(img)
        assert isinstance(out, MetaTensor) and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        torch.testing.assert_close(out.as_tensor(), raw / 255.0)
        assert out.meta[SCALED_KEY] == "uint8" and SCALED_KEY not in img.meta  # input untouched
        assert out.meta["filename_or_obj"] == img.meta["filename_or_obj"]


def test_scale_auto_uses_dtype_without_meta_and_errors_when_it_cannot_tell() -> None:
    arr8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    out = ScaleOCTIntensity()(arr8)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, arr8 / 255.0, rtol=1e-6)
    arr16 = np.array([[[0, 1000, 65535]]], dtype=np.uint16)
    np.testing.assert_allclose(ScaleOCTIntensity()(arr16), arr16 / 65535.0, rtol=1e-6)
    with pytest.raises(ValueError, match="bit_depth"):
        ScaleOCTIntensity()(np.ones((1, 4, 4), np.float32))  # float without metadata: ambiguous
    with pytest.raises(ValueError, match="not 8, 16 or 0"):
        ScaleOCTIntensity()(MetaTensor(torch.ones(1, 4, 4), meta={"bit_depth": 12}))
    with pytest.raises(ValueError):
        ScaleOCTIntensity(mode="uint12")


def test_scale_16bit_from_meta_and_range_check() -> None:
    values = torch.tensor([[[0.0, 32768.0, 65535.0]]])
    out = ScaleOCTIntensity()(MetaTensor(values, meta={"bit_depth": 16}))
    torch.testing.assert_close(out.as_tensor(), values / 65535.0)
    # 16-bit data declared as 8-bit is caught, not clipped
    with pytest.raises(ValueError, match="outside"):
        ScaleOCTIntensity(mode="uint8")(values)
    with pytest.raises(ValueError, match="outside"):
        ScaleOCTIntensity(mode="uint16")(torch.tensor([[[-5.0, 3.0]]]))
    # the call argument overrides the metadata
    out = ScaleOCTIntensity()(MetaTensor(torch.tensor([[[255.0]]]), meta={"bit_depth": 16}), bit_depth=8)
    assert float(out) == pytest.approx(1.0)


@pytest.mark.parametrize("quantity,factor", [("amplitude", 20.0), ("intensity", 10.0)])
def test_scale_linear_log_compression_known_truth(quantity: str, factor: float) -> None:
    db = np.linspace(-80.0, 0.0, 161)
    linear = 3.7 * 10.0 ** (db / factor)  # reference 3.7 at 0 dB
    img = MetaTensor(torch.as_tensor(linear, dtype=torch.float64)[None, None], meta={"bit_depth": 0})
    out = ScaleOCTIntensity(dynamic_range_db=50.0, linear_quantity=quantity, reference=3.7)(img)
    expected = np.clip(1.0 + db / 50.0, 0.0, 1.0)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-5)
    assert out.dtype == torch.float32 and out.meta[SCALED_KEY] == "linear"
    # default reference: the image's 99.9th percentile, here the maximum of a ramp up to 3.7 -> 0 dB near the top
    auto = ScaleOCTIntensity(linear_quantity=quantity, reference_percentile=100.0)(img)
    np.testing.assert_allclose(auto[0, 0].numpy(), expected, atol=1e-5)


def test_scale_linear_negative_and_blank() -> None:
    out = ScaleOCTIntensity(mode="linear", reference=1.0)(np.array([[[-1.0, 0.0, 1.0]]], np.float32))
    np.testing.assert_allclose(out, [[[0.0, 0.0, 1.0]]])
    assert float(np.abs(ScaleOCTIntensity(mode="linear")(np.zeros((1, 3, 3), np.float32))).sum()) == 0.0


def test_scale_rejects_nan_and_double_scaling() -> None:
    bad = MetaTensor(torch.tensor([[[1.0, float("nan")]]]), meta={"bit_depth": 8})
    for mode in ("auto", "uint8", "uint16", "linear"):
        with pytest.raises(ValueError, match="NaN"):
            ScaleOCTIntensity(mode=mode)(bad)
    once = ScaleOCTIntensity()(MetaTensor(torch.full((1, 2, 2), 100.0), meta={"bit_depth": 8}))
    with pytest.raises(ValueError, match="already scaled"):
        ScaleOCTIntensity()(once)


def test_scale_dict(real_bscan_paths: list[Path]) -> None:
    img = LoadOCTImage()(real_bscan_paths[0])
    d = ScaleOCTIntensityd(keys="image")({"image": img, "label": 1})
    assert d["label"] == 1 and float(d["image"].max()) <= 1.0
    # the item's bit depth (e.g. from a datalist) decides in auto mode
    d = ScaleOCTIntensityd(keys="image", bit_depth_key="bits")({"image": torch.full((1, 2, 2), 300.0), "bits": 16})
    torch.testing.assert_close(d["image"], torch.full((1, 2, 2), 300.0 / 65535.0))


# ----------------------------------------------------------------------------------------------------------
# RandOCTSpeckleNoise
# ----------------------------------------------------------------------------------------------------------


def _multiplier(noise: RandOCTSpeckleNoise, before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
    """The linear multiplier the transform applied (linear domain after / before)."""
    return (noise.to_linear(torch.as_tensor(after)) / noise.to_linear(torch.as_tensor(before))).numpy().ravel()


@pytest.mark.parametrize("looks", [1.0, 4.0, 9.0])
def test_gamma_speckle_statistics(looks: float) -> None:
    flat = torch.full((1, 256, 256), 0.6)  # a flat region, far from the clipping limits
    noise = RandOCTSpeckleNoise(prob=1.0, distribution="gamma", looks=looks, dynamic_range_db=50.0)
    noise.set_random_state(seed=123)
    out = noise(flat)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    m = _multiplier(noise, flat, out)
    # in [0, 1]: 0.6 is 20 dB below the top; only multipliers above 100 (never, for these looks) would clip
    assert abs(m.mean() - 1.0) < 0.02
    contrast = m.std() / m.mean()
    assert contrast == pytest.approx(1.0 / math.sqrt(looks), rel=0.03)


def test_rayleigh_speckle_statistics() -> None:
    flat = torch.full((1, 256, 256), 0.6)
    noise = RandOCTSpeckleNoise(prob=1.0, distribution="rayleigh", dynamic_range_db=50.0)
    noise.set_random_state(seed=7)
    m = _multiplier(noise, flat, noise(flat))
    assert abs(m.mean() - 1.0) < 0.02
    assert m.std() / m.mean() == pytest.approx(math.sqrt(4.0 / math.pi - 1.0), rel=0.03)


def test_speckle_seeded_prob_and_looks_range() -> None:
    img = torch.rand(1, 64, 96)
    a = RandOCTSpeckleNoise(prob=1.0, looks=(2.0, 8.0)).set_random_state(seed=5)
    b = RandOCTSpeckleNoise(prob=1.0, looks=(2.0, 8.0)).set_random_state(seed=5)
    c = RandOCTSpeckleNoise(prob=1.0, looks=(2.0, 8.0)).set_random_state(seed=6)
    out_a, out_b, out_c = a(img), b(img), c(img)
    torch.testing.assert_close(out_a, out_b)
    assert not torch.allclose(out_a, out_c)
    assert 2.0 <= a.looks <= 8.0
    looks_seen = set()
    for _ in range(20):
        a(img)
        looks_seen.add(round(a.looks, 6))
    assert len(looks_seen) > 10 and min(looks_seen) >= 2.0 and max(looks_seen) <= 8.0
    never = RandOCTSpeckleNoise(prob=0.0).set_random_state(seed=1)
    assert never(img) is img
    arr = np.full((1, 8, 8), 0.5, np.float32)
    assert isinstance(RandOCTSpeckleNoise(prob=1.0).set_random_state(0)(arr), np.ndarray)
    with pytest.raises(ValueError, match="NaN"):
        RandOCTSpeckleNoise(prob=1.0)(torch.tensor([[[float("nan")]]]))
    with pytest.raises(ValueError):
        RandOCTSpeckleNoise(distribution="uniform")
    with pytest.raises(ValueError):
        RandOCTSpeckleNoise(looks=(4.0, 1.0))


def test_speckle_on_real_bscan_keeps_structure(real_bscan_paths: list[Path]) -> None:
    img = ScaleOCTIntensity()(LoadOCTImage()(real_bscan_paths[3]))
    noise = RandOCTSpeckleNoise(prob=1.0, looks=4.0, dynamic_range_db=45.0).set_random_state(seed=0)
    out = noise(img)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == img.meta["filename_or_obj"]
    assert out.shape == img.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    before, after = img[0].numpy(), out[0].numpy()
    assert np.abs(after - before).mean() > 0.01  # it does change the pixels
    # the anatomy survives: the smoothed images still correlate strongly
    sb, sa = ndimage.gaussian_filter(before, 4), ndimage.gaussian_filter(after, 4)
    assert np.corrcoef(sb.ravel(), sa.ravel())[0, 1] > 0.95


def test_speckle_dict_same_field_for_all_keys_and_seeded() -> None:
    img = torch.full((1, 32, 32), 0.5)
    xform = RandOCTSpeckleNoised(keys=["a", "b"], prob=1.0, looks=2.0).set_random_state(seed=3)
    d = xform({"a": img, "b": img.clone(), "label": 2})
    torch.testing.assert_close(d["a"], d["b"])
    assert d["label"] == 2 and not torch.allclose(d["a"], img)
    again = RandOCTSpeckleNoised(keys=["a", "b"], prob=1.0, looks=2.0).set_random_state(seed=3)
    torch.testing.assert_close(again({"a": img, "b": img})["a"], d["a"])
    skip = RandOCTSpeckleNoised(keys="a", prob=0.0)({"a": img})
    assert skip["a"] is img

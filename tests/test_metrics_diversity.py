"""Diversity (mean pairwise MS-SSIM) against cases with known answers and real OCT."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import MultiScaleSSIMMetric

from medicraft_monai.data.phantom import OCTPhantom, PhantomConfig
from medicraft_monai.metrics.diversity import (
    diversity_by_class,
    mean_pairwise_ms_ssim,
    ms_ssim_settings,
    sample_pairs,
)
from medicraft_monai.metrics.images import load_images

SIZE = (64, 128)


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.rand(12, 1, *SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def normal_oct(oct2017_dir: Path, oct2017_manifest: list[dict[str, str]]) -> torch.Tensor:
    rows = [r for r in oct2017_manifest if r["label"] == "NORMAL"][:10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, _ = load_images([str(oct2017_dir / r["file"]) for r in rows], SIZE, crop_height=256, progress=False)
    return images


def test_settings_fit_small_images_and_monai_accepts_them() -> None:
    expected = {(32, 64): 3, (64, 128): 4, (128, 256): 5, (496, 512): 5}
    for shape, scales in expected.items():
        s = ms_ssim_settings(shape)
        assert s["scales"] == scales and len(s["weights"]) == scales
        assert sum(s["weights"]) == pytest.approx(1.0)
        x = torch.rand(1, 1, *shape)
        metric = MultiScaleSSIMMetric(spatial_dims=2, kernel_size=s["kernel_size"], weights=s["weights"])
        assert float(metric(x, x).mean()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_settings((6, 6))


def test_sample_pairs_all_or_a_seeded_sample() -> None:
    all_pairs = sample_pairs(6, 100)
    assert len(all_pairs) == 15 and (all_pairs[:, 0] < all_pairs[:, 1]).all()
    some = sample_pairs(200, 50, seed=3)
    assert len(some) == 50 and len({tuple(p) for p in some.tolist()}) == 50
    assert (some[:, 0] < some[:, 1]).all() and some.max() < 200
    assert np.array_equal(some, sample_pairs(200, 50, seed=3))
    assert not np.array_equal(some, sample_pairs(200, 50, seed=4))
    assert sample_pairs(1, 10).shape == (0, 2)


def test_copies_noise_and_real_oct(noise: torch.Tensor, normal_oct: torch.Tensor) -> None:
    copies = mean_pairwise_ms_ssim(normal_oct[:1].repeat(6, 1, 1, 1), progress=False)
    assert copies["mean"] == pytest.approx(1.0, abs=1e-5) and copies["std"] == pytest.approx(0.0, abs=1e-5)
    assert copies["n_pairs"] == 15 and copies["scales"] == 4
    random = mean_pairwise_ms_ssim(noise, progress=False)
    real = mean_pairwise_ms_ssim(normal_oct, progress=False)
    assert random["mean"] < 0.2
    assert random["mean"] + 0.1 < real["mean"] < copies["mean"] - 0.2  # real variety sits clearly in between
    assert real["n_pairs"] == 45 and real["n_images"] == 10
    sampled = mean_pairwise_ms_ssim(normal_oct, max_pairs=20, seed=1, progress=False)
    assert sampled["n_pairs"] == 20 and abs(sampled["mean"] - real["mean"]) < 0.1


def test_phantom_collapse_is_detected() -> None:
    phantom = OCTPhantom(PhantomConfig(height=SIZE[0], width=SIZE[1]))
    varied = torch.stack([torch.from_numpy(phantom.generate_bscan(s, "healthy", 30.0 * s)[0])[None] for s in range(8)])
    collapsed = (varied[:1] + 0.01 * torch.randn(8, 1, *SIZE, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    v, c = (
        mean_pairwise_ms_ssim(varied, progress=False)["mean"],
        mean_pairwise_ms_ssim(collapsed, progress=False)["mean"],
    )
    assert c > 0.9 and c > v + 0.1


def test_diversity_by_class(noise: torch.Tensor, normal_oct: torch.Tensor) -> None:
    images = torch.cat([noise[:5], normal_oct[:1].repeat(4, 1, 1, 1), noise[5:6]])
    labels = ["noise"] * 5 + ["collapsed"] * 4 + ["single"]
    out = diversity_by_class(images, labels, max_pairs=100)
    assert list(out) == ["collapsed", "noise", "single"]
    assert out["collapsed"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert out["noise"]["mean"] < 0.2 and out["noise"]["n_pairs"] == 10
    assert out["single"] == {**out["single"], "mean": None, "std": None, "n_pairs": 0}
    json.dumps(out)
    by_int = diversity_by_class(images[:9], torch.tensor([0] * 5 + [1] * 4))
    assert set(by_int) == {"0", "1"} and by_int["0"]["mean"] == pytest.approx(out["noise"]["mean"])
    with pytest.raises(ValueError, match="labels"):
        diversity_by_class(images, labels[:3])

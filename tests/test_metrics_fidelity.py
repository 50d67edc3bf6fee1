"""Fidelity metrics against cases with known answers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from scipy import linalg

from medicraft_monai.metrics.fidelity import (
    density_coverage,
    fidelity_report,
    frechet_distance,
    kernel_inception_distance,
    nearest_real_ssim,
    prdc,
    precision_recall,
)
from medicraft_monai.metrics.images import load_images


def _gauss(n: int, d: int, seed: int, mean: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + mean


def test_identical_sets_give_zero_distance_and_full_prdc() -> None:
    x = _gauss(400, 6, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    kid, kid_std = kernel_inception_distance(x, x, num_subsets=5, subset_size=200)
    shifted = kernel_inception_distance(x, _gauss(400, 6, 1, mean=0.5), num_subsets=5, subset_size=200)[0]
    assert abs(kid) < 0.05 * shifted and kid_std >= 0.0  # ~0 on the kernel's scale (unbiased: may be < 0)
    same = kernel_inception_distance(x, _gauss(400, 6, 2), num_subsets=5, subset_size=200)  # same distribution
    assert abs(same[0]) < 0.05 * shifted
    out = prdc(x, x, k=5)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    assert out["density"] == pytest.approx(1.0)  # each point lies strictly inside exactly k balls (itself + k-1)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert density_coverage(x, x) == (pytest.approx(1.0), 1.0)


def test_frechet_distance_of_shifted_gaussians_matches_the_analytic_value() -> None:
    d, n = 4, 20000
    shift, scale = 0.5, 1.5
    real, fake = _gauss(n, d, 1), _gauss(n, d, 2, mean=shift, scale=scale)
    analytic = d * shift**2 + d * (1.0 + scale**2 - 2.0 * scale)  # ||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))
    got = frechet_distance(real, fake)
    assert got == pytest.approx(analytic, rel=0.05)
    # and exactly the formula on the sample moments (an independent implementation with scipy)
    r, f = real.numpy(), fake.numpy()
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    ref = np.sum((r.mean(0) - f.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert got == pytest.approx(ref, rel=1e-6)


def test_kid_matches_a_direct_unbiased_mmd_and_grows_with_the_shift() -> None:
    x, y = _gauss(12, 3, 3), _gauss(12, 3, 4, mean=0.3)

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a @ b / 3 + 1) ** 3)

    m = len(x)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=m)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-9) and std == pytest.approx(0.0, abs=1e-12)
    base = _gauss(500, 8, 5)
    near = kernel_inception_distance(base, _gauss(500, 8, 6, mean=0.2))[0]
    far = kernel_inception_distance(base, _gauss(500, 8, 7, mean=1.0))[0]
    assert 0.0 < near < far
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, y, subset_size=50)


def test_disjoint_sets_have_zero_precision_recall_density_coverage() -> None:
    out = prdc(_gauss(200, 5, 8), _gauss(200, 5, 9, mean=100.0))
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0, "k": 5}


def test_half_the_modes_gives_half_recall_and_full_precision() -> None:
    d, per_mode = 2, 100
    angle = torch.arange(10, dtype=torch.float64) * 2 * math.pi / 10
    centres = 100.0 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)  # 10 well separated modes
    real = torch.cat([c + _gauss(per_mode, d, 100 + i) for i, c in enumerate(centres)])
    fake = torch.cat([c + _gauss(per_mode * 2, d, 200 + i) for i, c in enumerate(centres[:5])])
    out = prdc(real, fake, k=5)
    assert out["precision"] >= 0.95
    assert 0.45 <= out["recall"] <= 0.55
    assert 0.45 <= out["coverage"] <= 0.55
    assert out["density"] > 0.8


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(_gauss(10, 3, 0), _gauss(10, 4, 1))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        prdc(torch.rand(10), torch.rand(10))
    with pytest.raises(ValueError, match="more than 5"):
        prdc(_gauss(5, 3, 0), _gauss(50, 3, 1), k=5)
    bad = _gauss(10, 3, 0)
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(bad, bad)


def test_nearest_real_ssim_finds_the_image_itself(real_bscan_paths: list[Path]) -> None:
    real, _ = load_images(real_bscan_paths[::3], (64, 128), progress=False)  # 8 real B-scans of 4 classes
    picked = [6, 1, 3]
    out = nearest_real_ssim(real[picked], real, progress=False)
    assert out["nearest_index"] == picked
    assert out["per_image"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert out["n_fake"] == 3 and out["n_real"] == 8 and out["win_size"] == 11
    noisy = (real[picked] + 0.05 * torch.randn(3, 1, 64, 128, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    out = nearest_real_ssim(noisy, real, batch_size=3, progress=False)
    assert out["nearest_index"] == picked
    assert all(0.0 < v < 0.99 for v in out["per_image"])
    assert out["p5"] <= out["median"] <= out["p95"]
    others = [i for i in range(8) if i not in picked]
    out = nearest_real_ssim(real[picked], real[others], progress=False)
    assert max(out["per_image"]) < 0.9  # other patients' B-scans are clearly less similar
    with pytest.raises(ValueError, match="shapes differ"):
        nearest_real_ssim(real[:2], real[:2, :, :32])


def test_nearest_real_ssim_equals_monai_ssim() -> None:
    g = torch.Generator().manual_seed(3)
    real = torch.rand(7, 1, 40, 72, generator=g) * torch.linspace(0.2, 1.0, 40)[:, None]
    fake = (real[[2, 5]] * 0.8 + 0.2 * torch.rand(2, 1, 40, 72, generator=g)).clamp(0, 1)
    fake = torch.cat([fake, torch.rand(1, 1, 40, 72, generator=g)])
    for win in (11, 7):
        out = nearest_real_ssim(fake, real, win_size=win, batch_size=3, progress=False)
        monai = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=win, kernel_sigma=1.5, reduction="none")
        table = torch.stack([monai(f[None].expand_as(real), real).flatten() for f in fake])  # (fake, real)
        assert out["nearest_index"] == table.argmax(dim=1).tolist()
        assert np.allclose(out["per_image"], table.max(dim=1).values.numpy(), atol=1e-5)
        assert out["win_size"] == win


def test_fidelity_report_is_json_and_complete() -> None:
    real, fake = _gauss(60, 4, 10), _gauss(60, 4, 11, mean=0.5)
    imgs = torch.rand(4, 1, 32, 64, generator=torch.Generator().manual_seed(1))
    out = fidelity_report(real, fake, real_images=imgs, fake_images=imgs[:2], kid_subsets=3)
    json.dumps(out)
    assert {"frechet_distance", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"} <= out.keys()
    assert out["frechet_distance"] == pytest.approx(frechet_distance(real, fake))
    assert out["precision"] == prdc(real, fake)["precision"]
    assert out["nearest_real_ssim"]["nearest_index"] == [0, 1] and out["notes"] == []
    small = fidelity_report(real[:3], fake[:3])  # too few samples for k=5 balls: reported, not raised
    assert small["precision"] is None and any("prdc" in n for n in small["notes"])
    assert small["frechet_distance"] is not None
    json.dumps(small)

"""Fidelity: how close the synthetic images are to the real ones, as a distribution and image by image.

On features of a :class:`~medicraft_monai.metrics.features.FeatureExtractor` (``(N, D)`` tensors):

- :func:`frechet_distance`: the Frechet distance between Gaussian fits (MONAI :class:`~monai.metrics.FIDMetric`);
- :func:`kernel_inception_distance`: the unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018),
  mean and spread over random subsets;
- :func:`prdc`: precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) from
  k-nearest-neighbour balls.

On images ``(N, 1, H, W)`` in [0, 1]: :func:`nearest_real_ssim`, for every synthetic image the SSIM of the most
similar real image. :func:`fidelity_report` bundles them into one JSON-able dict. ``docs/evaluation_metrics.md``
explains how to read each number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import FIDMetric
from monai.metrics.regression import _gaussian_kernel
from tqdm import tqdm

__all__ = [
    "density_coverage",
    "fidelity_report",
    "frechet_distance",
    "kernel_inception_distance",
    "nearest_real_ssim",
    "pairwise_distances",
    "prdc",
    "precision_recall",
]

_CHUNK = 1024


def _features(x: Any, what: str, min_rows: int = 1) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{what}: expected (N, D) features, got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows:
        raise ValueError(f"{what}: at least {min_rows} samples needed, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: features contain NaN or infinite values")
    return t.detach().to("cpu", torch.float64)


def _same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: real {a.shape[1]}, synthetic {b.shape[1]}")


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = _CHUNK) -> torch.Tensor:
    """Euclidean distances ``(len(a), len(b))`` in float64 with :func:`torch.cdist`, ``chunk`` rows of ``a`` at a time."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    out = [torch.cdist(a[s : s + chunk], b) for s in range(0, len(a), chunk)]
    return torch.cat(out) if out else torch.empty(0, len(b), dtype=torch.float64)


def frechet_distance(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """Frechet distance ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` (MONAI ``FIDMetric``).

    Biased upwards for small samples (the covariance estimate is noisy): compare values only at equal sample
    sizes, and prefer at least several times more images than feature dimensions.
    """
    r = _features(real_feats, "real features", 2)
    f = _features(fake_feats, "synthetic features", 2)
    _same_dim(r, f)
    return max(float(FIDMetric()(f, r)), 0.0)  # a true distance; tiny negatives are rounding


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    num_subsets: int = 10,
    subset_size: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel (Inception) distance: unbiased MMD^2 with the kernel ``k(x, y) = (x.y / d + 1)^3``.

    Args:
        real: ``(N, D)`` real features.
        fake: ``(M, D)`` synthetic features.
        num_subsets: random subsets averaged.
        subset_size: samples per subset from each set (default ``min(1000, N, M)``); drawn without replacement.
        seed: seed of the subset draws.

    Returns:
        ``(mean, std)`` over the subsets. Unbiased, so it can be slightly negative when the sets match.
    """
    r = _features(real, "real features", 2)
    f = _features(fake, "synthetic features", 2)
    _same_dim(r, f)
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be positive, got {num_subsets}")
    size = min(1000, len(r), len(f)) if subset_size is None else int(subset_size)
    if not 2 <= size <= min(len(r), len(f)):
        raise ValueError(f"subset_size must be in [2, {min(len(r), len(f))}], got {size}")
    gen = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(num_subsets):
        ir = torch.randperm(len(r), generator=gen)[:size]
        jf = torch.randperm(len(f), generator=gen)[:size]
        values.append(_mmd2_unbiased(r[ir], f[jf]))
    arr = np.asarray(values)
    return float(arr.mean()), float(arr.std())


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"k={k} needs more than {k} samples per set, got {len(x)}")
    radii = []
    for s in range(0, len(x), _CHUNK):
        d = pairwise_distances(x[s : s + _CHUNK], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the first is the point itself (distance 0)
    return torch.cat(radii)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage from k-nearest-neighbour balls.

    A ball around each real sample reaches its k-th nearest real neighbour (likewise for synthetic samples):

    - precision: share of synthetic samples inside at least one real ball (are the fakes realistic?);
    - recall: share of real samples inside at least one synthetic ball (is the real variety reproduced?);
    - density: mean number of real balls holding a synthetic sample, divided by k (about 1 when the sets match,
      below 1 for outliers, above 1 when fakes crowd in dense real regions);
    - coverage: share of real samples whose ball holds at least one synthetic sample (robust recall).

    Returns:
        ``{"precision", "recall", "density", "coverage", "k"}``.
    """
    r = _features(real, "real features", 2)
    f = _features(fake, "synthetic features", 2)
    _same_dim(r, f)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    real_radius = _kth_neighbour_radius(r, k)
    fake_radius = _kth_neighbour_radius(f, k)
    d = pairwise_distances(r, f)  # (N_real, N_fake)
    inside_real = d < real_radius[:, None]  # fake j inside the ball of real i
    inside_fake = d < fake_radius[None, :]  # real i inside the ball of fake j
    return {
        "precision": float(inside_real.any(dim=0).double().mean()),
        "recall": float(inside_fake.any(dim=1).double().mean()),
        "density": float(inside_real.sum(dim=0).double().mean() / k),
        "coverage": float((d.min(dim=1).values < real_radius).double().mean()),
        "k": int(k),
    }


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019); see :func:`prdc`."""
    out = prdc(real, fake, k)
    return out["precision"], out["recall"]


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020); see :func:`prdc`."""
    out = prdc(real, fake, k)
    return out["density"], out["coverage"]


def _images(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 4:
        raise ValueError(f"{what}: expected (N, C, H, W) images, got shape {tuple(t.shape)}")
    if len(t) == 0:
        raise ValueError(f"{what}: no images")
    return t.detach().to("cpu", torch.float32)


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "p5": float(np.percentile(values, 5)),
        "p95": float(np.percentile(values, 95)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


class _GaussianWindow:
    """MONAI's SSIM window (:func:`monai.metrics.regression._gaussian_kernel`, "valid" convolution) for (H, W) images.

    The 2-D window is an outer product of a 1-D kernel, so filtering is ``A @ x @ B`` with two band matrices:
    the same numbers as ``conv2d`` but far faster on a CPU for one-channel images.
    """

    def __init__(self, win_size: int, sigma: float, shape: Sequence[int]) -> None:
        k2d = _gaussian_kernel(2, 1, (win_size, win_size), (sigma, sigma))  # (1, 1, win, win), an outer product
        k1d = k2d[0, 0].sum(dim=1).float()  # its (normalised) 1-D factor
        h, w = int(shape[-2]), int(shape[-1])
        self.rows = torch.zeros(h - win_size + 1, h)
        for i in range(h - win_size + 1):
            self.rows[i, i : i + win_size] = k1d
        self.cols = torch.zeros(w, w - win_size + 1)
        for j in range(w - win_size + 1):
            self.cols[j : j + win_size, j] = k1d

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols


def nearest_real_ssim(
    fake_images: torch.Tensor,
    real_images: torch.Tensor,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """For each synthetic image, the highest SSIM over all real images, and which real image gives it.

    SSIM is the value of MONAI's :class:`~monai.metrics.SSIMMetric` / ``compute_ssim_and_cs`` (Gaussian window
    ``win_size``/``kernel_sigma``, constants ``k1``/``k2``, mean over the valid region). Comparing every synthetic
    image with every real image is quadratic, so the local means and variances of each image are computed once
    and only the cross term per pair, with the separable window applied as two band-matrix products (the same
    numbers, about 50 times faster on a CPU; ``tests/test_metrics_fidelity.py`` checks the equality). A median near 1 means near-copies
    (see the privacy audit); a realistic synthetic set sits near the real-to-real nearest SSIM.

    Args:
        fake_images: ``(M, 1, H, W)`` synthetic images in [0, 1].
        real_images: ``(N, 1, H, W)`` real images, same size.
        win_size: Gaussian window size (at most the image's smaller side; made odd).
        kernel_sigma: Gaussian window sigma.
        data_range: intensity range (1 for [0, 1]).
        k1, k2: SSIM stability constants.
        batch_size: real images compared at once.
        progress: progress bar over the synthetic images (for more than 8).

    Returns:
        ``{"mean", "std", "median", "p5", "p95", "min", "max", "per_image", "nearest_index", "n_fake", "n_real",
        "win_size"}``.
    """
    fake = _images(fake_images, "synthetic images")
    real = _images(real_images, "real images")
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"image shapes differ: synthetic {tuple(fake.shape[1:])}, real {tuple(real.shape[1:])}")
    if fake.shape[1] != 1:
        raise ValueError(f"expected single-channel images, got {fake.shape[1]} channels")
    win = min(int(win_size), *fake.shape[-2:])
    win -= 1 - win % 2  # odd window
    if win < 3:
        raise ValueError(f"images of {tuple(fake.shape[-2:])} are too small for SSIM")
    window = _GaussianWindow(win, kernel_sigma, fake.shape)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = window(x)
        return mu, window(x * x) - mu * mu

    best = np.empty(len(fake))
    arg = np.empty(len(fake), dtype=np.int64)
    with torch.inference_mode():
        real_stats = [
            (real[s : s + batch_size], *stats(real[s : s + batch_size])) for s in range(0, len(real), batch_size)
        ]
        bar = tqdm(range(len(fake)), desc="nearest real SSIM", unit="image", disable=not progress or len(fake) <= 8)
        for i in bar:
            x = fake[i : i + 1]
            mu_x, var_x = stats(x)
            scores = []
            for ref, mu_y, var_y in real_stats:
                cov = window(x * ref) - mu_x * mu_y
                ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
                scores.append(ssim.flatten(1).mean(1))
            allv = torch.cat(scores)
            j = int(allv.argmax())
            best[i], arg[i] = float(allv[j]), j
    out: dict[str, Any] = _summary(best)
    out.update(
        per_image=[float(v) for v in best],
        nearest_index=[int(v) for v in arg],
        n_fake=len(fake),
        n_real=len(real),
        win_size=win,
    )
    return out


def fidelity_report(
    real_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    real_images: torch.Tensor | None = None,
    fake_images: torch.Tensor | None = None,
    k: int = 5,
    kid_subsets: int = 10,
    kid_subset_size: int | None = None,
    seed: int = 0,
    ssim_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All fidelity numbers in one JSON-able dict.

    Returns:
        ``{"n_real", "n_fake", "feature_dim", "frechet_distance", "kid_mean", "kid_std", "precision", "recall",
        "density", "coverage", "k"}`` plus ``"nearest_real_ssim"`` (see :func:`nearest_real_ssim`) when both image
        sets are given. A metric that cannot be computed (too few samples) is ``None`` with the reason under
        ``"notes"``.
    """
    r = _features(real_feats, "real features")
    f = _features(fake_feats, "synthetic features")
    _same_dim(r, f)
    out: dict[str, Any] = {"n_real": len(r), "n_fake": len(f), "feature_dim": int(r.shape[1]), "notes": []}
    try:
        out["frechet_distance"] = frechet_distance(r, f)
    except ValueError as err:
        out["frechet_distance"] = None
        out["notes"].append(f"frechet_distance: {err}")
    try:
        kid_mean, kid_std = kernel_inception_distance(r, f, kid_subsets, kid_subset_size, seed)
    except ValueError as err:
        kid_mean = kid_std = None
        out["notes"].append(f"kid: {err}")
    out["kid_mean"], out["kid_std"] = kid_mean, kid_std
    try:
        out.update(prdc(r, f, k))
    except ValueError as err:
        out.update(precision=None, recall=None, density=None, coverage=None, k=int(k))
        out["notes"].append(f"prdc: {err}")
    if real_images is not None and fake_images is not None:
        out["nearest_real_ssim"] = nearest_real_ssim(fake_images, real_images, **(ssim_kwargs or {}))
    for key, value in list(out.items()):
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
            out["notes"].append(f"{key}: not finite")
    return out

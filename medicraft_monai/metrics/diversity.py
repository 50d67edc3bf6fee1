"""Diversity: mean pairwise MS-SSIM within a set of images (mode collapse shows as high similarity).

MS-SSIM (Wang et al. 2003) of two different images of one class is well below 1; a generator that repeats
itself pushes the mean towards 1. Compare the synthetic figure with the same figure for real images of the same
class and size: similar values mean similar variety.

Scales and window on small images: MONAI's :class:`~monai.metrics.MultiScaleSSIMMetric` halves the image once
per scale and needs the image side to exceed ``(kernel_size - 1) * (scales - 1) ** 2``. The standard setting (5
scales, an 11-pixel window) needs images of at least 161 pixels per side, more than the 64 x 128 or 128 x 256
B-scans used here. :func:`ms_ssim_settings` therefore keeps the Gaussian window at sigma 1.5 with a 7-pixel
support (+-2 sigma) and uses the largest number of scales (at most 5) that fits, with the first weights of the
standard set renormalised to sum to 1: 64 x 128 -> 4 scales, 32 x 64 -> 3 scales, 128 x 256 -> 5 scales. Values
are only comparable between sets of the same image size (the lead's report states the settings it used).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric
from tqdm import tqdm

__all__ = ["MS_SSIM_WEIGHTS", "diversity_by_class", "mean_pairwise_ms_ssim", "ms_ssim_settings", "sample_pairs"]

#: The standard MS-SSIM scale weights (Wang et al. 2003), coarse scales last.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_settings(image_shape: Sequence[int], kernel_size: int = 7, max_scales: int = 5) -> dict[str, Any]:
    """The MS-SSIM settings used for images of ``image_shape`` (..., H, W): scales, weights, window.

    The largest number of scales ``n <= max_scales`` for which MONAI's size check passes
    (``min(H, W) // (n - 1) ** 2 > kernel_size - 1``) and the coarsest scale still holds the window
    (``min(H, W) / 2 ** (n - 1) >= kernel_size``); the weights are the first ``n`` standard weights,
    renormalised.

    Raises:
        ValueError: the image is too small even for one scale.
    """
    side = int(min(image_shape[-2:]))
    k = int(kernel_size)
    for n in range(min(max_scales, len(MS_SSIM_WEIGHTS)), 0, -1):
        check = side // max(1, n - 1) ** 2 > k - 1
        coarse = side / 2 ** (n - 1) >= k
        if check and coarse:
            w = np.asarray(MS_SSIM_WEIGHTS[:n], dtype=np.float64)
            return {"scales": n, "weights": [float(v) for v in w / w.sum()], "kernel_size": k, "kernel_sigma": 1.5}
    raise ValueError(f"images of {tuple(image_shape[-2:])} are too small for MS-SSIM with a {k}-pixel window")


def sample_pairs(n: int, max_pairs: int, seed: int = 0) -> np.ndarray:
    """``(P, 2)`` distinct index pairs ``i < j`` of ``n`` items: all of them, or ``max_pairs`` drawn at random."""
    total = n * (n - 1) // 2
    if total == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(total, size=int(max_pairs), replace=False))
    # flat index -> (i, j) in the row-major order of the upper triangle (row i starts at i * (2n - i - 1) / 2)
    rows = np.arange(n, dtype=np.int64)
    starts = rows * (2 * n - rows - 1) // 2
    i = np.searchsorted(starts, flat, side="right") - 1
    j = flat - starts[i] + i + 1
    return np.stack([i, j], 1).astype(np.int64)


def mean_pairwise_ms_ssim(
    images: torch.Tensor,
    max_pairs: int = 500,
    seed: int = 0,
    kernel_size: int = 7,
    batch_size: int = 64,
    data_range: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean and spread of the MS-SSIM over pairs of different images of ``images`` ``(N, 1, H, W)`` in [0, 1].

    Args:
        images: the set (one class at a time for a meaningful figure).
        max_pairs: all pairs when there are at most this many, otherwise a random sample of this size.
        seed: seed of the pair sample.
        kernel_size: Gaussian window size (sigma 1.5); see :func:`ms_ssim_settings` for the scales.
        batch_size: pairs per MS-SSIM call.
        data_range: intensity range (1 for [0, 1]).
        progress: progress bar (for more than 4 batches).

    Returns:
        ``{"mean", "std", "n_pairs", "n_images", "scales", "kernel_size"}``; ``mean`` and ``std`` are ``None``
        when fewer than two images are given.
    """
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
    settings = ms_ssim_settings(x.shape, kernel_size)
    pairs = sample_pairs(len(x), max_pairs, seed)
    out: dict[str, Any] = {
        "mean": None,
        "std": None,
        "n_pairs": len(pairs),
        "n_images": len(x),
        "scales": settings["scales"],
        "kernel_size": settings["kernel_size"],
    }
    if len(pairs) == 0:
        return out
    metric = MultiScaleSSIMMetric(
        spatial_dims=2,
        data_range=data_range,
        kernel_size=settings["kernel_size"],
        kernel_sigma=settings["kernel_sigma"],
        weights=settings["weights"],
        reduction="none",
    )
    n_batches = (len(pairs) + batch_size - 1) // batch_size
    values = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(pairs), batch_size), desc="MS-SSIM pairs", disable=not progress or n_batches <= 4):
            p = torch.as_tensor(pairs[s : s + batch_size])
            values.append(metric(x[p[:, 0]], x[p[:, 1]]).flatten())
    v = torch.cat(values).double().numpy()
    out["mean"], out["std"] = float(v.mean()), float(v.std())
    return out


def diversity_by_class(
    images: torch.Tensor,
    labels: Sequence[Hashable] | torch.Tensor,
    max_pairs: int = 500,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`mean_pairwise_ms_ssim` within each class; keys are the labels as strings, in sorted order."""
    lab = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(lab) != len(images):
        raise ValueError(f"{len(lab)} labels for {len(images)} images")
    out: dict[str, dict[str, Any]] = {}
    for cls in sorted(set(lab), key=str):
        idx = torch.as_tensor([i for i, v in enumerate(lab) if v == cls])
        out[str(cls)] = mean_pairwise_ms_ssim(images[idx], max_pairs=max_pairs, seed=seed, **kwargs)
    return out

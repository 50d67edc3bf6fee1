"""Privacy: a memorisation audit of synthetic images against the generator's real training images.

For every synthetic image, the distance to its nearest real *training* image is compared with what is normal
for a new, unseen real image: the distance of each real *test* image (other patients) to its nearest training
image. A generator that reproduces training B-scans puts many synthetic images closer to a training image than
almost any real image ever is. The threshold is the ``percentile``-th percentile (1st by default) of the
test-to-train distances, so a set as novel as real new patients has about 1% of its images below it; the audit
reports the fraction below, per space (learned features, and down-sampled pixels when given), the closest pairs
for a human to look at, and summary statistics.

Distances are Euclidean (:func:`torch.cdist`, in chunks). ``docs/evaluation_metrics.md`` explains how to read
the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy.stats import binomtest

from medicraft_monai.visualize import image_grid

__all__ = ["memorisation_audit", "nearest_neighbours", "save_closest_pairs"]

_CHUNK = 512
_EXACT_RELATIVE = 1e-4  # a distance below this times the median test-to-train distance counts as an exact copy


def _matrix(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    shape = tuple(t.shape)
    if t.ndim > 2:  # images: flattened pixels
        t = t.flatten(1)
    if t.ndim != 2 or len(t) == 0:
        raise ValueError(f"{what}: expected a non-empty (N, D) tensor, got shape {shape}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return t.detach().to("cpu", torch.float64)


def nearest_neighbours(
    query: torch.Tensor, reference: torch.Tensor, chunk: int = _CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each row of ``query`` to its nearest row of ``reference``, and that row's index.

    Computed with :func:`torch.cdist` on ``chunk`` query rows at a time (float64), so memory stays bounded.
    """
    q = _matrix(query, "query")
    r = _matrix(reference, "reference")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"dimensions differ: query {q.shape[1]}, reference {r.shape[1]}")
    dist, idx = [], []
    for s in range(0, len(q), chunk):
        d = torch.cdist(q[s : s + chunk], r)
        m = d.min(dim=1)
        dist.append(m.values)
        idx.append(m.indices)
    return torch.cat(dist), torch.cat(idx)


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "min": float(values.min()),
        "p1": float(np.percentile(values, 1)),
        "p5": float(np.percentile(values, 5)),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def _audit_space(
    synth: Any, train: Any, test: Any, percentile: float, top_k: int, max_fraction: float, space: str
) -> dict[str, Any]:
    s, tr, te = (
        _matrix(synth, f"{space}: synthetic"),
        _matrix(train, f"{space}: train"),
        _matrix(test, f"{space}: test"),
    )
    if not s.shape[1] == tr.shape[1] == te.shape[1]:
        raise ValueError(f"{space}: dimensions differ: synthetic {s.shape[1]}, train {tr.shape[1]}, test {te.shape[1]}")
    d_syn, i_syn = nearest_neighbours(s, tr)
    d_ref, _ = nearest_neighbours(te, tr)
    d_syn_np, d_ref_np = d_syn.numpy(), d_ref.numpy()
    threshold = float(np.percentile(d_ref_np, percentile))
    n_below = int((d_syn_np < threshold).sum())
    nominal = percentile / 100.0
    median_ref = float(np.median(d_ref_np))
    order = np.argsort(d_syn_np, kind="stable")[: max(0, int(top_k))]
    fraction = n_below / len(d_syn_np)
    return {
        "threshold": threshold,
        "fraction_below": fraction,
        "n_below": n_below,
        "nominal_fraction": nominal,
        "p_value": float(binomtest(n_below, len(d_syn_np), nominal, alternative="greater").pvalue)
        if nominal > 0
        else None,
        "flagged": bool(fraction > max_fraction),
        "n_exact_copies": int((d_syn_np <= _EXACT_RELATIVE * median_ref).sum()),
        "n_synthetic": len(s),
        "n_train": len(tr),
        "n_test": len(te),
        "dim": int(s.shape[1]),
        "synthetic_to_train": _summary(d_syn_np),
        "test_to_train": _summary(d_ref_np),
        "median_ratio": float(np.median(d_syn_np) / median_ref) if median_ref > 0 else None,
        "closest_pairs": [
            {"synthetic_index": int(i), "train_index": int(i_syn[i]), "distance": float(d_syn_np[i])} for i in order
        ],
        "nearest_train_index": [int(v) for v in i_syn],
        "distances": [float(v) for v in d_syn_np],
    }


def memorisation_audit(
    synth_feats: torch.Tensor,
    train_feats: torch.Tensor,
    test_feats: torch.Tensor,
    synth_pixels: torch.Tensor | None = None,
    train_pixels: torch.Tensor | None = None,
    test_pixels: torch.Tensor | None = None,
    percentile: float = 1.0,
    top_k: int = 8,
    max_fraction: float = 0.05,
) -> dict[str, Any]:
    """Audit synthetic images for copies of training images, in feature space and (optionally) pixel space.

    Args:
        synth_feats: ``(M, D)`` features of the synthetic images.
        train_feats: ``(N, D)`` features of the real images the generator was trained on.
        test_feats: ``(T, D)`` features of real images the generator never saw (other patients): the reference.
        synth_pixels, train_pixels, test_pixels: the same images in pixel space (for example
            :func:`~medicraft_monai.metrics.features.pixel_features`, or ``(N, 1, H, W)`` images, flattened
            here); all three or none.
        percentile: the threshold is this percentile of the test-to-train nearest distances.
        top_k: closest pairs listed per space.
        max_fraction: a space is flagged when more than this fraction of the synthetic images lies below the
            threshold (default 5%, five times the nominal 1%).

    Returns:
        ``{"percentile", "max_fraction", "spaces": {"features": {...}, "pixels": {...}}, "flagged", "verdict"}``.
        Each space holds ``threshold``, ``fraction_below``, ``n_below``, ``nominal_fraction``, ``p_value`` (one-sided
        binomial test against the nominal fraction), ``flagged``, ``n_exact_copies``, the sizes, summaries of the
        synthetic-to-train and test-to-train distances, ``median_ratio`` (synthetic over test; well below 1 means
        copying), ``closest_pairs`` (``{"synthetic_index", "train_index", "distance"}``, closest first), and per
        synthetic image ``nearest_train_index`` and ``distances``.
    """
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    if not 0 <= max_fraction < 1:
        raise ValueError(f"max_fraction must be in [0, 1), got {max_fraction}")
    pixels = [synth_pixels, train_pixels, test_pixels]
    if any(p is not None for p in pixels) and any(p is None for p in pixels):
        raise ValueError("give synth_pixels, train_pixels and test_pixels together (or none of them)")
    spaces = {
        "features": _audit_space(synth_feats, train_feats, test_feats, percentile, top_k, max_fraction, "features")
    }
    if synth_pixels is not None:
        spaces["pixels"] = _audit_space(
            synth_pixels, train_pixels, test_pixels, percentile, top_k, max_fraction, "pixels"
        )
    for name, space in spaces.items():
        if space["n_synthetic"] != spaces["features"]["n_synthetic"]:
            raise ValueError(
                f"{name}: {space['n_synthetic']} synthetic images, features have {spaces['features']['n_synthetic']}"
            )
    flagged = [name for name, space in spaces.items() if space["flagged"]]
    verdict = (
        f"memorisation suspected ({', '.join(flagged)} space: more than {max_fraction:.0%} of the synthetic images "
        f"are closer to a training image than percentile {percentile:g} of the real test-to-train distances)"
        if flagged
        else "no evidence of memorisation"
    )
    return {
        "percentile": float(percentile),
        "max_fraction": float(max_fraction),
        "spaces": spaces,
        "flagged": bool(flagged),
        "verdict": verdict,
    }


def _pair_fields(pair: Mapping[str, Any] | Sequence[Any]) -> tuple[int, int, float]:
    if isinstance(pair, Mapping):
        return int(pair["synthetic_index"]), int(pair["train_index"]), float(pair["distance"])
    s, t, d = pair
    return int(s), int(t), float(d)


def save_closest_pairs(
    pairs: Sequence[Mapping[str, Any] | Sequence[Any]],
    synth_images: torch.Tensor | np.ndarray,
    train_images: torch.Tensor | np.ndarray,
    path: str | PathLike,
    tile_height: int = 128,
    title: str | None = None,
) -> Path:
    """Save a PNG: one row per pair, the synthetic image beside its nearest training image, distance at the left.

    Args:
        pairs: ``closest_pairs`` of :func:`memorisation_audit` (dicts) or ``(synthetic_index, train_index,
            distance)`` tuples.
        synth_images: ``(M, 1, H, W)`` (or ``(M, H, W)``) synthetic images in [0, 1].
        train_images: the training images the indices refer to.
        path: the PNG to write.
        tile_height: displayed height of each image (the width keeps the aspect).
        title: a line above the grid (default: what the columns are).

    Returns:
        the path written.
    """
    if not pairs:
        raise ValueError("save_closest_pairs: no pairs given")
    syn = np.asarray(torch.as_tensor(synth_images).detach().cpu().float())
    tra = np.asarray(torch.as_tensor(train_images).detach().cpu().float())
    rows, labels = [], []
    for rank, pair in enumerate(pairs, 1):
        s, t, d = _pair_fields(pair)
        if not (0 <= s < len(syn) and 0 <= t < len(tra)):
            raise IndexError(f"pair {rank}: index out of range (synthetic {s} of {len(syn)}, train {t} of {len(tra)})")
        rows.append([syn[s].squeeze(), tra[t].squeeze()])
        labels.append(f"#{rank} d={d:.4g}\nsyn {s}\ntrain {t}")
    h, w = rows[0][0].shape[-2:]
    tile = (int(tile_height), max(1, round(tile_height * w / h)))
    grid = Image.fromarray(image_grid(rows, labels, tile_size=tile))
    head = 18
    canvas = Image.new("L", (grid.width, grid.height + head), color=255)
    canvas.paste(grid, (0, head))
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (4, 3),
        title or "closest pairs: synthetic (left) | nearest real training image (right)",
        fill=0,
        font=ImageFont.load_default(),
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out

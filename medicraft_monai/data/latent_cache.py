"""The latent cache of the latent diffusion stage: every training image encoded once by the frozen encoder.

:func:`build_latent_cache` writes the posterior mean and standard deviation of every image (and of its mirror image,
for flip augmentation) to ``latent_cache/`` under a key made of the autoencoder checkpoint's SHA-256, the datalist
items and the preprocessing settings, and reads them back in every later run with the same key (a new autoencoder or
other data make a new cache). :class:`LatentCache` holds them and their exact :attr:`LatentCache.scale_factor`;
:class:`~medicraft_monai.transforms.SampleLatentd` draws training latents from its :meth:`LatentCache.records`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medicraft_monai.utils import file_sha256, save_torch_atomic

__all__ = ["CACHE_VERSION", "LatentCache", "build_latent_cache"]

logger = logging.getLogger(__name__)

#: bump when the cache file layout changes (part of the cache key)
CACHE_VERSION = 1


@dataclass
class LatentCache:
    """Posterior means and standard deviations of a split's images, encoded once by the frozen encoder.

    Attributes:
        path: the cache file.
        key: the cache key (SHA-256 of the autoencoder checksum, the items and the settings).
        autoencoder_sha256: SHA-256 of the autoencoder checkpoint that encoded them.
        mu, sigma: (N, V, C, h, w) unscaled posterior mean and standard deviation; view 0 is the image, view 1 (when
            flips were cached) its left-right mirror.
        labels: (N,) class labels.
        items: the image paths, in order.
        encoded: True when this process encoded the images (False: read from an existing cache).
    """

    path: Path
    key: str
    autoencoder_sha256: str
    mu: torch.Tensor
    sigma: torch.Tensor
    labels: torch.Tensor
    items: list[str] = field(default_factory=list)
    encoded: bool = False

    def __len__(self) -> int:
        return int(self.mu.shape[0])

    @property
    def scale_factor(self) -> float:
        """1 / standard deviation of latents drawn from the cached posteriors (exact, no sampling needed).

        ``Var(z) = E[mu^2 + sigma^2] - E[mu]^2`` over every element of every image and view.
        """
        mean = self.mu.double().mean()
        second = (self.mu.double().pow(2) + self.sigma.double().pow(2)).mean()
        std = float((second - mean.pow(2)).clamp_min(1e-12).sqrt())
        return 1.0 / std

    def records(self) -> list[dict[str, Any]]:
        """One dict per image for a MONAI ``Dataset`` with :class:`~medicraft_monai.transforms.SampleLatentd`: ``mu``, ``sigma``, ``label``."""
        return [{"mu": self.mu[i], "sigma": self.sigma[i], "label": int(self.labels[i])} for i in range(len(self))]


def _cache_key(autoencoder_sha256: str, items: list[tuple[str, int]], settings: Mapping[str, Any], flips: bool) -> str:
    blob = json.dumps(
        {
            "version": CACHE_VERSION,
            "autoencoder_sha256": autoencoder_sha256,
            "items": items,
            "settings": dict(settings),
            "flips": bool(flips),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def build_latent_cache(
    autoencoder: torch.nn.Module,
    dataset: Any,
    cache_dir: str | PathLike,
    autoencoder_ckpt_path: str | PathLike,
    split: str = "training",
    flips: bool = True,
    settings: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> LatentCache:
    """Encode a split's images once with the frozen encoder, or read them from an earlier run's cache.

    The cache file ``<cache_dir>/latents_<split>_<key[:16]>.pt`` is keyed by the SHA-256 of the autoencoder
    checkpoint, the dataset items (image path and label) and ``settings`` (the preprocessing keys): a retrained
    autoencoder, other images or other preprocessing make a new cache, and older caches of the split are removed.
    The file is written atomically, so concurrent processes (multi-GPU training) cannot read a partial one.

    Args:
        autoencoder: the trained ``AutoencoderKL`` (weights already loaded, see
            :func:`~medicraft_monai.engines.latent.load_frozen_autoencoder`).
        dataset: a MONAI ``Dataset`` of the split with the *deterministic* preprocessing (``dataset.data`` are the
            datalist items with ``image`` and ``label``).
        cache_dir: folder of the cache files.
        autoencoder_ckpt_path: the checkpoint the autoencoder was loaded from (its SHA-256 keys the cache).
        split: the split's name (part of the file name).
        flips: also encode the left-right mirror of every image (flip augmentation in latent space stays exact).
        settings: preprocessing settings that change the images (image size, crop, intensity mode...).
        batch_size: images encoded at once.
        device: where to encode (default: the autoencoder's device).
        progress: show a progress bar while encoding.

    Raises:
        ValueError: an empty dataset.
    """
    data = list(getattr(dataset, "data", []))
    if not len(dataset):
        raise ValueError(f"the {split!r} split is empty: nothing to encode")
    items = [(str(it.get("image")), int(it.get("label", -1))) for it in data] if data else []
    ae_sha = file_sha256(autoencoder_ckpt_path)
    key = _cache_key(ae_sha, items, settings or {}, flips)
    root = Path(cache_dir)
    path = root / f"latents_{split}_{key[:16]}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                logger.info("latent cache: reusing %s (%d %s images)", path, blob["mu"].shape[0], split)
                return LatentCache(
                    path, key, ae_sha, blob["mu"], blob["sigma"], blob["labels"], list(blob["items"]), encoded=False
                )
        except Exception as err:  # an unreadable cache is rebuilt, never trusted
            logger.warning("%s: unreadable latent cache (%s); encoding again", path, err)

    model = autoencoder.module if hasattr(autoencoder, "module") else autoencoder  # DDP/DataParallel
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(dev)
    mus, sigmas, labels = [], [], []
    indices = range(0, len(dataset), max(1, int(batch_size)))
    bar = tqdm(indices, desc=f"encoding {split} latents", disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            for start in bar:
                batch = [dataset[i] for i in range(start, min(start + int(batch_size), len(dataset)))]
                x = torch.stack([torch.as_tensor(b["image"]).float() for b in batch]).to(dev)
                views = [x, torch.flip(x, dims=[-1])] if flips else [x]
                encoded = [model.encode(v) for v in views]
                mus.append(torch.stack([m.float().cpu() for m, _ in encoded], dim=1))
                sigmas.append(torch.stack([s.float().cpu() for _, s in encoded], dim=1))
                labels += [int(torch.as_tensor(b["label"]).reshape(-1)[0]) for b in batch]
    finally:
        model.train(was_training)
    cache = LatentCache(
        path,
        key,
        ae_sha,
        torch.cat(mus),
        torch.cat(sigmas),
        torch.tensor(labels, dtype=torch.long),
        [p for p, _ in items],
        encoded=True,
    )
    for old in root.glob(f"latents_{split}_*.pt") if root.is_dir() else []:
        if old != path:
            old.unlink(missing_ok=True)
    save_torch_atomic(
        {
            "key": key,
            "autoencoder_sha256": ae_sha,
            "mu": cache.mu,
            "sigma": cache.sigma,
            "labels": cache.labels,
            "items": cache.items,
        },
        path,
    )
    logger.info("latent cache: encoded %d %s images (%d views) into %s", len(cache), split, cache.mu.shape[1], path)
    return cache

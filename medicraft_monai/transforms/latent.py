"""Latent sampling for latent diffusion training: draw a latent from a cached posterior of the frozen encoder.

The diffusion stage encodes its images once (:func:`medicraft_monai.data.latent_cache.build_latent_cache`) and keeps
the posterior mean ``mu`` and standard deviation ``sigma`` of each image (view 0) and of its left-right mirror
(view 1, when cached). :class:`SampleLatent` draws ``scale_factor * (mu + sigma * eps)`` from them, choosing the
mirrored view with ``flip_prob`` (the exact latent of the flipped image); :class:`SampleLatentd` is its dictionary
twin, which reads ``mu`` and ``sigma`` from a record and writes the latent under ``image``.

The noise of one draw comes from its own ``torch.Generator`` seeded from the transform's random state, so the same
seed gives the same latent whatever the device or the other items of the batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

__all__ = ["SampleLatent", "SampleLatentD", "SampleLatentDict", "SampleLatentd"]


class SampleLatent(Randomizable, Transform):
    """Draw a training latent from a cached posterior: ``scale_factor * (mu[view] + sigma[view] * eps)``.

    Args:
        scale_factor: the latent scale factor (:attr:`~medicraft_monai.data.latent_cache.LatentCache.scale_factor`).
        flip_prob: probability of the mirrored view (view 1), when the posterior holds it.
        sample: draw from the posterior (True) or use its mean (False: deterministic, for validation).
    """

    def __init__(self, scale_factor: float, flip_prob: float = 0.0, sample: bool = True) -> None:
        self.scale_factor = float(scale_factor)
        self.flip_prob = float(flip_prob)
        self.sample = bool(sample)
        self._view = 0
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        """Choose the view and the seed of the noise of the next draw."""
        self._view = int(self.R.random_sample() < self.flip_prob)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, mu: Any, sigma: Any, randomize: bool = True) -> torch.Tensor:
        """The float32 latent (C, h, w) drawn from ``mu`` and ``sigma`` of shape (V, C, h, w) (V views).

        Args:
            mu: posterior means, one per view.
            sigma: posterior standard deviations, one per view.
            randomize: draw a new view and seed first (False: reuse the last ones).
        """
        if randomize:
            self.randomize()
        mu_t, sigma_t = torch.as_tensor(mu), torch.as_tensor(sigma)
        view = min(self._view, mu_t.shape[0] - 1)
        z = mu_t[view]
        if self.sample:
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(self._seed))
            z = z + sigma_t[view] * noise
        return (z * self.scale_factor).float()


class SampleLatentd(Randomizable, MapTransform):
    """Dictionary twin of :class:`SampleLatent`: pops ``mu`` and ``sigma`` from a record and writes the latent.

    Args:
        scale_factor: the latent scale factor (:attr:`~medicraft_monai.data.latent_cache.LatentCache.scale_factor`).
        flip_prob: probability of the mirrored view.
        sample: draw from the posterior (True) or use its mean (False: deterministic, for validation).
        mu_key, sigma_key, output_key: dictionary keys.
        allow_missing_keys: as in MONAI's ``MapTransform``.
    """

    def __init__(
        self,
        scale_factor: float,
        flip_prob: float = 0.0,
        sample: bool = True,
        mu_key: str = "mu",
        sigma_key: str = "sigma",
        output_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        keys: KeysCollection = [mu_key, sigma_key]
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.sampler = SampleLatent(scale_factor, flip_prob=flip_prob, sample=sample)
        self.mu_key, self.sigma_key, self.output_key = mu_key, sigma_key, output_key

    @property
    def scale_factor(self) -> float:
        return self.sampler.scale_factor

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> SampleLatentd:
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.sampler.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        mu, sigma = d.pop(self.mu_key), d.pop(self.sigma_key)
        d[self.output_key] = self.sampler(mu, sigma, randomize=False)
        return d


SampleLatentD = SampleLatentDict = SampleLatentd

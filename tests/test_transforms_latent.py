"""Latent sampling transforms (medicraft_monai.transforms.latent): the array transform and its dictionary twin draw
the same latents from a cached posterior for the same seed."""

from __future__ import annotations

import pytest
import torch

from medicraft_monai.transforms import SampleLatent, SampleLatentd


def _posterior() -> tuple[torch.Tensor, torch.Tensor]:
    mu = torch.stack([torch.zeros(2, 4, 4), torch.ones(2, 4, 4)])  # view 0: zeros, view 1 (mirror): ones
    return mu, torch.full((2, 2, 4, 4), 0.1)


def test_sample_latentd_draws_from_the_posterior_with_flips_and_scale() -> None:
    mu = torch.stack([torch.zeros(2, 4, 4), torch.ones(2, 4, 4)])  # view 0: zeros, view 1 (mirror): ones
    sigma = torch.full((2, 2, 4, 4), 0.1)
    item = {"mu": mu, "sigma": sigma, "label": 1}
    det = SampleLatentd(scale_factor=2.0, flip_prob=1.0, sample=False)
    out = det(item)
    assert set(out) == {"image", "label"} and torch.equal(out["image"], torch.full((2, 4, 4), 2.0))
    t = SampleLatentd(scale_factor=2.0, flip_prob=0.5, sample=True).set_random_state(0)
    draws = torch.stack([t(item)["image"] for _ in range(200)])
    means = draws.mean(dim=(1, 2, 3))
    flipped = (means > 1.0).float().mean()
    assert 0.3 < flipped < 0.7, "about half the draws take the mirrored view"
    assert draws[means < 1.0].std() == pytest.approx(0.2, rel=0.15), "noise of the posterior, times the scale"


def test_sample_latent_array_transform_draws_the_mean_the_mirror_and_the_noise() -> None:
    mu, sigma = _posterior()
    assert torch.equal(SampleLatent(2.0, flip_prob=0.0, sample=False)(mu, sigma), torch.zeros(2, 4, 4))
    assert torch.equal(SampleLatent(2.0, flip_prob=1.0, sample=False)(mu, sigma), torch.full((2, 4, 4), 2.0))
    # a posterior with one view (no cached mirror) is used as it is, whatever flip_prob
    assert torch.equal(SampleLatent(3.0, flip_prob=1.0, sample=False)(mu[:1], sigma[:1]), torch.zeros(2, 4, 4))
    t = SampleLatent(2.0, sample=True).set_random_state(0)
    draws = torch.stack([t(mu, sigma) for _ in range(200)])
    assert draws.dtype == torch.float32 and draws.shape == (200, 2, 4, 4)
    assert draws.std() == pytest.approx(0.2, rel=0.15), "noise of the posterior, times the scale"
    t.randomize()
    assert torch.equal(t(mu, sigma, randomize=False), t(mu, sigma, randomize=False)), "same draw without randomize"


def test_sample_latent_twins_draw_the_same_latents_for_the_same_seed() -> None:
    mu, sigma = _posterior()
    array = SampleLatent(2.0, flip_prob=0.5).set_random_state(7)
    dictionary = SampleLatentd(2.0, flip_prob=0.5).set_random_state(7)
    for _ in range(20):
        out = dictionary({"mu": mu, "sigma": sigma})
        assert torch.equal(out["image"], array(mu, sigma))

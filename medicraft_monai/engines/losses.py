"""Training losses that MONAI does not ship, used by the engine steps (:mod:`medicraft_monai.engines.latent`)."""

from __future__ import annotations

import torch

__all__ = ["kl_loss"]


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of the diagonal Gaussian posterior from N(0, I): summed over latent elements, batch mean."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()

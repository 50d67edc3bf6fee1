"""Engine pieces for latent diffusion: the KL-autoencoder training step, its validation, reconstruction grids, and
the latent record (``latent.json``) of the diffusion stage.

Stage 1 (autoencoder) runs on a MONAI ``SupervisedTrainer`` whose ``iteration_update`` is
:class:`AutoencoderKLUpdate` (L1 reconstruction + KL, :func:`~medicraft_monai.engines.losses.kl_loss`, optionally a
patch-adversarial loss after a warm-up), validated by a ``SupervisedEvaluator`` with
:class:`ReconstructionPrepareBatch` and :class:`~medicraft_monai.inferers.latent.AutoencoderReconstructionInferer`,
SSIM and MS-SSIM on images mapped to [0, 1] by :func:`unit_range_pair`. :class:`ReconstructionGridHandler` logs real
and reconstructed images.

Stage 2 (diffusion) loads the frozen autoencoder (:func:`load_frozen_autoencoder`), encodes its training images once
(:func:`medicraft_monai.data.latent_cache.build_latent_cache`) and draws latents from the cached posteriors
(:class:`medicraft_monai.transforms.SampleLatentd`), scaled by the cache's scale factor (1 / standard deviation of the
latents), which :class:`~medicraft_monai.engines.records.LatentInfoWriter` stores in ``models/latent.json`` next to
the diffusion weights for inference (:func:`~medicraft_monai.engines.records.read_latent_info`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from medicraft_monai.engines.handlers import ImageGridHandler
from medicraft_monai.engines.losses import kl_loss
from medicraft_monai.inferers.autocast import autocast_context, autocast_dtype
from medicraft_monai.networks.checkpoint import load_weights
from medicraft_monai.visualize import image_grid

__all__ = [
    "AutoencoderKLUpdate",
    "ReconstructionGridHandler",
    "ReconstructionPrepareBatch",
    "first_images",
    "load_frozen_autoencoder",
    "output_scalars",
    "unit_range_pair",
]

logger = logging.getLogger(__name__)

_TRAIN_STAGE_1 = (
    "train stage 1 first (python -m monai.bundle run --config_file configs/train_autoencoder.json) or set "
    "--autoencoder_ckpt_path"
)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper."""
    return network.module if hasattr(network, "module") else network


# --------------------------------------------------------------------------------------------------------------------
# stage 1: the autoencoder
# --------------------------------------------------------------------------------------------------------------------
class AutoencoderKLUpdate:
    """The ``iteration_update`` of a ``SupervisedTrainer`` that trains a MONAI ``AutoencoderKL``.

    Generator loss: ``engine.loss_function(reconstruction, image)`` (L1 in the bundle) ``+ kl_weight * KL``, plus
    ``adv_weight * adversarial`` once the adversarial part is on. Adversarial training (optional, off by default)
    uses a MONAI ``PatchDiscriminator`` with the least-squares patch loss (``PatchAdversarialLoss``) and starts at
    epoch ``adv_start_epoch`` (1-based), after the autoencoder has learnt to reconstruct. No loss needs downloaded
    weights.

    Returns (the engine output): ``image``, ``pred`` (the reconstruction), ``loss`` (generator total),
    ``recon_loss``, ``kl_loss``, ``adv_loss`` and ``disc_loss`` (0 while the adversarial part is off).

    Args:
        kl_weight: weight of the KL term (small: 1e-6 keeps the latents informative).
        discriminator: the ``PatchDiscriminator`` (or ``None``).
        disc_optimizer: its optimizer.
        adversarial: switch the adversarial loss on.
        adv_weight: weight of the adversarial term (generator and discriminator).
        adv_start_epoch: first epoch with the adversarial loss.
        amp_dtype: autocast dtype ("bfloat16") or ``None``; losses and weights stay float32.
    """

    def __init__(
        self,
        kl_weight: float = 1e-6,
        discriminator: torch.nn.Module | None = None,
        disc_optimizer: torch.optim.Optimizer | None = None,
        adversarial: bool = False,
        adv_weight: float = 0.01,
        adv_start_epoch: int = 1,
        amp_dtype: str | torch.dtype | None = None,
    ) -> None:
        from monai.losses import PatchAdversarialLoss

        if adversarial and (discriminator is None or disc_optimizer is None):
            raise ValueError("adversarial training needs a discriminator and its optimizer")
        self.kl_weight = float(kl_weight)
        self.discriminator = discriminator
        self.disc_optimizer = disc_optimizer
        self.adversarial = bool(adversarial)
        self.adv_weight = float(adv_weight)
        self.adv_start_epoch = int(adv_start_epoch)
        self.amp_dtype = autocast_dtype(amp_dtype)
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares")

    def adversarial_on(self, epoch: int) -> bool:
        """Whether the adversarial loss is used in (1-based) ``epoch``."""
        return self.adversarial and epoch >= self.adv_start_epoch

    def __call__(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        images, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        images = images.float()
        network = engine.network
        network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        adv_on = self.adversarial_on(engine.state.epoch)
        zero = torch.zeros((), device=images.device)
        with autocast_context(images.device, self.amp_dtype):
            recon, z_mu, z_sigma = network(images)
        recon, z_mu, z_sigma = recon.float(), z_mu.float(), z_sigma.float()
        recon_loss = engine.loss_function(recon, images)
        kl = kl_loss(z_mu, z_sigma)
        loss = recon_loss + self.kl_weight * kl
        adv, disc_loss = zero, zero
        if adv_on:
            assert self.discriminator is not None and self.disc_optimizer is not None
            self.discriminator.train()
            with autocast_context(images.device, self.amp_dtype):
                logits_fake = self.discriminator(recon)[-1]
            adv = self.adv_loss(logits_fake.float(), target_is_real=True, for_discriminator=False)
            loss = loss + self.adv_weight * adv
        loss.backward()
        engine.optimizer.step()
        if adv_on:
            self.disc_optimizer.zero_grad(set_to_none=True)
            with autocast_context(images.device, self.amp_dtype):
                logits_fake = self.discriminator(recon.detach())[-1]
                logits_real = self.discriminator(images)[-1]
            fake = self.adv_loss(logits_fake.float(), target_is_real=False, for_discriminator=True)
            real = self.adv_loss(logits_real.float(), target_is_real=True, for_discriminator=True)
            disc_loss = self.adv_weight * 0.5 * (fake + real)
            disc_loss.backward()
            self.disc_optimizer.step()
        return {
            "image": images,
            "pred": recon.detach(),
            "loss": loss.detach(),
            "recon_loss": recon_loss.detach(),
            "kl_loss": kl.detach(),
            "adv_loss": adv.detach(),
            "disc_loss": disc_loss.detach(),
        }


class ReconstructionPrepareBatch:
    """Prepare-batch for autoencoder validation: the image is both the input and the target."""

    def __init__(self, image_key: str = "image") -> None:
        self.image_key = image_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kw
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kw)
        return images, images


def unit_range_pair(output: Any, pred_key: str = "pred", label_key: str = "label") -> tuple[Any, Any]:
    """Metric output transform: (prediction, target) mapped from model space [-1, 1] to [0, 1] (clamped).

    Works on the decollated engine output (a list of dicts) and on a plain dict.
    """
    from monai.handlers import from_engine

    preds, targets = from_engine([pred_key, label_key])(output)

    def unit(x: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return [unit(v) for v in x]
        return ((torch.as_tensor(x).float() + 1.0) / 2.0).clamp(0.0, 1.0)

    return unit(preds), unit(targets)


class ReconstructionGridHandler(ImageGridHandler):
    """Every ``interval`` epochs, log real images and their reconstructions as one grid (real row, reconstruction row).

    Args:
        network: the ``AutoencoderKL``.
        images: (N, C, H, W) fixed images in model space [-1, 1] (a few validation images).
        interval: epochs between grids (and once at the end).
        summary_writer: a TensorBoard ``SummaryWriter`` (or ``None``).
        output_dir: folder for ``reconstructions_epoch_XXXX.png`` (or ``None``).
        tag: TensorBoard tag.
    """

    png_name = "reconstructions_epoch_{step:04d}.png"

    def __init__(
        self,
        network: torch.nn.Module,
        images: torch.Tensor,
        interval: int = 1,
        summary_writer=None,
        output_dir: str | PathLike | None = None,
        tag: str = "reconstructions",
    ) -> None:
        super().__init__(summary_writer=summary_writer, output_dir=output_dir, tag=tag, interval=interval)
        self.network = network
        self.images = torch.as_tensor(images).float()
        if self.images.ndim != 4 or not len(self.images):
            raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got shape {tuple(self.images.shape)}")

    def grid(self) -> np.ndarray:
        """The uint8 (H, W) grid: the fixed images in the first row, their reconstructions in the second."""
        model = _unwrap(self.network)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                recon = model.reconstruct(self.images.to(device)).float().cpu()
        finally:
            model.train(was_training)
        show = [list(((x.clamp(-1, 1) + 1) / 2).numpy()) for x in (self.images, recon)]
        h, w = self.images.shape[-2:]
        return image_grid(show, row_labels=["real", "reconstructed"], tile_size=(h, w), pad=2, label_width=90)

    def draw(self, engine: Engine) -> np.ndarray:
        return self.grid()


def first_images(dataset: Sequence[Mapping[str, Any]], n: int, key: str = "image") -> torch.Tensor:
    """The first ``n`` images of a (preprocessed) dataset as one (n, C, H, W) batch (for fixed grids)."""
    n = min(int(n), len(dataset))
    if n <= 0:
        raise ValueError("the dataset is empty: no images to show")
    return torch.stack([torch.as_tensor(dataset[i][key]).float() for i in range(n)])


def load_frozen_autoencoder(
    network: torch.nn.Module, ckpt_path: str | PathLike, device: str | torch.device | None = None
) -> torch.nn.Module:
    """Load trained autoencoder weights (a state dict, as stage 1 saves) and freeze the network (eval, no grads).

    The weights are read by the one checkpoint loader, :func:`medicraft_monai.networks.checkpoint.load_weights`.

    Raises:
        FileNotFoundError: no checkpoint (train stage 1 first).
        CheckpointError: (a ``ValueError``) an unreadable checkpoint, or one that does not fit the network (the
            autoencoder settings differ from training).
    """
    path = Path(ckpt_path)
    if not path.is_file():  # a FileNotFoundError, which the generator reports as a GeneratorError
        raise FileNotFoundError(f"{path}: autoencoder checkpoint not found; {_TRAIN_STAGE_1}")
    load_weights(
        network,
        path,
        "autoencoder checkpoint",
        hint=_TRAIN_STAGE_1,
        mismatch_hint="the autoencoder settings (autoencoder_*)",
    )
    if device is not None:
        network.to(device)
    return network.eval().requires_grad_(False)


def output_scalars(keys: Sequence[str], prefix: str = "train/") -> Any:
    """An output transform for ``StatsHandler``/``TensorBoardStatsHandler``: ``{prefix + key: float}`` per key.

    Reads a plain engine output dict or a decollated list of them (the first item).
    """

    def transform(output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, Sequence) and not isinstance(output, Mapping) else output
        return {f"{prefix}{k}": float(first[k]) for k in keys}

    return transform

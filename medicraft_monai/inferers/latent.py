"""Latent diffusion: class-conditioned sampling in the latent space of a frozen KL autoencoder, decoded to images.

:class:`LatentClassConditionedInferer` is the latent twin of
:class:`~medicraft_monai.inferers.conditional.ClassConditionedDiffusionInferer`: the same training forward pass
(on latents that the training stage encoded once and cached, see :mod:`medicraft_monai.data.latent_cache`), the same
sampling loop, guidance and samplers (it calls the parent's ``sample``), and at the end the latents are divided by
the scale factor and decoded by the autoencoder. It adds ``latent_shape(image_shape)`` so that
:class:`~medicraft_monai.synthesis.generator.DiffusionGenerator` draws the seeded noise in latent space; everything
that samples through the generator (``multiply``, ``sample_to_folder``, the evaluation) works unchanged.

:class:`AutoencoderReconstructionInferer` is the validation inferer of the autoencoder stage: it returns the
deterministic reconstruction (decoded posterior mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler

from medicraft_monai.inferers.conditional import ClassConditionedDiffusionInferer

__all__ = ["AutoencoderReconstructionInferer", "LatentClassConditionedInferer", "autoencoder_downsampling"]


def autoencoder_downsampling(autoencoder: torch.nn.Module) -> int:
    """The spatial down-sampling factor of a MONAI ``AutoencoderKL`` (2 per level after the first)."""
    channels = getattr(getattr(autoencoder, "encoder", None), "channels", None)
    if channels is None:
        raise TypeError(f"{type(autoencoder).__name__} is not a MONAI AutoencoderKL (no encoder.channels)")
    return 2 ** (len(channels) - 1)


class LatentClassConditionedInferer(ClassConditionedDiffusionInferer):
    """Class-conditioned latent diffusion: guided sampling of latents, decoded by a frozen ``AutoencoderKL``.

    Training: ``inferer(latents, unet, noise, timesteps, class_labels)`` is the parent's forward pass; the latents
    come already encoded and multiplied by ``scale_factor`` (cached once per training run).

    Sampling: ``sample(noise, unet, class_labels, ...)`` takes the parent's arguments (scheduler, steps, guidance,
    per-image generators, ``eta``), samples latents of shape :meth:`latent_shape` with the parent's loop and
    returns ``autoencoder.decode(latents / scale_factor)``: images (B, C, H, W) in model space, about [-1, 1].
    Decoding is deterministic and per image, so the same seed still gives the same image.

    Args:
        scheduler: the training noise scheduler.
        autoencoder: the trained ``AutoencoderKL``; it is put in eval mode and its gradients are switched off.
        scale_factor: the factor the latents were multiplied by in training (1 / their standard deviation).
        null_class, guidance_scale, amp_dtype, channels_last: as in the parent.
        decode_batch_size: images decoded at once (decoding at high resolution is memory-hungry); ``None``: all.
        checksums: ``{name: sha256}`` of the weights the samples depend on besides the UNet (the autoencoder's);
            :class:`~medicraft_monai.synthesis.generator.DiffusionGenerator` adds them to the provenance.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        autoencoder: torch.nn.Module,
        scale_factor: float = 1.0,
        null_class: int | None = None,
        guidance_scale: float = 1.0,
        amp_dtype: str | torch.dtype | None = None,
        channels_last: bool = False,
        decode_batch_size: int | None = None,
        checksums: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            scheduler,
            null_class=null_class,
            guidance_scale=guidance_scale,
            amp_dtype=amp_dtype,
            channels_last=channels_last,
        )
        scale_factor = float(scale_factor)
        if not scale_factor > 0.0 or scale_factor != scale_factor:
            raise ValueError(f"scale_factor must be a positive number, got {scale_factor}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale_factor = scale_factor
        self.decode_batch_size = decode_batch_size
        self.checksums = {str(k): str(v) for k, v in (checksums or {}).items() if v}
        self.downsampling = autoencoder_downsampling(autoencoder)
        self.latent_channels = int(autoencoder.latent_channels)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The (C_latent, h, w) latent of an image of shape (C, H, W) (or (H, W)).

        Raises:
            ValueError: a side that the autoencoder's down-sampling does not divide.
        """
        spatial = [int(s) for s in image_shape[-2:]]
        f = self.downsampling
        if any(s % f for s in spatial):
            raise ValueError(
                f"image size {spatial} must be a multiple of the autoencoder's down-sampling factor {f} on every side"
            )
        return (self.latent_channels, *(s // f for s in spatial))

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents (B, C_latent, h, w) to float32 images (B, C, H, W)."""
        param = next(self.autoencoder.parameters(), None)
        if param is not None and param.device != latents.device:
            self.autoencoder.to(latents.device)
        z = latents.float() / self.scale_factor
        step = self.decode_batch_size or z.shape[0]
        return torch.cat([self.autoencoder.decode(z[i : i + step]).float() for i in range(0, z.shape[0], step)])

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images (B, C, H, W) in model space to scaled posterior-mean latents (the inverse of decode)."""
        param = next(self.autoencoder.parameters(), None)
        if param is not None and param.device != images.device:
            self.autoencoder.to(images.device)
        z_mu, _ = self.autoencoder.encode(images.float())
        return z_mu * self.scale_factor

    def sample(  # type: ignore[override]
        self,
        input_noise: torch.Tensor,
        diffusion_model: torch.nn.Module,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        scheduler: Scheduler | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generators: Sequence[torch.Generator] | None = None,
        eta: float = 0.0,
        verbose: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Sample latents with the parent's loop (same arguments), then decode them to images.

        Args:
            input_noise: (B, C_latent, h, w) initial noise in latent space (see :meth:`latent_shape`).
            others: see :meth:`ClassConditionedDiffusionInferer.sample`.

        Returns:
            the decoded images (B, C, H, W), float32 (clamp to [-1, 1] before display).
        """
        if input_noise.shape[1] != self.latent_channels:
            raise ValueError(
                f"noise has {input_noise.shape[1]} channels but the latent space has {self.latent_channels}: draw "
                "the noise with latent_shape(image_shape)"
            )
        latents = super().sample(
            input_noise,
            diffusion_model,
            class_labels,
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generators=generators,
            eta=eta,
            verbose=verbose,
            **kwargs,
        )
        return self.decode(latents)


class AutoencoderReconstructionInferer(Inferer):
    """Validation inferer of an ``AutoencoderKL``: the deterministic reconstruction ``decode(mean(encode(x)))``."""

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        model = network.module if hasattr(network, "module") else network
        return model.reconstruct(inputs)

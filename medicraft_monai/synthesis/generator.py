"""A trained class-conditioned generator, loaded from a MONAI Bundle, behind one small interface.

Everything that samples images (dataset multiplication, the evaluation, the MONAI Label app, the MONAI Deploy
app) goes through :class:`DiffusionGenerator`, so any bundle whose ``configs/inference.json`` follows the
contract below works with all of them unchanged, whether it diffuses in pixel space (``oct_ddpm``) or in a
latent space.

The contract of ``configs/inference.json`` (keys a generator bundle defines):

- ``network_def``: the class-conditioned network (``num_class_embeds = len(class_names) + 1``).
- ``inferer``: an inferer with ``sample(noise, network, class_labels, scheduler=..., num_inference_steps=...,
  guidance_scale=..., generators=..., verbose=...)`` returning images in model space [-1, 1], and optionally a
  ``latent_shape(image_shape)`` method when it samples in a latent space.
- ``sampling_scheduler``: the scheduler used for sampling (its class decides the sampler).
- ``class_names``: the real classes in label order; ``image_size``: [H, W]; ``in_channels``.
- ``ckpt_path``: the weights (a state dict, the EMA weights for diffusion bundles).
- ``sampler``, ``num_inference_steps``, ``guidance_scale``: sampling defaults.
- ``diffusion_settings`` (optional): the settings the weights must have been trained with (``prediction_type``,
  ``noise_schedule``, ``num_train_timesteps``, ``class_names``, ``image_size``...); they are checked against the
  ``diffusion.json`` that training writes next to the weights
  (:func:`~medicraft_monai.engines.records.check_diffusion_settings`).

An inferer that holds further weights (the autoencoder of a latent generator) may expose ``checksums``, a mapping
``{name: sha256}``; they go into the provenance as ``<name>_sha256`` next to ``model_sha256``. Fine-tuned weights
add ``parent_sha256``, the checksum of the weights they were fine-tuned from, and a distilled student
``teacher_sha256``, that of the weights it was distilled from (both recorded in their ``diffusion.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from medicraft_monai.bundles import config_files, resolve_bundle
from medicraft_monai.engines.records import GeneratorError, check_diffusion_settings
from medicraft_monai.inferers.conditional import seeded_noise
from medicraft_monai.networks.checkpoint import CheckpointError, check_checkpoint_file, load_weights
from medicraft_monai.utils import file_sha256

__all__ = ["DiffusionGenerator"]

logger = logging.getLogger(__name__)


def _parsed_or_generator_error(parser: ConfigParser, key: str) -> Any:
    """``parser.get_parsed_content(key)``, re-raising a missing file or a :class:`GeneratorError` met while building
    it (MONAI wraps them in ``RuntimeError``), for example a latent inferer's missing autoencoder weights."""
    try:
        return parser.get_parsed_content(key)
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, GeneratorError):
                raise cause from None
            if isinstance(cause, FileNotFoundError):
                raise GeneratorError(str(cause)) from None
            cause = cause.__cause__
        raise


def _parent_checksum(recorded: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"parent": sha256}`` for fine-tuned weights (their ``diffusion.json`` names the weights they started
    from, :class:`~medicraft_monai.engines.finetune.ParentGenerator`) and ``{"teacher": sha256}`` for a distilled
    student (the weights it was distilled from, :mod:`medicraft_monai.engines.distill`); else nothing."""
    out = {}
    for key in ("parent", "teacher"):
        record = (recorded or {}).get(key)
        sha = record.get("model_sha256") if isinstance(record, Mapping) else None
        if sha:
            out[key] = str(sha)
    return out


@dataclass
class DiffusionGenerator:
    """A class-conditioned diffusion generator ready to sample.

    Build it with :meth:`from_bundle`. Images come out as float32 arrays in [0, 1], shape (B, C, H, W).

    Attributes:
        network: the network, in eval mode, on ``device``.
        inferer: the class-conditioned inferer.
        scheduler: the sampling scheduler.
        class_names: real class names in label order.
        image_shape: (C, H, W) of one image.
        checksum: SHA-256 of the checkpoint file (provenance).
        sampler: the sampler's name ("ddim", "ddpm", ...).
        num_inference_steps: default sampling steps.
        guidance_scale: default classifier-free guidance weight.
        device: where sampling runs.
        bundle_root: the bundle it came from.
        component_checksums: SHA-256 of further weights the samples depend on (``{"autoencoder": ...}``), from the
            inferer's ``checksums``.
    """

    network: torch.nn.Module
    inferer: Any
    scheduler: Any
    class_names: list[str]
    image_shape: tuple[int, int, int]
    checksum: str
    sampler: str = "ddim"
    num_inference_steps: int = 50
    guidance_scale: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bundle_root: str = ""
    component_checksums: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | PathLike,
        ckpt_path: str | PathLike | None = None,
        config_file: str | Sequence[str] | None = None,
        device: str | torch.device | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> DiffusionGenerator:
        """Load a generator from a bundle folder.

        Args:
            bundle_root: the bundle folder (with ``configs/inference.json``), a shipped bundle's name or a release
                archive (``medicraft bundle pack``; unpacked once, see :func:`~medicraft_monai.bundles.resolve_bundle`).
            ckpt_path: weights to load (default: the config's ``ckpt_path``).
            config_file: config file(s) relative to the bundle root (default ``configs/inference.json``), layered
                on ``configs/common.json`` when the bundle has one.
            device: where to run (default: CUDA when available, else CPU).
            overrides: config overrides, e.g. ``{"sampler": "ddpm", "num_inference_steps": 1000}``.

        Raises:
            GeneratorError: missing bundle or checkpoint, or a checkpoint that does not fit the network.
        """
        given = Path(bundle_root)
        try:
            root = given.resolve() if given.is_dir() else resolve_bundle(given)
        except (FileNotFoundError, ValueError) as err:
            raise GeneratorError(str(err)) from None
        files = [config_file] if isinstance(config_file, str) else list(config_file or ["inference.json"])
        paths = config_files(root, *files)
        for p in paths:
            if not p.is_file():
                raise GeneratorError(f"{p}: bundle config not found (is {root} a generator bundle?)")
        parser = ConfigParser()
        parser.read_config([str(p) for p in paths])
        parser["bundle_root"] = str(root)
        dev = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        parser["device"] = f"$torch.device('{dev}')"
        for key, value in (overrides or {}).items():
            parser[key] = value
        for key in ("network_def", "inferer", "sampling_scheduler", "class_names", "image_size"):
            if key not in parser:
                raise GeneratorError(
                    f"{paths[0]}: the config has no {key!r} key (see medicraft_monai.synthesis.generator)"
                )
        ckpt = ckpt_path if ckpt_path is not None else parser.get_parsed_content("ckpt_path")

        def setting(key: str, default: Any) -> Any:
            return parser.get_parsed_content(key) if key in parser else default

        return cls.from_components(
            network=parser.get_parsed_content("network_def"),
            inferer=_parsed_or_generator_error(parser, "inferer"),
            scheduler=parser.get_parsed_content("sampling_scheduler"),
            class_names=parser.get_parsed_content("class_names"),
            image_size=parser.get_parsed_content("image_size"),
            ckpt_path=ckpt,
            in_channels=setting("in_channels", 1),
            sampler=setting("sampler", "ddim"),
            num_inference_steps=setting("num_inference_steps", 50),
            guidance_scale=setting("guidance_scale", 1.0),
            channels_last=bool(setting("channels_last", False)),
            device=dev,
            bundle_root=root,
            diffusion_settings=setting("diffusion_settings", None),
        )

    @classmethod
    def from_components(
        cls,
        network: torch.nn.Module,
        inferer: Any,
        scheduler: Any,
        class_names: Sequence[str],
        image_size: Sequence[int],
        ckpt_path: str | PathLike,
        in_channels: int = 1,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        channels_last: bool = False,
        device: str | torch.device | None = None,
        bundle_root: str | PathLike = ".",
        diffusion_settings: Mapping[str, Any] | None = None,
    ) -> DiffusionGenerator:
        """A generator from already built components (what a bundle config holds), with the weights loaded.

        ``channels_last`` stores the weights channels-last (pair it with the inferer's ``channels_last``).
        ``diffusion_settings`` (the config's prediction type, noise schedule, timesteps, classes, image size...)
        are checked against the ``diffusion.json`` next to the weights before they are loaded
        (:func:`check_diffusion_settings`).

        Raises:
            GeneratorError: missing checkpoint, weights trained with other ``diffusion_settings``, a checkpoint that
                does not fit the network, or a class count that does not match the network's class embeddings.
        """
        try:
            ckpt = check_checkpoint_file(ckpt_path, hint="train the bundle first or give --ckpt_path")
        except CheckpointError as err:
            raise GeneratorError(str(err)) from None
        recorded = check_diffusion_settings(ckpt, diffusion_settings) if diffusion_settings is not None else None
        names = [str(c) for c in class_names]
        n_embed = getattr(network, "num_class_embeds", None)
        if n_embed is not None and n_embed != len(names) + 1:
            raise GeneratorError(
                f"{ckpt}: the network has {n_embed} class embeddings but class_names has {len(names)} classes "
                f"({names}); expected {len(names) + 1} (the classes plus the null class)"
            )
        try:
            load_weights(network, ckpt, "generator checkpoint")
        except CheckpointError as err:
            raise GeneratorError(str(err)) from None
        dev = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        network.to(dev).eval()
        if channels_last:
            network.to(memory_format=torch.channels_last)
        size = [int(v) for v in image_size]
        return cls(
            network=network,
            inferer=inferer,
            scheduler=scheduler,
            class_names=names,
            image_shape=(int(in_channels), size[0], size[1]),
            checksum=file_sha256(ckpt),
            sampler=str(sampler),
            num_inference_steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            device=dev,
            bundle_root=str(Path(bundle_root).resolve()),
            component_checksums={
                **{str(k): str(v) for k, v in (getattr(inferer, "checksums", None) or {}).items()},
                **_parent_checksum(recorded),
            },
        )

    def class_index(self, name_or_index: str | int) -> int:
        """The label index of a class given by name (or index), with a clear error for unknown classes."""
        if isinstance(name_or_index, (int, np.integer)):
            if 0 <= int(name_or_index) < len(self.class_names):
                return int(name_or_index)
        elif str(name_or_index) in self.class_names:
            return self.class_names.index(str(name_or_index))
        raise GeneratorError(f"unknown class {name_or_index!r}; this generator knows {self.class_names}")

    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one sample's initial noise (the latent shape for latent generators)."""
        latent_shape = getattr(self.inferer, "latent_shape", None)
        return tuple(latent_shape(self.image_shape)) if callable(latent_shape) else self.image_shape

    def generate(
        self,
        classes: Sequence[str | int],
        seeds: Sequence[int],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        verbose: bool = False,
    ) -> np.ndarray:
        """Sample one image per (class, seed) pair; the same seed and class always give the same image.

        Returns:
            float32 array (B, C, H, W) in [0, 1].
        """
        if len(classes) != len(seeds):
            raise ValueError(f"{len(classes)} classes for {len(seeds)} seeds")
        labels = [self.class_index(c) for c in classes]
        noise, gens = seeded_noise(seeds, self.noise_shape(), device=self.device)
        images = self.inferer.sample(
            noise,
            self.network,
            labels,
            scheduler=self.scheduler,
            num_inference_steps=num_inference_steps or self.num_inference_steps,
            guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
            generators=gens,
            verbose=verbose,
        )
        return ((images.float().clamp(-1.0, 1.0) + 1.0) / 2.0).cpu().numpy()

    def provenance(
        self, class_name: str, seed: int, num_inference_steps: int | None = None, guidance_scale: float | None = None
    ) -> dict[str, Any]:
        """The record that travels with a synthetic image: how exactly it was made."""
        return {
            "generator": "medicraft_monai",
            "bundle": Path(self.bundle_root).name,
            "model_sha256": self.checksum,
            "class_name": class_name,
            "seed": int(seed),
            "sampler": self.sampler,
            "steps": int(num_inference_steps or self.num_inference_steps),
            "guidance_scale": float(self.guidance_scale if guidance_scale is None else guidance_scale),
            **{f"{name}_sha256": sha for name, sha in self.component_checksums.items()},
        }

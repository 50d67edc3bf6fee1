"""Engine pieces for latent diffusion: the KL-autoencoder training step, its validation and image grids, and the
latent cache of the diffusion stage.

Stage 1 (autoencoder) runs on a MONAI ``SupervisedTrainer`` whose ``iteration_update`` is
:class:`AutoencoderKLUpdate` (L1 reconstruction + KL, optionally a patch-adversarial loss after a warm-up), validated
by a ``SupervisedEvaluator`` with :class:`ReconstructionPrepareBatch` and
:class:`~medicraft_monai.inferers.latent.AutoencoderReconstructionInferer`, SSIM and MS-SSIM on images mapped to
[0, 1] by :func:`unit_range_pair`. :class:`ReconstructionGridHandler` logs real and reconstructed images.

Stage 2 (diffusion) encodes its training images once with the frozen encoder (:func:`build_latent_cache`): the
posterior mean and standard deviation of every image (and of its mirror image, for flip augmentation) are written to
``latent_cache/`` under a key made of the autoencoder checkpoint's SHA-256, the datalist items and the preprocessing
settings, and read back by every later run with the same key (a new autoencoder or other data make a new cache).
:class:`SampleLatentd` draws a latent from the cached posterior per iteration, scaled by the cache's
:attr:`LatentCache.scale_factor` (1 / standard deviation of the latents), which :class:`LatentInfoWriter` stores in
``models/latent.json`` next to the diffusion weights for inference (:func:`read_latent_info`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from tqdm import tqdm

from medicraft_monai.inferers.autocast import autocast_context, autocast_dtype
from medicraft_monai.visualize import image_grid

__all__ = [
    "CACHE_VERSION",
    "AutoencoderKLUpdate",
    "LatentCache",
    "LatentInfoWriter",
    "ReconstructionGridHandler",
    "ReconstructionPrepareBatch",
    "SampleLatentd",
    "build_latent_cache",
    "first_images",
    "kl_loss",
    "load_frozen_autoencoder",
    "output_scalars",
    "read_latent_info",
    "unit_range_pair",
]

logger = logging.getLogger(__name__)

#: bump when the cache file layout changes (part of the cache key)
CACHE_VERSION = 1


def _sha256(path: str | PathLike) -> str:
    from medicraft_monai.utils import file_sha256

    return file_sha256(path)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper."""
    return network.module if hasattr(network, "module") else network


# --------------------------------------------------------------------------------------------------------------------
# stage 1: the autoencoder
# --------------------------------------------------------------------------------------------------------------------
def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of the diagonal Gaussian posterior from N(0, I): summed over latent elements, batch mean."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


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


class ReconstructionGridHandler:
    """Every ``interval`` epochs, log real images and their reconstructions as one grid (real row, reconstruction row).

    Args:
        network: the ``AutoencoderKL``.
        images: (N, C, H, W) fixed images in model space [-1, 1] (a few validation images).
        interval: epochs between grids (and once at the end).
        summary_writer: a TensorBoard ``SummaryWriter`` (or ``None``).
        output_dir: folder for ``reconstructions_epoch_XXXX.png`` (or ``None``).
        tag: TensorBoard tag.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        images: torch.Tensor,
        interval: int = 1,
        summary_writer=None,
        output_dir: str | PathLike | None = None,
        tag: str = "reconstructions",
    ) -> None:
        self.network = network
        self.images = torch.as_tensor(images).float()
        if self.images.ndim != 4 or not len(self.images):
            raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got shape {tuple(self.images.shape)}")
        self.interval = max(1, int(interval))
        self.summary_writer = summary_writer
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, lambda e: None if e.state.epoch % self.interval == 0 else self(e))

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

    def __call__(self, engine: Engine) -> None:
        grid = self.grid()
        if self.summary_writer is not None:
            self.summary_writer.add_image(self.tag, grid[None], global_step=engine.state.epoch)
            self.summary_writer.flush()
        if self.output_dir is not None:
            from PIL import Image

            self.output_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(self.output_dir / f"reconstructions_epoch_{engine.state.epoch:04d}.png")


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

    Raises:
        FileNotFoundError: no checkpoint (train stage 1 first).
        ValueError: a checkpoint that does not fit the network (the autoencoder settings differ from training).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: autoencoder checkpoint not found; train stage 1 first "
            "(python -m monai.bundle run --config_file configs/train_autoencoder.json) or set --autoencoder_ckpt_path"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: checkpoint does not match the autoencoder settings (autoencoder_*): {err}") from err
    if device is not None:
        network.to(device)
    return network.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------------------------
# stage 2: the latent cache
# --------------------------------------------------------------------------------------------------------------------
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
        """One dict per image for a MONAI ``Dataset`` with :class:`SampleLatentd`: ``mu``, ``sigma``, ``label``."""
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


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
        autoencoder: the trained ``AutoencoderKL`` (weights already loaded, see :func:`load_frozen_autoencoder`).
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
    ae_sha = _sha256(autoencoder_ckpt_path)
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

    model = _unwrap(autoencoder)
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
    _save_atomic(
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


class SampleLatentd(Randomizable, MapTransform):
    """Draw a training latent from a cached posterior: ``image = scale_factor * (mu + sigma * eps)``.

    With ``flip_prob`` the mirrored view is used (when the cache holds it): the exact latent of the flipped image.

    Args:
        scale_factor: the latent scale factor (:attr:`LatentCache.scale_factor`).
        flip_prob: probability of the mirrored view.
        sample: draw from the posterior (True) or use its mean (False: deterministic, for validation).
        mu_key, sigma_key, output_key: dictionary keys.
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
        self.scale_factor = float(scale_factor)
        self.flip_prob = float(flip_prob)
        self.sample = bool(sample)
        self.mu_key, self.sigma_key, self.output_key = mu_key, sigma_key, output_key
        self._view = 0
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._view = int(self.R.random_sample() < self.flip_prob)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        mu, sigma = torch.as_tensor(d.pop(self.mu_key)), torch.as_tensor(d.pop(self.sigma_key))
        view = min(self._view, mu.shape[0] - 1)
        z = mu[view]
        if self.sample:
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(self._seed))
            z = z + sigma[view] * noise
        d[self.output_key] = (z * self.scale_factor).float()
        return d


class LatentInfoWriter:
    """Write ``latent.json`` (scale factor, autoencoder checksum, latent shape) when training starts.

    Inference reads it (:func:`read_latent_info`), so sampling divides by the same scale factor the diffusion model
    was trained with, and refuses an autoencoder other than the one that encoded the training latents.

    Args:
        path: the JSON file (``models/latent.json``).
        cache: the training split's :class:`LatentCache`.
    """

    def __init__(self, path: str | PathLike, cache: LatentCache) -> None:
        self.path = Path(path)
        self.cache = cache

    def info(self) -> dict[str, Any]:
        return {
            "scale_factor": self.cache.scale_factor,
            "autoencoder_sha256": self.cache.autoencoder_sha256,
            "latent_shape": [int(s) for s in self.cache.mu.shape[2:]],
            "num_training_images": len(self.cache),
            "latent_cache": self.cache.path.name,
        }

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.info(), indent=2) + "\n")
        os.replace(tmp, self.path)
        logger.info("latent scale factor %.5f written to %s", self.cache.scale_factor, self.path)


def read_latent_info(path: str | PathLike, autoencoder_ckpt_path: str | PathLike | None = None) -> dict[str, Any]:
    """Read ``latent.json`` written by diffusion training, checking it belongs to the given autoencoder.

    Raises:
        GeneratorError: the file is missing or malformed, or the autoencoder checkpoint is not the one the
            diffusion model was trained on.
    """
    from medicraft_monai.synthesis.generator import GeneratorError

    p = Path(path)
    if not p.is_file():
        raise GeneratorError(
            f"{p}: latent.json not found (it holds the latent scale factor); train the diffusion stage first "
            "(configs/train.json) or set --latent_info_path"
        )
    try:
        info = json.loads(p.read_text())
        scale = float(info["scale_factor"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GeneratorError(f"{p}: malformed latent.json ({err})") from None
    if not scale > 0:
        raise GeneratorError(f"{p}: the scale factor must be positive, got {scale}")
    if autoencoder_ckpt_path is not None:
        ae = Path(autoencoder_ckpt_path)
        if not ae.is_file():
            raise GeneratorError(
                f"{ae}: autoencoder checkpoint not found (train stage 1 or set --autoencoder_ckpt_path)"
            )
        sha = _sha256(ae)
        if info.get("autoencoder_sha256") and info["autoencoder_sha256"] != sha:
            raise GeneratorError(
                f"{ae}: this autoencoder is not the one the diffusion model was trained with "
                f"(sha256 {sha[:12]}..., {p.name} expects {str(info['autoencoder_sha256'])[:12]}...)"
            )
    return info


def output_scalars(keys: Sequence[str], prefix: str = "train/") -> Any:
    """An output transform for ``StatsHandler``/``TensorBoardStatsHandler``: ``{prefix + key: float}`` per key.

    Reads a plain engine output dict or a decollated list of them (the first item).
    """

    def transform(output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, Sequence) and not isinstance(output, Mapping) else output
        return {f"{prefix}{k}": float(first[k]) for k in keys}

    return transform

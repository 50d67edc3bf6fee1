"""Ignite handlers for diffusion training: per-class sample grids in TensorBoard (and as PNG files), and the
diffusion settings written next to the weights (``diffusion.json``) so that sampling can check them."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medicraft_monai.inferers.conditional import ClassConditionedDiffusionInferer, seeded_noise
from medicraft_monai.visualize import image_grid

__all__ = ["ClassSampleGridHandler", "DiffusionSettingsWriter"]

logger = logging.getLogger(__name__)


class ClassSampleGridHandler:
    """Every ``interval`` epochs, sample a few images per class and log them as one grid (a row per class).

    The grid goes to TensorBoard (``summary_writer.add_image``) and, when ``output_dir`` is given, to
    ``output_dir/samples_epoch_XXXX.png``. Samples use fixed seeds, so grids of successive epochs are comparable.

    Args:
        network: the network to sample from (usually the EMA copy); switched to eval mode while sampling.
        inferer: the class-conditioned inferer; a latent one (with ``latent_shape``) gets its noise in latent space
            and its decoded images fill the grid at ``image_shape``.
        class_names: names of the real classes, in label order.
        image_shape: (C, H, W) of a sample.
        scheduler: sampling scheduler (default: the inferer's).
        num_inference_steps: sampling steps.
        per_class: images per class.
        guidance_scale: guidance weight (default: the inferer's).
        interval: epochs between grids.
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (or ``None``: PNG only).
        output_dir: folder for the PNG grids (or ``None``: TensorBoard only).
        tag: TensorBoard tag.
        seed: seed of the first sample; the others follow.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: ClassConditionedDiffusionInferer,
        class_names: Sequence[str],
        image_shape: Sequence[int],
        scheduler=None,
        num_inference_steps: int | None = None,
        per_class: int = 4,
        guidance_scale: float | None = None,
        interval: int = 1,
        summary_writer=None,
        output_dir: str | Path | None = None,
        tag: str = "samples_per_class",
        seed: int = 0,
    ) -> None:
        self.network = network
        self.inferer = inferer
        self.class_names = list(class_names)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.per_class = int(per_class)
        self.guidance_scale = guidance_scale
        self.interval = max(1, int(interval))
        self.summary_writer = summary_writer
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.tag = tag
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        """Run every ``interval`` epochs and once at the end of training."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._at_end)

    def _at_end(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval != 0:
            self(engine)

    def sample_grid(self, device: torch.device | str = "cpu") -> np.ndarray:
        """Sample ``per_class`` images of every class and return the grid as a uint8 (H, W) array."""
        labels = [c for c in range(len(self.class_names)) for _ in range(self.per_class)]
        seeds = [self.seed + i for i in range(len(labels))]
        # a latent inferer samples noise in its latent space and decodes to image_shape
        latent_shape = getattr(self.inferer, "latent_shape", None)
        shape = tuple(latent_shape(self.image_shape)) if callable(latent_shape) else self.image_shape
        noise, gens = seeded_noise(seeds, shape, device=device)
        was_training = self.network.training
        self.network.eval()
        try:
            images = self.inferer.sample(
                noise,
                self.network,
                labels,
                scheduler=self.scheduler,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generators=gens,
                verbose=False,
            )
        finally:
            self.network.train(was_training)
        shown = ((images.clamp(-1, 1) + 1) / 2).cpu().numpy()  # model space [-1, 1] -> [0, 1]
        rows = [list(shown[c * self.per_class : (c + 1) * self.per_class]) for c in range(len(self.class_names))]
        h, w = self.image_shape[-2:]
        return image_grid(rows, row_labels=self.class_names, tile_size=(h, w), pad=2, label_width=80)

    def __call__(self, engine: Engine) -> None:
        device = next(self.network.parameters()).device
        grid = self.sample_grid(device)
        epoch = engine.state.epoch
        if self.summary_writer is not None:
            self.summary_writer.add_image(self.tag, grid[None], global_step=epoch)
            self.summary_writer.flush()
        if self.output_dir is not None:
            from PIL import Image

            self.output_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(self.output_dir / f"samples_epoch_{epoch:04d}.png")
        logger.info("epoch %d: logged a %s sample grid", epoch, "x".join(map(str, grid.shape)))


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types: tuples become lists, numpy/torch scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        return value.item()
    if isinstance(value, (Sequence, np.ndarray, torch.Tensor)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"diffusion setting {where} = {value!r} ({type(value).__name__}) is not JSON-able")


class DiffusionSettingsWriter:
    """Write the settings a diffusion model is trained with (``diffusion.json``) when training starts.

    Weights sampled with another prediction type, noise schedule, number of training timesteps or class list than
    they were trained with give pure noise without any error; sampling therefore reads this file back
    (:func:`medicraft_monai.synthesis.generator.check_diffusion_settings`) and refuses a config that differs.
    Write it next to ``model.pt`` (the bundles' ``@ckpt_dir``). The file is replaced atomically.

    Args:
        path: the JSON file (``models/diffusion.json``).
        settings: JSON-able values (tuples are written as lists), e.g. ``{"prediction_type": "v_prediction",
            "noise_schedule": "linear_beta", "num_train_timesteps": 1000, "class_names": [...], "image_size":
            [128, 256]}``.
        resume: the run resumes from a checkpoint (the bundles' ``resume`` key). Then a ``diffusion.json``
            already there must hold the same settings: resuming weights trained with another prediction type,
            schedule or class list would mix two trainings and overwrite the record of the first, so training
            stops before the first iteration with an error that names the differing keys.

    Raises:
        TypeError: a setting that cannot be written as JSON.
        GeneratorError: (when training starts) resuming with settings other than the recorded ones.
    """

    def __init__(self, path: str | PathLike, settings: Mapping[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.resume = bool(resume)
        self.settings = _jsonable(dict(settings), "settings")
        json.dumps(self.settings)  # fail when the config is parsed, not when training starts

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if self.resume and self.path.is_file():
            from medicraft_monai.synthesis.generator import check_diffusion_settings

            check_diffusion_settings(
                self.path.parent, self.settings, use="resumes training with", settings_file=self.path
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.settings, indent=2) + "\n")
        os.replace(tmp, self.path)
        logger.info("diffusion settings written to %s", self.path)

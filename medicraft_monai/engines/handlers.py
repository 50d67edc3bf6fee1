"""Image-grid handlers: one base (:class:`ImageGridHandler`) draws a grid, adds it to TensorBoard and saves it as a
PNG file; :class:`ClassSampleGridHandler` draws per-class samples of a diffusion model.

The other members of the family draw reconstructions
(:class:`~medicraft_monai.engines.latent.ReconstructionGridHandler`) and restorations
(:class:`~medicraft_monai.ssl.handlers.RestorationImageHandler`).

The records written next to the weights (``diffusion.json``, ``latent.json``) are :mod:`medicraft_monai.engines.records`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medicraft_monai.inferers.conditional import ClassConditionedDiffusionInferer, seeded_noise
from medicraft_monai.utils import atomic_write
from medicraft_monai.visualize import image_grid

__all__ = ["ClassSampleGridHandler", "ImageGridHandler"]

logger = logging.getLogger(__name__)


class ImageGridHandler:
    """Base of the image-grid handlers: draw a grid, add it to TensorBoard and save it as a PNG file.

    A subclass chooses what to draw (:meth:`draw`, a uint8 (H, W) grid, or ``None`` to skip) and, if it must, when
    (:meth:`attach`; by default every ``interval`` epochs and once at the end of training) and under which file name
    (:attr:`png_name`). This base adds the grid to TensorBoard (``summary_writer.add_image``) with the engine's epoch
    as the step and, when ``output_dir`` is given, writes it atomically (a reader never sees a partial PNG).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (or ``None``: PNG only).
        output_dir: folder for the PNG grids (or ``None``: TensorBoard only).
        tag: TensorBoard tag.
        interval: epochs between grids.
    """

    #: file name of a grid in ``output_dir``, formatted with ``tag`` and ``step``
    png_name = "{tag}_epoch_{step:04d}.png"

    def __init__(
        self,
        summary_writer: Any = None,
        output_dir: str | PathLike | None = None,
        tag: str = "images",
        interval: int = 1,
    ) -> None:
        self.summary_writer = summary_writer
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.tag = tag
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        """Run every ``interval`` epochs and once at the end of training."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self._at_end)

    def _at_end(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval != 0:
            self(engine)

    def draw(self, engine: Engine) -> np.ndarray | None:
        """The uint8 (H, W) grid to log now, or ``None`` to log nothing."""
        raise NotImplementedError

    def log_grid(self, grid: np.ndarray, step: int) -> Path | None:
        """Add ``grid`` to TensorBoard at ``step`` and write it as a PNG file; return the file (if written)."""
        grid = np.asarray(grid).astype(np.uint8)
        if self.summary_writer is not None:
            self.summary_writer.add_image(self.tag, grid[None], global_step=step, dataformats="CHW")
            self.summary_writer.flush()
        if self.output_dir is None:
            return None
        from PIL import Image

        path = self.output_dir / self.png_name.format(tag=self.tag, step=step)
        return atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))

    def __call__(self, engine: Engine) -> None:
        grid = self.draw(engine)
        if grid is None:
            return
        step = int(engine.state.epoch)
        self.log_grid(grid, step)
        logger.info("epoch %d: logged a %s %s grid", step, "x".join(map(str, grid.shape)), self.tag)


class ClassSampleGridHandler(ImageGridHandler):
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

    png_name = "samples_epoch_{step:04d}.png"

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
        output_dir: str | PathLike | None = None,
        tag: str = "samples_per_class",
        seed: int = 0,
    ) -> None:
        super().__init__(summary_writer=summary_writer, output_dir=output_dir, tag=tag, interval=interval)
        self.network = network
        self.inferer = inferer
        self.class_names = list(class_names)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.per_class = int(per_class)
        self.guidance_scale = guidance_scale
        self.seed = int(seed)

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

    def draw(self, engine: Engine) -> np.ndarray:
        return self.sample_grid(next(self.network.parameters()).device)

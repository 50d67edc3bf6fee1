"""Ignite handlers for context restoration: before/after pictures in TensorBoard (and as PNG files), a member of the
image-grid family (:class:`~medicraft_monai.engines.handlers.ImageGridHandler` logs and saves what it draws)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medicraft_monai.engines.handlers import ImageGridHandler
from medicraft_monai.visualize import image_grid

__all__ = ["RestorationImageHandler"]


def _stack(value: Any, key: str) -> torch.Tensor | None:
    if isinstance(value, Mapping):
        v = value.get(key)
        return None if v is None else torch.as_tensor(v)
    if isinstance(value, Sequence) and value and isinstance(value[0], Mapping):
        parts = [torch.as_tensor(v[key]) for v in value if key in v]
        return torch.stack(parts) if parts else None
    return None


class RestorationImageHandler(ImageGridHandler):
    """At the first iteration of every run (a validation run, or each training epoch), log a picture of the batch:
    rows corrupted input, restored output (clipped to [0, 1]) and original.

    The step is the engine's epoch (for a MONAI evaluator run by ``ValidationHandler``, the trainer's epoch).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (``None``: PNG files only).
        max_images: images (columns) per picture.
        tag: the TensorBoard image tag.
        output_dir: also write ``<output_dir>/<tag>_epoch<N>.png`` when given.
        image_key, target_key, pred_key: batch and output keys of the corrupted, original and restored images.
    """

    png_name = "{tag}_epoch{step}.png"

    def __init__(
        self,
        summary_writer: Any = None,
        max_images: int = 4,
        tag: str = "restoration",
        output_dir: str | os.PathLike | None = None,
        image_key: str = "image",
        target_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        super().__init__(summary_writer=summary_writer, output_dir=output_dir, tag=tag)
        self.max_images = int(max_images)
        self.keys = (image_key, pred_key, target_key)

    def attach(self, engine: Engine) -> None:
        """Run after every iteration; :meth:`draw` keeps the first of each epoch."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def draw(self, engine: Engine) -> np.ndarray | None:
        length = engine.state.epoch_length or 0
        first_of_epoch = length > 0 and (engine.state.iteration - 1) % length == 0
        if not (first_of_epoch or engine.state.iteration == 1):
            return None
        image = _stack(engine.state.batch, self.keys[0])
        pred = _stack(engine.state.output, self.keys[1])
        target = _stack(engine.state.batch, self.keys[2])
        if image is None or pred is None or target is None:
            return None
        n = min(self.max_images, image.shape[0])
        rows = [[t[i, 0].detach().float().cpu().clamp(0, 1).numpy() for i in range(n)] for t in (image, pred, target)]
        h, w = rows[0][0].shape
        scale = max(1.0, 96.0 / h)
        return image_grid(rows, ["corrupted", "restored", "original"], tile_size=(int(h * scale), int(w * scale)))

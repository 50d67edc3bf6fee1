"""Prepare-batch callables for ignite/MONAI engines that train class-conditioned diffusion models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch

__all__ = ["ClassConditionedPrepareBatch"]


class ClassConditionedPrepareBatch(DiffusionPrepareBatch):
    """Draw timesteps and noise for a batch and pass its class labels, dropping some to the null class.

    Used as ``prepare_batch`` of a :class:`monai.engines.SupervisedTrainer` (or evaluator) together with
    :class:`medicraft_monai.inferers.ClassConditionedDiffusionInferer`: it returns the images as input, the
    noise as target, and ``noise``, ``timesteps`` and ``class_labels`` as the inferer's keyword arguments.

    Dropping a fraction of the labels to the null class during training is what makes classifier-free guidance
    possible at sampling time (Ho and Salimans, 2022).

    Args:
        num_train_timesteps: the scheduler's number of training steps (timesteps are drawn uniformly below it).
        null_class: the index of the "no class" embedding (usually the number of real classes).
        label_key: the batch key holding the (B,) or (B, 1) integer class labels.
        drop_prob: probability of replacing a label by ``null_class`` (0 disables; 0.1 to 0.2 is usual).
        seed: seed of the label-dropout generator (timesteps and noise follow torch's global generator, which
            MONAI's ``set_determinism`` controls).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        null_class: int,
        label_key: str = "label",
        drop_prob: float = 0.1,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        self.null_class = int(null_class)
        self.label_key = label_key
        self.drop_prob = float(drop_prob)
        self._gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def labels(self, batchdata: Mapping[str, Any]) -> torch.Tensor:
        """The batch's class labels as a (B,) long tensor, checked against the null class."""
        if self.label_key not in batchdata:
            raise KeyError(f"batch has no {self.label_key!r} key; class-conditioned training needs class labels")
        labels = torch.as_tensor(batchdata[self.label_key]).long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.null_class):
            raise ValueError(
                f"class labels must be in [0, {self.null_class - 1}] (the null class is {self.null_class}), "
                f"got {sorted(set(labels.tolist()))}"
            )
        return labels

    def drop(self, labels: torch.Tensor) -> torch.Tensor:
        """Replace each label by the null class with probability ``drop_prob``."""
        if self.drop_prob == 0.0:
            return labels
        mask = torch.rand(labels.shape, generator=self._gen) < self.drop_prob
        return torch.where(mask, torch.full_like(labels, self.null_class), labels)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images, target, args, infer_kwargs = super().__call__(batchdata, device, non_blocking, **kwargs)
        labels = self.drop(self.labels(batchdata))
        infer_kwargs["class_labels"] = labels.to(device=images.device, non_blocking=non_blocking)
        return images, target, args, infer_kwargs

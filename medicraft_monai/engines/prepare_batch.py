"""Prepare-batch callables for ignite/MONAI engines that train class-conditioned diffusion models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch

__all__ = ["PREDICTION_TYPES", "ClassConditionedPrepareBatch"]

#: what a diffusion network may be trained to predict (MONAI's ``DDPMPredictionType`` values)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


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
        prediction_type: what the network learns to predict, and so the loss target: "epsilon" (the noise),
            "v_prediction" (the velocity ``sqrt(a) * noise - sqrt(1 - a) * image``, Salimans and Ho, 2022; needs
            ``scheduler``) or "sample" (the clean image). The sampling schedulers must be built with the same value.
        scheduler: the training noise scheduler (only used for "v_prediction", through its ``get_velocity``).
    """

    def __init__(
        self,
        num_train_timesteps: int,
        null_class: int,
        label_key: str = "label",
        drop_prob: float = 0.1,
        seed: int | None = None,
        prediction_type: str = "epsilon",
        scheduler: Any = None,
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")
        if prediction_type == "v_prediction" and not callable(getattr(scheduler, "get_velocity", None)):
            raise ValueError("prediction_type 'v_prediction' needs the training scheduler (with get_velocity)")
        self.prediction_type = prediction_type
        self.scheduler = scheduler
        self.null_class = int(null_class)
        self.label_key = label_key
        self.drop_prob = float(drop_prob)
        self._gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The loss target for ``prediction_type``: the noise, the velocity or the clean image."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        if self.prediction_type == "sample":
            return images
        return noise

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

"""Fine-tuning helpers: load pretrained encoder weights, freeze them, subsample labels by patient.

Checkpoints are read by the one checkpoint loader (:func:`medicraft_monai.networks.checkpoint.load_state_dict`).

Bundle configs call these as ``$medicraft_monai.ssl.<name>(...)``; the label-efficiency study
(:mod:`medicraft_monai.evaluation.label_efficiency`) runs those configs.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.networks.checkpoint import load_state_dict

from .networks import ENCODER_PREFIXES

__all__ = [
    "classification_output",
    "encoder_module",
    "load_pretrained",
    "subsample_by_patient",
    "trainable_parameters",
]

logger = logging.getLogger(__name__)

#: how the pretrained checkpoint is named in messages, and how to get one
_PRETRAINED = ("pretrained checkpoint", "set pretrained_ckpt to a context-restoration model.pt")


def encoder_module(network: nn.Module) -> nn.Module:
    """The module holding the encoder's ``conv_0``/``down_*`` layers: ``network.encoder`` if there is one, else
    the network itself (a BasicUNet); DistributedDataParallel is unwrapped."""
    net = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    enc = getattr(net, "encoder", None)
    target = enc if isinstance(enc, nn.Module) else net
    if not hasattr(target, "conv_0") or not hasattr(target, "down_4"):
        raise TypeError(f"{type(net).__name__} has no BasicUNet encoder (conv_0, down_1..down_4)")
    return target


def load_pretrained(
    network: nn.Module,
    ckpt_path: str | os.PathLike | None,
    part: str = "encoder",
    freeze: bool | str = False,
) -> nn.Module:
    """Load context-restoration weights into ``network`` (in place) and optionally freeze the encoder.

    Args:
        network: an :class:`~medicraft_monai.ssl.networks.EncoderClassifier` (its ``encoder`` is filled) or a
            BasicUNet / :class:`~medicraft_monai.ssl.networks.ContextRestorationNet` (segmentation).
        ckpt_path: the pretrained checkpoint; ``None`` or ``""``: nothing is loaded (training from scratch).
        part: ``"encoder"`` (the contracting path only) or ``"all"`` (for a BasicUNet: every tensor whose shape
            matches, i.e. the decoder too, except an output layer with another number of channels).
        freeze: keep the encoder's weights fixed (``requires_grad=False``; build the optimiser from
            :func:`trainable_parameters`).

    Returns:
        ``network``.

    Raises:
        OCTDataError: an unreadable checkpoint, or one without (matching) encoder weights.
    """
    from medicraft_monai.utils import flag

    if part not in ("encoder", "all"):
        raise ValueError(f"part must be 'encoder' or 'all', got {part!r}")
    target = encoder_module(network)
    if ckpt_path:
        state = load_state_dict(ckpt_path, *_PRETRAINED)
        # a fine-tuned classifier's checkpoint works too: its encoder keys start with "encoder."
        state = {(k[len("encoder.") :] if k.startswith("encoder.") else k): v for k, v in state.items()}
        own = target.state_dict()
        if part == "encoder":
            wanted = {k for k in own if k.startswith(ENCODER_PREFIXES)}
        else:
            wanted = {k for k in own if k in state and tuple(state[k].shape) == tuple(own[k].shape)}
            skipped = sorted(k for k in own if k not in wanted)
            if skipped:
                logger.info("%s: not loaded (absent or another shape): %s", ckpt_path, skipped)
        missing = sorted(k for k in own if k.startswith(ENCODER_PREFIXES) and k not in state)
        if missing:
            raise OCTDataError(
                ckpt_path,
                f"no encoder weights {missing[:3]} ... ({len(missing)} missing): not a context-restoration "
                "(BasicUNet) checkpoint",
            )
        bad = sorted(k for k in wanted if tuple(state[k].shape) != tuple(own[k].shape))
        if bad:
            raise OCTDataError(
                ckpt_path,
                f"encoder weight {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, the network expects "
                f"{tuple(own[bad[0]].shape)}: use the same 'features' as the pretraining",
            )
        target.load_state_dict({k: state[k] for k in wanted}, strict=False)
        logger.info("loaded %d pretrained tensors (%s) from %s", len(wanted), part, ckpt_path)
    else:
        logger.info("no pretrained_ckpt: training from scratch")
    if flag(freeze):
        n = 0
        for name, p in target.named_parameters():
            if name.startswith(ENCODER_PREFIXES):
                p.requires_grad_(False)
                n += p.numel()
        logger.info("froze the encoder (%d parameters)", n)
    return network


def trainable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters that require gradients (for the optimiser when the encoder is frozen)."""
    return [p for p in network.parameters() if p.requires_grad]


def subsample_by_patient(
    items: Sequence[Mapping[str, Any]],
    fraction: float,
    seed: int = 0,
    label_key: str = OCTKeys.LABEL,
    patient_key: str = OCTKeys.PATIENT_ID,
) -> list[dict[str, Any]]:
    """Keep the images of a seeded, class-stratified ``fraction`` of the patients.

    Patients are grouped by their most frequent label; in each group ``ceil(fraction * n)`` patients are drawn
    (at least one), so every class stays present. All images of a drawn patient are kept; item order is kept.

    Args:
        items: datalist items (with labels and patient ids).
        fraction: in (0, 1]; 1 keeps everything.
        seed: seed of the draw (the same seed gives the same patients; for a fixed seed, a smaller fraction's
            patients are a subset of a larger one's).

    Raises:
        ValueError: a fraction outside (0, 1].
        EmptyDatasetError: no items.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not items:
        raise EmptyDatasetError(None, "subsample_by_patient: no items")
    labels_of: dict[str, Counter] = defaultdict(Counter)
    for it in items:
        labels_of[str(it.get(patient_key, ""))][it[label_key]] += 1
    groups: dict[Any, list[str]] = defaultdict(list)
    for pid, counts in labels_of.items():
        top = min(counts, key=lambda lab: (-counts[lab], str(lab)))  # most frequent, ties by name
        groups[top].append(pid)
    keep: set[str] = set()
    for label in sorted(groups, key=str):
        pids = sorted(groups[label])
        rng = np.random.default_rng([int(seed), len(str(label)), *map(ord, str(label))])
        order = [pids[i] for i in rng.permutation(len(pids))]
        keep.update(order[: max(1, math.ceil(fraction * len(pids) - 1e-9))])
    return [dict(it) for it in items if str(it.get(patient_key, "")) in keep]


def classification_output(num_classes: int | None = None, onehot: bool = False):
    """An ``output_transform`` for classification metrics of a MONAI evaluator (decollated output).

    Returns a function mapping the engine's output (a list of per-item dicts with ``pred`` logits and an integer
    ``label``) to batched ``(softmax probabilities (B, C), labels)``: labels as (B,) integers (ignite's
    ``Accuracy``), or one-hot (B, C) with ``onehot`` (MONAI's ``ROCAUC``).
    """

    def transform(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        items = output if isinstance(output, Sequence) else [output]
        pred = torch.stack([torch.as_tensor(o["pred"]).float().reshape(-1) for o in items])
        label = torch.stack([torch.as_tensor(o["label"]).long().reshape(()) for o in items])
        prob = torch.softmax(pred, dim=1)
        if onehot:
            return prob, torch.nn.functional.one_hot(label, int(num_classes or pred.shape[1])).float()
        return prob, label

    return transform

"""Restoration quality (SSIM, MS-SSIM with :mod:`monai.metrics`), before/after pictures, and the encoder export.

- :func:`ms_ssim_metric`: a :class:`~monai.metrics.MultiScaleSSIMMetric` with as many scales as the image size
  allows (MS-SSIM's default five scales need images over 160 pixels).
- :func:`restoration_report`: run a restoration network over a data loader of (corrupted ``image``, original
  ``label``) pairs; write the SSIM/MS-SSIM of the corrupted and the restored images against the originals, and a
  picture (corrupted, restored, original).
- :func:`export_encoder`: the pretrained encoder as a TorchScript file mapping (B, 1, H, W) images in [0, 1] to
  (B, D) pooled features (a domain-trained feature extractor for Frechet distances).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric, SSIMMetric
from torch import nn
from tqdm.auto import tqdm

from medicraft_monai.metrics.diversity import ms_ssim_settings
from medicraft_monai.networks.checkpoint import load_state_dict
from medicraft_monai.utils import atomic_write, write_json_atomic

from .networks import ENCODER_PREFIXES, BasicUNetEncoder, PooledEncoder, features_from_state_dict

__all__ = [
    "ENCODER_META_FILE",
    "export_encoder",
    "load_encoder_meta",
    "ms_ssim_metric",
    "ms_ssim_weights",
    "restoration_report",
    "ssim_metric",
]

logger = logging.getLogger(__name__)

ENCODER_META_FILE = "medicraft_encoder.json"
"""Name of the JSON description stored inside an exported encoder (``torch.jit.load(..., _extra_files=...)``)."""


def ms_ssim_weights(image_size: Sequence[int], kernel_size: int = 7) -> tuple[float, ...]:
    """MS-SSIM scale weights (Wang et al. 2003, renormalised) for as many scales as ``image_size`` allows.

    The scale choice is :func:`medicraft_monai.metrics.diversity.ms_ssim_settings` (the one home of it).
    """
    return tuple(ms_ssim_settings(tuple(image_size), kernel_size)["weights"])


def ssim_metric(kernel_size: int = 7) -> SSIMMetric:
    """2-D SSIM of images in [0, 1] (Gaussian window ``kernel_size``, sigma 1.5)."""
    return SSIMMetric(spatial_dims=2, data_range=1.0, win_size=int(kernel_size))


def ms_ssim_metric(image_size: Sequence[int], kernel_size: int = 7) -> MultiScaleSSIMMetric:
    """2-D MS-SSIM of images in [0, 1] with the scales :func:`ms_ssim_weights` allows for ``image_size``."""
    return MultiScaleSSIMMetric(
        spatial_dims=2, data_range=1.0, kernel_size=int(kernel_size), weights=ms_ssim_weights(image_size, kernel_size)
    )


@torch.no_grad()
def restoration_report(
    network: nn.Module,
    data: Iterable[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    kernel_size: int = 7,
    max_pictures: int = 6,
    image_key: str = "image",
    target_key: str = "label",
) -> dict[str, Any]:
    """Restore corrupted images and measure SSIM/MS-SSIM against the originals; write metrics and a picture.

    Args:
        network: the restoration network (eval mode is set here).
        data: batches (a DataLoader) of dicts with the corrupted ``image_key`` and the original ``target_key``,
            (B, 1, H, W) in [0, 1].
        output_dir: gets ``restoration_metrics.json`` (means and per-image values) and ``before_after.png`` (rows:
            corrupted, restored, original).
        device: where to run.
        kernel_size: SSIM window.
        max_pictures: images shown in the picture.

    Returns:
        ``{"n_images", "ssim_corrupted", "ssim_restored", "ms_ssim_corrupted", "ms_ssim_restored", "mse_corrupted",
        "mse_restored", "per_image": [...]}`` (means over the images).
    """
    from medicraft_monai.visualize import save_image_grid

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    network = network.to(device).eval()
    rows: list[list[np.ndarray]] = [[], [], []]
    per_image: list[dict[str, Any]] = []
    ssim = ssim_metric(kernel_size)
    ms_ssim: MultiScaleSSIMMetric | None = None
    for batch in tqdm(data, desc="restoring", leave=False):
        x = torch.as_tensor(batch[image_key]).float().to(device)
        y = torch.as_tensor(batch[target_key]).float().to(device)
        pred = network(x).float().clamp(0.0, 1.0)
        if ms_ssim is None:
            ms_ssim = ms_ssim_metric(x.shape[2:], kernel_size)
        values = {
            "ssim_corrupted": ssim(x, y).flatten(),
            "ssim_restored": ssim(pred, y).flatten(),
            "ms_ssim_corrupted": ms_ssim(x, y).flatten(),
            "ms_ssim_restored": ms_ssim(pred, y).flatten(),
            "mse_corrupted": ((x - y) ** 2).flatten(1).mean(1),
            "mse_restored": ((pred - y) ** 2).flatten(1).mean(1),
        }
        names = batch.get("image_meta_dict", {}).get("filename_or_obj") if isinstance(batch, Mapping) else None
        if names is None and hasattr(batch[image_key], "meta"):
            names = batch[image_key].meta.get("filename_or_obj")
        for i in range(x.shape[0]):
            rec = {k: float(v[i]) for k, v in values.items()}
            if isinstance(names, (list, tuple)) and i < len(names):
                rec["image"] = str(names[i])
            per_image.append(rec)
            if len(rows[0]) < max_pictures:
                for r, t in enumerate((x, pred, y)):
                    rows[r].append(t[i, 0].cpu().numpy())
    if not per_image:
        raise ValueError("restoration_report: no images")
    keys = [k for k in per_image[0] if k != "image"]
    report: dict[str, Any] = {"n_images": len(per_image)}
    report.update({k: float(np.mean([p[k] for p in per_image])) for k in keys})
    report["per_image"] = per_image
    write_json_atomic(out / "restoration_metrics.json", report, indent=1)
    h, w = rows[0][0].shape
    scale = max(1.0, 128.0 / h)
    save_image_grid(
        out / "before_after.png",
        rows,
        row_labels=["corrupted", "restored", "original"],
        tile_size=(int(h * scale), int(w * scale)),
    )
    logger.info(
        "restoration on %d images: SSIM %.4f -> %.4f, MS-SSIM %.4f -> %.4f (corrupted -> restored)",
        len(per_image),
        report["ssim_corrupted"],
        report["ssim_restored"],
        report["ms_ssim_corrupted"],
        report["ms_ssim_restored"],
    )
    return report


def export_encoder(
    ckpt_path: str | os.PathLike,
    path: str | os.PathLike,
    input_size: Sequence[int] | None = None,
    in_channels: int = 1,
    example_size: Sequence[int] = (64, 128),
    encoder_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Export a pretrained encoder as TorchScript: (B, 1, H, W) images in [0, 1] -> (B, D) pooled features.

    The encoder is built from the checkpoint's own weight shapes (the feature counts need not be given), loaded,
    wrapped in :class:`PooledEncoder` (resize to ``input_size`` when given, the encoder, global average pooling),
    traced, checked against the eager module at another batch size and image size, and saved with a JSON
    description (:data:`ENCODER_META_FILE`: feature dimension, input size and range, source checkpoint).

    Args:
        ckpt_path: a context-restoration checkpoint (``model.pt``), or a fine-tuned classifier's.
        path: the TorchScript file to write (for example ``models/encoder.ts``).
        input_size: (H, W) images are resized to inside the module (the pretraining ``image_size``); ``None``:
            no resize (any size works, the features then depend on the scale).
        in_channels: image channels.
        example_size: (H, W) of the tracing example.
        encoder_kwargs: other :class:`BasicUNetEncoder` arguments (``act``, ``norm``) when they differ from the
            defaults.

    Returns:
        the written path.
    """
    state = load_state_dict(ckpt_path, "context-restoration checkpoint")
    state = {(k[len("encoder.") :] if k.startswith("encoder.") else k): v for k, v in state.items()}
    try:
        features = features_from_state_dict(state)
    except KeyError as err:
        from medicraft_monai.data.errors import OCTDataError

        raise OCTDataError(ckpt_path, f"cannot export an encoder: {err.args[0]}") from None
    encoder = BasicUNetEncoder(in_channels=in_channels, features=features, **dict(encoder_kwargs or {}))
    encoder.load_state_dict({k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)})
    module = PooledEncoder(encoder, input_size).eval()
    size = [int(s) for s in (input_size or example_size)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), warnings.catch_warnings():
        # instance norm checks the batch size with a Python `if` on a traced value; the trace is checked below
        warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, torch.rand(2, in_channels, *size, generator=gen), check_trace=False)
        other = [max(16, s // 2 + 8) for s in size]  # another size (and batch) than the trace's
        check = torch.rand(3, in_channels, *other, generator=gen)
        torch.testing.assert_close(traced(check), module(check), rtol=1e-4, atol=1e-4)
    meta = {
        "feature_dim": int(features[4]),
        "in_channels": int(in_channels),
        "input_size": None if input_size is None else [int(s) for s in input_size],
        "value_range": [0.0, 1.0],
        "features": list(features),
        "source_checkpoint": os.path.abspath(ckpt_path),
        "description": "medicraft_monai context-restoration encoder: (B, C, H, W) in [0, 1] -> (B, D) features",
    }
    out = atomic_write(
        path, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files={ENCODER_META_FILE: json.dumps(meta)})
    )
    logger.info("exported the encoder (%d features) to %s", features[4], out)
    return out


def load_encoder_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description stored in an encoder exported by :func:`export_encoder`."""
    files = {ENCODER_META_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    text = files[ENCODER_META_FILE]
    return json.loads(text) if text else {}

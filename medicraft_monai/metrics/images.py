"""Load real and synthetic B-scans for evaluation into one tensor.

Every metric of :mod:`medicraft_monai.metrics` compares images that went through the *same* preprocessing as
the generators' training data (``bundles/oct_ddpm/configs/train.json``): read the file, scale the intensity to
[0, 1], optionally crop a fixed number of rows around the retina, and resize to the model's size keeping the wide
OCT aspect. :func:`evaluation_transform` is that chain (without the diffusion model's [-1, 1] rescaling) and
:func:`load_images` runs it over a datalist, giving a ``(N, 1, H, W)`` float32 tensor in [0, 1].
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any

import torch
from monai.transforms import Compose, EnsureTyped
from tqdm import tqdm

from medicraft_monai.data.errors import OCTDataError
from medicraft_monai.data.io import LoadOCTImaged
from medicraft_monai.transforms import OCTResized, RetinaCropd, ScaleOCTIntensityd

__all__ = ["evaluation_transform", "load_images"]

_PROGRESS_MIN = 16  # fewer items than this: no progress bar


def evaluation_transform(
    image_size: Sequence[int],
    crop_height: int | None = None,
    intensity_mode: str = "auto",
    resize_mode: str = "fit",
    keys: str = "image",
) -> Compose:
    """The evaluation preprocessing of one datalist item: the generators' training transform, in [0, 1].

    ``LoadOCTImaged`` -> ``ScaleOCTIntensityd`` -> (``RetinaCropd(height=crop_height, oversize="crop")`` when
    ``crop_height`` is given) -> ``OCTResized(image_size, mode=resize_mode)`` -> float32 tensor without metadata.

    Args:
        image_size: output (H, W), for example the diffusion bundle's ``image_size``.
        crop_height: rows kept around the retina before resizing (the bundle's ``crop_height``); ``None``: no crop.
        intensity_mode: mode of :class:`~medicraft_monai.transforms.ScaleOCTIntensity`.
        resize_mode: ``"fit"`` (keep the aspect, pad), ``"crop"`` (centre cut to the aspect) or ``"stretch"``.
        keys: the item key holding the image path.
    """
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size}")
    transforms: list[Any] = [
        LoadOCTImaged(keys=keys),
        ScaleOCTIntensityd(keys=keys, mode=intensity_mode),
    ]
    if crop_height is not None:
        transforms.append(RetinaCropd(keys=keys, height=int(crop_height), oversize="crop"))
    transforms += [
        OCTResized(keys=keys, spatial_size=size, mode=resize_mode),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(transforms)


def _root_cause(err: BaseException) -> BaseException:
    """The project's error behind MONAI's ``RuntimeError("applying transform ...")`` wrappers, if any."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OCTDataError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return err


def _as_items(items_or_paths: Iterable[Mapping[str, Any] | str | PathLike], key: str) -> list[dict[str, Any]]:
    items = []
    for entry in items_or_paths:
        if isinstance(entry, Mapping):
            if key not in entry:
                raise ValueError(f"datalist item without {key!r}: {dict(entry)}")
            items.append(dict(entry))
        else:
            items.append({key: str(entry)})
    return items


def load_images(
    items_or_paths: Iterable[Mapping[str, Any] | str | PathLike],
    image_size: Sequence[int],
    crop_height: int | None = None,
    progress: bool = True,
    skip_bad: bool = False,
    skipped: list[dict[str, Any]] | None = None,
    intensity_mode: str = "auto",
    resize_mode: str = "fit",
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Load and preprocess B-scans (see :func:`evaluation_transform`) into one ``(N, 1, H, W)`` tensor in [0, 1].

    Args:
        items_or_paths: datalist items (dicts with ``"image"`` and usually ``"label"``, ``"patient_id"``,
            ``"frame"``) or plain paths.
        image_size: output (H, W).
        crop_height: rows kept around the retina (``None``: no crop).
        progress: show a progress bar (for 16 items or more).
        skip_bad: leave files that cannot be read out (with a warning naming them) instead of raising.
        skipped: a list that receives ``{**item, "error": message}`` for every file left out.
        intensity_mode: see :class:`~medicraft_monai.transforms.ScaleOCTIntensity`.
        resize_mode: ``"fit"``, ``"crop"`` or ``"stretch"``.

    Returns:
        ``(images, items)``: the images and, in the same order, the items they came from (copies; paths given
        as strings become ``{"image": path}``).

    Raises:
        OCTDataError: a file cannot be read or prepared (the message names it), unless ``skip_bad``.
        ValueError: nothing was given, or every file was bad.
    """
    key = "image"
    items = _as_items(items_or_paths, key)
    if not items:
        raise ValueError("load_images: no images given")
    transform = evaluation_transform(image_size, crop_height, intensity_mode, resize_mode, keys=key)
    images: list[torch.Tensor] = []
    kept: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    bar = tqdm(items, desc="loading images", unit="image", disable=not progress or len(items) < _PROGRESS_MIN)
    for item in bar:
        try:
            out = transform(dict(item))
        except Exception as err:  # noqa: BLE001 - every failure is reported with the file's name
            cause = _root_cause(err)
            error = (
                cause
                if isinstance(cause, OCTDataError)
                else OCTDataError(item[key], f"cannot be prepared for evaluation: {type(cause).__name__}: {cause}")
            )
            if not skip_bad:
                raise error from err
            bad.append({**item, "error": str(error)})
            continue
        images.append(torch.as_tensor(out[key], dtype=torch.float32).clamp_(0.0, 1.0))
        kept.append(item)
    if bad:
        warnings.warn(f"load_images: {len(bad)} file(s) left out: " + "; ".join(b["error"] for b in bad), stacklevel=2)
        if skipped is not None:
            skipped.extend(bad)
    if not images:
        raise ValueError(f"load_images: none of the {len(items)} file(s) could be loaded")
    return torch.stack(images), kept

"""Unlabelled images for pretraining: mix datalists (real, phantom, synthetic) as the user chooses.

:func:`unlabelled_items` takes a list of *sources*, each a datalist JSON path or a dict::

    {"datalist": "real/datalist.json", "fraction": 1.0}          every training image of a real data set
    {"datalist": "synthetic/datalist.json", "fraction": 0.5}      half of the synthetic images (seeded draw)
    {"phantom_exams": 12, "dir": "data/phantom", "seed": 0}        phantom B-scans, written on first use

and returns the items of the requested split (labels are kept but not needed). :func:`oct_preprocessing` is the
deterministic loading chain the bundle configs spell out in JSON, for Python callers (the label-efficiency
experiment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, SelectItemsd

from medicraft_monai.data.datalist import build_datalist, load_datalist
from medicraft_monai.data.errors import EmptyDatasetError, OCTDataError
from medicraft_monai.data.io import LoadOCTImaged
from medicraft_monai.data.keys import OCTKeys
from medicraft_monai.transforms import OCTResized, RetinaCropd, ScaleOCTIntensityd

__all__ = ["load_items", "oct_preprocessing", "preprocess_items", "unlabelled_items"]


def load_items(source: str | os.PathLike | Mapping[str, Any], split: str | None = None) -> Any:
    """A datalist (dict) from a datalist JSON, a dict already loaded, or a data folder/CSV (built with
    :func:`~medicraft_monai.data.build_datalist`, seed 0); with ``split``, that split's items."""
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        p = Path(source)
        if p.suffix.lower() == ".json":
            data = load_datalist(p)
        elif p.exists():
            data = build_datalist(p, check_images=False)
        else:
            raise OCTDataError(p, "datalist or data folder not found")
    if split is None:
        return data
    return list(data.get(split) or [])


def _phantom_items(spec: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    from medicraft_monai.data.datalist import split_by_patient, write_datalist
    from medicraft_monai.data.phantom import PhantomConfig, write_phantom_dataset

    folder = Path(spec.get("dir") or "phantom")
    path = folder / "datalist.json"
    if not path.is_file():
        cfg = PhantomConfig(height=int(spec.get("height", 256)), width=int(spec.get("width", 512)))
        items = write_phantom_dataset(folder, int(spec["phantom_exams"]), seed=int(spec.get("seed", 0)), config=cfg)
        for it in items:
            it[OCTKeys.IMAGE] = str((folder / it[OCTKeys.IMAGE]).resolve())
        splits = split_by_patient(items, spec.get("fractions", (0.8, 0.2, 0.0)), int(spec.get("seed", 0)))
        write_datalist(path, {"name": "phantom", "labels": {}, **splits})
    return list(load_datalist(path, split, check=False))


def unlabelled_items(
    sources: Sequence[str | os.PathLike | Mapping[str, Any]] | str | os.PathLike,
    split: str = "training",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Images of ``split`` from every source, each source subsampled by its ``fraction`` (seeded).

    Args:
        sources: datalist paths, or dicts with ``datalist`` (path) and optional ``fraction`` (0..1], ``splits``
            (which of the source's splits count as ``split``, e.g. ``{"training": ["training", "test"]}``), or
            ``phantom_exams`` with ``dir`` (and ``seed``, ``height``, ``width``) for phantom B-scans made on
            first use.
        split: ``"training"`` or ``"validation"``.
        seed: seed of the subsampling.

    Returns:
        items with ``image`` (absolute) and ``frame`` and a ``source`` index.

    Raises:
        EmptyDatasetError: no image at all.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[dict[str, Any]] = []
    for i, src in enumerate(sources):
        spec: Mapping[str, Any] = src if isinstance(src, Mapping) else {"datalist": src}
        if "phantom_exams" in spec:
            items = _phantom_items(spec, split)
        else:
            data = load_items(spec["datalist"])
            names = (spec.get("splits") or {}).get(split, [split])
            items = [it for name in names for it in (data.get(name) or [])]
        fraction = float(spec.get("fraction", 1.0))
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"source {i}: fraction must be in (0, 1], got {fraction}")
        if fraction < 1.0 and items:
            rng = np.random.default_rng([int(seed), i])
            keep = sorted(rng.choice(len(items), max(1, round(fraction * len(items))), replace=False))
            items = [items[k] for k in keep]
        out += [
            {OCTKeys.IMAGE: it[OCTKeys.IMAGE], OCTKeys.FRAME: int(it.get(OCTKeys.FRAME) or 0), "source": i}
            for it in items
        ]
    if not out:
        raise EmptyDatasetError(None, f"no {split!r} images in the pretraining sources {list(sources)}")
    return out


def oct_preprocessing(
    image_size: Sequence[int] = (64, 128),
    crop_height: int | None = 256,
    intensity_mode: str = "auto",
    resize_mode: str = "fit",
    keys: Sequence[str] = (OCTKeys.IMAGE,),
) -> Compose:
    """Load, scale to [0, 1], crop around the retina (``crop_height`` rows; ``None``: no crop), resize."""
    keys = list(keys)
    chain: list[Any] = [
        LoadOCTImaged(keys=keys),
        SelectItemsd(keys=[*keys, OCTKeys.LABEL], allow_missing_keys=True),
        ScaleOCTIntensityd(keys=keys, mode=intensity_mode),
    ]
    if crop_height:
        chain.append(RetinaCropd(keys=keys, height=int(crop_height), oversize="crop"))
    chain += [
        OCTResized(keys=keys, spatial_size=[int(s) for s in image_size], mode=resize_mode),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(chain)


def preprocess_items(items: Sequence[Mapping[str, Any]], transform: Compose, progress: bool = True) -> torch.Tensor:
    """Apply ``transform`` to every item and stack the images: (N, 1, H, W) float32."""
    from tqdm.auto import tqdm

    images = [transform(dict(it))[OCTKeys.IMAGE] for it in tqdm(items, desc="loading", disable=not progress)]
    if not images:
        raise EmptyDatasetError(None, "no images to preprocess")
    return torch.stack([torch.as_tensor(im, dtype=torch.float32) for im in images])

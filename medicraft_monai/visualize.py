"""Pictures people would rather look at than read: labelled image grids saved as PNG.

Only Pillow is used here (a core dependency), so the demo and the bundles can draw grids without matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["image_grid", "save_image_grid", "to_uint8"]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Map a 2-D (H, W) or channel-first (1, H, W) image to uint8 for display.

    Integer images are scaled by their type's range (uint16 by 65535), float images are assumed to be in
    [0, 1] and clipped.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image or (1, H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255.0 + 0.5).astype(np.uint8)
    return (np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    tile_size: tuple[int, int] = (128, 256),
    pad: int = 4,
    label_width: int = 110,
) -> np.ndarray:
    """Arrange images in a grid, one row per group (for example one row per class), with row labels.

    Args:
        rows: a sequence of rows, each a sequence of images (see :func:`to_uint8`); rows may differ in length.
        row_labels: one text per row, drawn at the left.
        tile_size: (height, width) every image is resized to (OCT B-scans are wide: 128 x 256 by default).
        pad: pixels between tiles.
        label_width: width of the label column in pixels (0 when there are no labels).

    Returns:
        the grid as a uint8 (H, W) array.
    """
    if not rows:
        raise ValueError("image_grid needs at least one row")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    th, tw = tile_size
    n_cols = max((len(r) for r in rows), default=0)
    left = label_width if row_labels is not None else 0
    height = len(rows) * (th + pad) + pad
    width = left + max(n_cols, 1) * (tw + pad) + pad
    canvas = Image.new("L", (width, height), color=255)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        y = pad + r * (th + pad)
        if row_labels is not None:
            draw.text((pad, y + th // 2 - 6), str(row_labels[r]), fill=0, font=font)
        for c, image in enumerate(row):
            tile = Image.fromarray(to_uint8(image)).resize((tw, th), Image.Resampling.BILINEAR)
            canvas.paste(tile, (left + pad + c * (tw + pad), y))
    return np.asarray(canvas)


def save_image_grid(
    path: str | PathLike,
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    **kwargs,
) -> Path:
    """Draw :func:`image_grid` and save it as a PNG; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(rows, row_labels, **kwargs)).save(out)
    return out

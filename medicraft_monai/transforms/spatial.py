"""Spatial OCT transforms: laterality-aware left-right flip, and a resize that keeps the wide B-scan aspect.

Images are channel-first (C, H, W) in display order (H = depth, W = A-scans), so the left-right flip is along
the last axis (MONAI spatial axis 1).

Plane angle convention (see the project design): degrees in [0, 360), the direction of the scan line from the
first to the last column in the en-face view seen from the front, counter-clockwise from the viewer's right. A
left-right flip that also swaps the laterality maps the angle ``a`` to ``(-a) mod 360``: a right eye scanned at
0 degrees has its optic nerve head at the right end of the B-scan; flipped, it is at the left end, which is what
a left eye scanned at 0 degrees shows.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    BorderPad,
    Flip,
    InvertibleTransform,
    MapTransform,
    RandomizableTransform,
    Resize,
    SpatialCrop,
    SpatialPad,
)
from monai.utils import TraceKeys, convert_to_dst_type, convert_to_numpy, convert_to_tensor, ensure_tuple_rep

from medicraft_monai.data.errors import DimensionalityError
from medicraft_monai.data.keys import OCTKeys, OCTMetaKeys, normalise_laterality

__all__ = [
    "flip_plane_angle",
    "swap_laterality",
    "LateralityFlip",
    "LateralityFlipd",
    "LateralityFlipD",
    "LateralityFlipDict",
    "RandLateralityFlip",
    "RandLateralityFlipd",
    "RandLateralityFlipD",
    "RandLateralityFlipDict",
    "OCTResize",
    "OCTResized",
    "OCTResizeD",
    "OCTResizeDict",
]


# ----------------------------------------------------------------------------------------------------------
# laterality flip
# ----------------------------------------------------------------------------------------------------------


def flip_plane_angle(angle: Any) -> Any:
    """``(-angle) mod 360`` for a number, a sequence, an array or a tensor of angles; ``None``/NaN stay unknown."""
    if angle is None:
        return None
    if isinstance(angle, torch.Tensor):
        return torch.remainder(-angle, 360.0)
    if isinstance(angle, np.ndarray):
        return np.mod(-angle, 360.0)
    if isinstance(angle, (list, tuple)):
        return type(angle)(flip_plane_angle(a) for a in angle)
    a = float(angle)
    return a if math.isnan(a) else (-a) % 360.0


def swap_laterality(laterality: Any) -> str:
    """``"R"`` <-> ``"L"`` (any accepted spelling, see ``normalise_laterality``); unknown stays ``""``."""
    return {"R": "L", "L": "R", "": ""}[normalise_laterality(laterality)]


def _flip_meta(meta: Mapping) -> dict:
    out = dict(meta)
    if OCTMetaKeys.LATERALITY in out:
        out[OCTMetaKeys.LATERALITY] = swap_laterality(out[OCTMetaKeys.LATERALITY])
    if OCTMetaKeys.PLANE_ANGLE in out:
        out[OCTMetaKeys.PLANE_ANGLE] = flip_plane_angle(out[OCTMetaKeys.PLANE_ANGLE])
    return out


def _flip_pixels(img: Any) -> Any:
    """Flip a (C, H, W) image along W (MetaTensor: affine updated by MONAI's ``Flip``, meta swapped)."""
    if len(img.shape) != 3:
        raise DimensionalityError(None, f"expected a channel-first (C, H, W) image, got {tuple(img.shape)}")
    if isinstance(img, np.ndarray):
        return np.ascontiguousarray(np.flip(img, axis=-1))
    flipper = Flip(spatial_axis=1)
    with flipper.trace_transform(False):
        out = flipper(convert_to_tensor(img, track_meta=get_track_meta()))
    if isinstance(out, MetaTensor):
        out.meta = _flip_meta(out.meta)
    return out


def _apply_flip(recorder: InvertibleTransform, img: Any, do_flip: bool) -> Any:
    out = _flip_pixels(img) if do_flip else img
    if isinstance(out, MetaTensor):
        if not do_flip:
            out = out.clone()
        recorder.push_transform(out, extra_info={"flipped": bool(do_flip)})
    return out


def _undo_flip(recorder: InvertibleTransform, data: Any) -> tuple[Any, bool]:
    transform = recorder.pop_transform(data)
    flipped = bool(transform[TraceKeys.EXTRA_INFO]["flipped"])
    return (_flip_pixels(data) if flipped else data), flipped


def _meta_laterality(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    value = meta.get(OCTMetaKeys.LATERALITY, "")
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return normalise_laterality(value)


def _decide(to_laterality: str | None, current: str, what: str) -> bool:
    if to_laterality is None:
        return True
    if current == "":
        raise ValueError(
            f"{what}: cannot bring an image of unknown laterality to {to_laterality!r}; set the laterality "
            "(meta['laterality'] or the item's 'laterality'), or use to_laterality=None to flip every image"
        )
    return current != to_laterality


class LateralityFlip(InvertibleTransform):
    """Left-right flip of a (C, H, W) B-scan that also mirrors the laterality and the plane angle in the meta.

    In ``MetaTensor.meta``, ``"laterality"`` is swapped (R <-> L; unknown stays unknown) and ``"plane_angle"``
    becomes ``(-angle) mod 360`` (NaN/None stay unknown), so that the flipped image reads as the same scan of
    the fellow eye. Flipping twice gives back the pixels and the metadata.

    With ``to_laterality="R"`` (or ``"L"``) only images of the other eye are flipped (canonicalisation: every
    image then looks like a right eye). An image of unknown laterality is then an error (``ValueError``), not a
    silent pass-through that would mix eyes in the canonical set.

    Invertible: for a ``MetaTensor`` whether it was flipped is recorded in ``applied_operations``.

    Args:
        to_laterality: ``None`` (always flip), ``"R"`` or ``"L"`` (any spelling accepted by
            ``normalise_laterality``).
    """

    def __init__(self, to_laterality: str | None = None) -> None:
        self.to_laterality = None if to_laterality is None else normalise_laterality(to_laterality)
        if self.to_laterality == "":
            raise ValueError("to_laterality must be 'R', 'L' or None")

    def __call__(self, img: Any, laterality: str | None = None) -> Any:  # type: ignore[override]
        """Flip ``img`` if needed; ``laterality`` overrides ``img.meta["laterality"]`` for the decision."""
        current = _meta_laterality(img) if laterality is None else normalise_laterality(laterality)
        return _apply_flip(self, img, _decide(self.to_laterality, current, type(self).__name__))

    def inverse(self, data: Any) -> Any:
        return _undo_flip(self, data)[0]


class RandLateralityFlip(RandomizableTransform, InvertibleTransform):
    """With probability ``prob``, a :class:`LateralityFlip` (pixels, laterality and plane angle); seedable."""

    def __init__(self, prob: float = 0.5) -> None:
        RandomizableTransform.__init__(self, prob)

    def __call__(self, img: Any, randomize: bool = True) -> Any:  # type: ignore[override]
        if randomize:
            self.randomize(None)
        return _apply_flip(self, img, self._do_transform)

    def inverse(self, data: Any) -> Any:
        return _undo_flip(self, data)[0]


def _flip_item_keys(d: dict, laterality_key: str | None, plane_angle_key: str | None) -> None:
    if laterality_key and laterality_key in d and d[laterality_key] is not None:
        d[laterality_key] = swap_laterality(d[laterality_key])
    if plane_angle_key and plane_angle_key in d:
        d[plane_angle_key] = flip_plane_angle(d[plane_angle_key])


class LateralityFlipd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`LateralityFlip`: every key flipped (or not) together.

    Besides each image's metadata, the item's ``laterality_key`` and ``plane_angle_key`` entries (datalist
    fields) are updated when present. The laterality deciding a canonicalising flip is the item's entry when it
    is known, else the first image's metadata; the two disagreeing is an error.

    Args:
        keys: keys of the images (and masks) to flip.
        to_laterality: see :class:`LateralityFlip`.
        laterality_key: item key of the laterality (``None``: do not read or update one).
        plane_angle_key: item key of the plane angle (``None``: do not update one).
        allow_missing_keys: do not fail on items without a key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        to_laterality: str | None = None,
        laterality_key: str | None = OCTKeys.LATERALITY,
        plane_angle_key: str | None = OCTKeys.PLANE_ANGLE,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.to_laterality = LateralityFlip(to_laterality).to_laterality
        self.laterality_key = laterality_key
        self.plane_angle_key = plane_angle_key

    def _current(self, d: Mapping) -> str:
        item = normalise_laterality(d.get(self.laterality_key)) if self.laterality_key else ""
        first = self.first_key(d)
        meta = _meta_laterality(d[first]) if first != () else ""
        if item and meta and item != meta:
            raise ValueError(
                f"{type(self).__name__}: the item says laterality {item!r} but the image metadata says {meta!r}"
            )
        return item or meta

    def _flip_item(self, d: dict[Hashable, Any], do_flip: bool) -> dict[Hashable, Any]:
        for key in self.key_iterator(d):
            d[key] = _apply_flip(self, d[key], do_flip)
        if do_flip:
            _flip_item_keys(d, self.laterality_key, self.plane_angle_key)
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        return self._flip_item(d, _decide(self.to_laterality, self._current(d), type(self).__name__))

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        any_flipped = False
        for key in self.key_iterator(d):
            d[key], flipped = _undo_flip(self, d[key])
            any_flipped |= flipped
        if any_flipped:
            _flip_item_keys(d, self.laterality_key, self.plane_angle_key)
        return d


class RandLateralityFlipd(RandomizableTransform, LateralityFlipd):
    """Dictionary version of :class:`RandLateralityFlip` (one draw per item, all keys together).

    Args:
        keys: keys of the images (and masks) to flip.
        prob: probability of flipping.
        laterality_key, plane_angle_key, allow_missing_keys: see :class:`LateralityFlipd`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        laterality_key: str | None = OCTKeys.LATERALITY,
        plane_angle_key: str | None = OCTKeys.PLANE_ANGLE,
        allow_missing_keys: bool = False,
    ) -> None:
        LateralityFlipd.__init__(self, keys, None, laterality_key, plane_angle_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize(None)
        return self._flip_item(dict(data), self._do_transform)


# ----------------------------------------------------------------------------------------------------------
# resize
# ----------------------------------------------------------------------------------------------------------


def _scale_spacing(spacing: Any, old: tuple[int, int], new: tuple[int, int]) -> Any:
    """Pixel spacing after resampling ``old`` (H, W) to ``new``; unknown (NaN) stays unknown."""
    if spacing is None:
        return None
    arr = convert_to_numpy(spacing, wrap_sequence=True).astype(np.float64).reshape(-1)
    if arr.size != 2:
        return spacing
    out = (float(arr[0]) * old[0] / new[0], float(arr[1]) * old[1] / new[1])
    return (
        type(spacing)(out) if isinstance(spacing, (list, tuple)) else convert_to_dst_type(np.asarray(out), spacing)[0]
    )


class OCTResize(InvertibleTransform):
    """Resize a (C, H, W) B-scan to ``spatial_size`` (H, W), keeping the wide OCT aspect by default.

    - ``mode="fit"`` (default): one scale factor for both axes, the largest that fits the image inside
      ``spatial_size``; the rest is padded symmetrically (``pad_mode``). Nothing is cut, nothing distorted.
    - ``mode="stretch"``: each axis is resized on its own to exactly ``spatial_size``.
    - ``mode="crop"``: the centre of the image is cropped to the aspect of ``spatial_size`` (the wider of two
      scans loses its lateral ends, a taller one its top and bottom), then resized with one scale factor. Every
      output then shows the same field of view relative to its height, with no padding bars: use it when a data
      set mixes scan widths (Spectralis 512- and 768-wide B-scans) and a model should not learn the bars.

    Resampling is MONAI's :class:`~monai.transforms.Resize` (``torch.nn.functional.interpolate``, with a
    Gaussian anti-aliasing pre-filter when shrinking; off for nearest-neighbour modes) and padding MONAI's
    :class:`~monai.transforms.SpatialPad`. ``meta["pixel_spacing"]`` is scaled by the resampling factors (unknown
    stays unknown); the affine is updated by MONAI. Invertible: padding is removed and the image resized back.

    Args:
        spatial_size: output (H, W).
        mode: ``"fit"``, ``"stretch"`` or ``"crop"``.
        interp_mode: interpolation mode of :class:`~monai.transforms.Resize` (``"bilinear"``, ``"area"``,
            ``"nearest"``, ``"bicubic"``, ...).
        anti_aliasing: Gaussian pre-filter when shrinking (ignored for nearest modes).
        pad_mode: padding mode of :class:`~monai.transforms.SpatialPad` for ``"fit"``.
        pad_kwargs: other arguments of the padding function (for example ``value``).
    """

    def __init__(
        self,
        spatial_size: Sequence[int] = (128, 256),
        mode: str = "fit",
        interp_mode: str = "bilinear",
        anti_aliasing: bool = True,
        pad_mode: str = "constant",
        **pad_kwargs: Any,
    ) -> None:
        size = tuple(int(v) for v in spatial_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"spatial_size must be two positive ints (H, W), got {spatial_size}")
        if mode not in ("fit", "stretch", "crop"):
            raise ValueError(f"mode must be 'fit', 'stretch' or 'crop', got {mode!r}")
        self.spatial_size = size
        self.mode = mode
        self.interp_mode = interp_mode
        self.anti_aliasing = anti_aliasing
        self.pad_mode = pad_mode
        self.pad_kwargs = pad_kwargs

    def crop_box(self, shape: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The ((top, bottom), (left, right)) margins ``mode="crop"`` cuts away (all zero for other modes)."""
        h, w = int(shape[-2]), int(shape[-1])
        if self.mode != "crop":
            return (0, 0), (0, 0)
        th, tw = self.spatial_size
        ch, cw = min(h, max(1, round(w * th / tw))), min(w, max(1, round(h * tw / th)))
        return ((h - ch) // 2, h - ch - (h - ch) // 2), ((w - cw) // 2, w - cw - (w - cw) // 2)

    def resized_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        """The (H, W) the image content is resampled to before padding."""
        h, w = int(shape[-2]), int(shape[-1])
        th, tw = self.spatial_size
        if self.mode in ("stretch", "crop"):
            return th, tw
        f = min(th / h, tw / w)
        return min(th, max(1, round(h * f))), min(tw, max(1, round(w * f)))

    def __call__(  # type: ignore[override]
        self, img: Any, interp_mode: str | None = None, anti_aliasing: bool | None = None, pad_mode: str | None = None
    ) -> Any:
        """Resize ``img``; the keyword arguments override the constructor's for this call."""
        if len(img.shape) != 3:
            raise DimensionalityError(
                None, f"OCTResize expects a channel-first (C, H, W) image, got {tuple(img.shape)}"
            )
        interp = interp_mode or self.interp_mode
        aa = self.anti_aliasing if anti_aliasing is None else anti_aliasing
        aa = bool(aa) and not interp.startswith("nearest")
        h, w = int(img.shape[-2]), int(img.shape[-1])
        new = self.resized_shape(img.shape)
        out = convert_to_tensor(img, track_meta=get_track_meta(), dtype=torch.float32)
        crop = self.crop_box(img.shape)
        if any(crop[0]) or any(crop[1]):
            cropper = SpatialCrop(roi_start=(crop[0][0], crop[1][0]), roi_end=(h - crop[0][1], w - crop[1][1]))
            with cropper.trace_transform(False):
                out = cropper(out)
        if new != tuple(out.shape[-2:]):
            resizer = Resize(spatial_size=new, mode=interp, anti_aliasing=aa)
            with resizer.trace_transform(False):
                out = resizer(out)
        pad = [(0, 0), (0, 0)]
        if new != self.spatial_size:
            padder = SpatialPad(
                spatial_size=self.spatial_size, method="symmetric", mode=pad_mode or self.pad_mode, **self.pad_kwargs
            )
            pad = [(int(p[0]), int(p[1])) for p in padder.compute_pad_width((new[0], new[1]))[1:]]
            with padder.trace_transform(False):
                out = padder(out)
        if isinstance(out, MetaTensor):
            if out is img:
                out = out.clone()  # never record on the caller's tensor
            out.meta = dict(out.meta)
            spacing = out.meta.get(OCTMetaKeys.PIXEL_SPACING)
            if spacing is not None:
                cropped = (h - sum(crop[0]), w - sum(crop[1]))
                out.meta[OCTMetaKeys.PIXEL_SPACING] = _scale_spacing(spacing, cropped, new)
            self.push_transform(
                out,
                orig_size=(h, w),
                extra_info={
                    "resized": list(new),
                    "pad": [list(p) for p in pad],
                    "crop": [list(c) for c in crop],
                    "interp_mode": interp,
                },
            )
        if not isinstance(img, torch.Tensor):
            out = convert_to_dst_type(out, img, dtype=np.float32)[0]
        return out

    def inverse(self, data: Any) -> Any:
        """Remove the padding and resize back to the original (H, W); margins ``mode="crop"`` cut come back as zeros."""
        transform = self.pop_transform(data)
        info = transform[TraceKeys.EXTRA_INFO]
        full = tuple(int(v) for v in transform[TraceKeys.ORIG_SIZE])
        crop = [tuple(int(v) for v in c) for c in info.get("crop", [(0, 0), (0, 0)])]
        orig = (full[0] - sum(crop[0]), full[1] - sum(crop[1]))
        new = tuple(int(v) for v in info["resized"])
        (pt, _), (pl, _) = info["pad"]
        out = data
        if tuple(data.shape[-2:]) != new:
            cropper = SpatialCrop(roi_start=(int(pt), int(pl)), roi_end=(int(pt) + new[0], int(pl) + new[1]))
            with cropper.trace_transform(False):
                out = cropper(out)
        if new != orig:
            interp = info["interp_mode"]
            resizer = Resize(spatial_size=orig, mode=interp, anti_aliasing=False)
            with resizer.trace_transform(False):
                out = resizer(out)
        if isinstance(out, MetaTensor):
            out.meta = dict(out.meta)
            spacing = out.meta.get(OCTMetaKeys.PIXEL_SPACING)
            if spacing is not None:
                out.meta[OCTMetaKeys.PIXEL_SPACING] = _scale_spacing(spacing, new, orig)
        if any(crop[0]) or any(crop[1]):
            padder = BorderPad(spatial_border=[crop[0][0], crop[0][1], crop[1][0], crop[1][1]])
            with padder.trace_transform(False):
                out = padder(out)
        return out


class OCTResized(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`OCTResize`.

    Args:
        keys: keys of the images (and masks) to resize.
        spatial_size, mode, anti_aliasing, pad_mode: see :class:`OCTResize`.
        interp_mode: interpolation mode, or one per key (``"nearest"`` for label masks).
        allow_missing_keys: do not fail on items without a key.
        pad_kwargs: other arguments of the padding function.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] = (128, 256),
        mode: str = "fit",
        interp_mode: str | Sequence[str] = "bilinear",
        anti_aliasing: bool = True,
        pad_mode: str = "constant",
        allow_missing_keys: bool = False,
        **pad_kwargs: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.interp_mode = ensure_tuple_rep(interp_mode, len(self.keys))
        self.resizer = OCTResize(spatial_size, mode, "bilinear", anti_aliasing, pad_mode, **pad_kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, interp in self.key_iterator(d, self.interp_mode):
            d[key] = self.resizer(d[key], interp_mode=interp)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer.inverse(d[key])
        return d


LateralityFlipD = LateralityFlipDict = LateralityFlipd
RandLateralityFlipD = RandLateralityFlipDict = RandLateralityFlipd
OCTResizeD = OCTResizeDict = OCTResized

"""OCT intensity transforms: scaling of 8-bit, 16-bit and linear-intensity data, and speckle noise.

The project's intensity convention after :class:`ScaleOCTIntensity` is a log-compressed image in [0, 1]:
value ``x`` stands for ``(x - 1) * dynamic_range_db`` decibels below the reference level. Vendor 8- and 16-bit
exports are already log-compressed (with a dynamic range the vendor does not state), so they are only divided
by their full range; linear data (raw amplitude or intensity) is compressed here. :class:`RandOCTSpeckleNoise`
uses the same mapping to go back to the linear domain, so pass it the dynamic range the image was compressed
with (for vendor exports about 40-50 dB is a fair assumption).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from medicraft_monai.data.keys import OCTMetaKeys

__all__ = [
    "SCALED_KEY",
    "ScaleOCTIntensity",
    "ScaleOCTIntensityd",
    "ScaleOCTIntensityD",
    "ScaleOCTIntensityDict",
    "RandOCTSpeckleNoise",
    "RandOCTSpeckleNoised",
    "RandOCTSpeckleNoiseD",
    "RandOCTSpeckleNoiseDict",
]

#: metadata key :class:`ScaleOCTIntensity` sets to the mode it used, so that scaling twice is caught.
SCALED_KEY = "intensity_scaling"

_MODES = ("auto", "uint8", "uint16", "linear")
_FULL_RANGE = {"uint8": 255.0, "uint16": 65535.0}
_DB_FACTOR = {"amplitude": 20.0, "intensity": 10.0}


def _float_tensor(img: Any) -> torch.Tensor:
    t = convert_to_tensor(img, track_meta=False)
    t = t.as_tensor() if isinstance(t, MetaTensor) else t
    return t.to(torch.float32)


def _check_nan(t: torch.Tensor, what: str) -> None:
    n = int(torch.isnan(t).sum())
    if n:
        raise ValueError(f"{what}: the image contains {n} NaN value(s); fix or mask them first (no silent propagation)")


class ScaleOCTIntensity(Transform):
    """Scale an OCT image to float32 in [0, 1].

    Modes:

    - ``"uint8"`` / ``"uint16"``: divide by the full range (255 / 65535); values outside it are an error
      (a hint that the bit depth is wrong).
    - ``"linear"``: linear data (raw amplitude or intensity, vendor float volumes) is log-compressed:
      ``dB = factor * log10(v / reference)`` with ``factor`` 20 for amplitude and 10 for intensity (power),
      clipped to ``[-dynamic_range_db, 0]`` and mapped linearly to [0, 1]. Negative values (physically
      impossible, left over from processing) count as zero and map to 0.
    - ``"auto"``: reads ``meta["bit_depth"]`` (8 -> ``"uint8"``, 16 -> ``"uint16"``, 0 -> ``"linear"``); without
      it, a uint8 or uint16 array is taken for what it is; anything else is an error, as is an unknown depth.

    NaN pixels are a ``ValueError``. The mode used is written to ``meta["intensity_scaling"]``, and an image
    that already carries it is refused (scaling twice would silently squash the image).

    Args:
        mode: one of ``"auto"``, ``"uint8"``, ``"uint16"``, ``"linear"``.
        dynamic_range_db: dynamic range, in dB, kept by the ``"linear"`` compression.
        linear_quantity: ``"amplitude"`` (20 log10) or ``"intensity"`` (10 log10) for ``"linear"``.
        reference: the linear value mapped to 1 (0 dB); ``None`` uses the image's ``reference_percentile``.
        reference_percentile: percentile of the positive values used as reference when ``reference`` is None.
    """

    def __init__(
        self,
        mode: str = "auto",
        dynamic_range_db: float = 50.0,
        linear_quantity: str = "amplitude",
        reference: float | None = None,
        reference_percentile: float = 99.9,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if linear_quantity not in _DB_FACTOR:
            raise ValueError(f"linear_quantity must be 'amplitude' or 'intensity', got {linear_quantity!r}")
        if not dynamic_range_db > 0:
            raise ValueError(f"dynamic_range_db must be positive, got {dynamic_range_db}")
        if reference is not None and not reference > 0:
            raise ValueError(f"reference must be positive, got {reference}")
        if not 0 < reference_percentile <= 100:
            raise ValueError(f"reference_percentile must be in (0, 100], got {reference_percentile}")
        self.mode = mode
        self.dynamic_range_db = float(dynamic_range_db)
        self.linear_quantity = linear_quantity
        self.reference = reference
        self.reference_percentile = float(reference_percentile)

    def resolve_mode(self, img: Any, bit_depth: int | None = None) -> str:
        """The concrete mode for ``img`` (``"auto"`` resolved from ``bit_depth``, the metadata or the dtype)."""
        if self.mode != "auto":
            return self.mode
        if bit_depth is None:
            meta = getattr(img, "meta", None) or {}
            bit_depth = meta.get(OCTMetaKeys.BIT_DEPTH)
        if bit_depth is not None:
            try:
                depth = int(np.asarray(bit_depth).reshape(-1)[0])
            except (TypeError, ValueError):
                depth = -1
            if depth in (8, 16, 0):
                return {8: "uint8", 16: "uint16", 0: "linear"}[depth]
            raise ValueError(
                f"ScaleOCTIntensity(mode='auto'): bit_depth {bit_depth!r} is not 8, 16 or 0 (float); "
                "pass mode='uint8', 'uint16' or 'linear'"
            )
        dtype = str(getattr(img, "dtype", ""))
        if dtype.endswith("uint8"):
            return "uint8"
        if dtype.endswith("uint16"):
            return "uint16"
        raise ValueError(
            f"ScaleOCTIntensity(mode='auto') cannot tell how to scale a {dtype or type(img).__name__} image without "
            "meta['bit_depth'] (8, 16, or 0 for linear float data); load it with LoadOCTImage or pass mode='uint8', "
            "'uint16' or 'linear'"
        )

    def __call__(self, img: Any, bit_depth: int | None = None) -> Any:
        """Scale ``img`` (any shape, numpy/torch/MetaTensor); ``bit_depth`` overrides the metadata in auto mode."""
        meta = getattr(img, "meta", None) or {}
        if meta.get(SCALED_KEY):
            raise ValueError(
                f"ScaleOCTIntensity: the image was already scaled (meta['{SCALED_KEY}']={meta[SCALED_KEY]!r}); "
                "scaling twice would squash it"
            )
        mode = self.resolve_mode(img, bit_depth)
        t = _float_tensor(img)
        _check_nan(t, "ScaleOCTIntensity")
        if mode in _FULL_RANGE:
            full = _FULL_RANGE[mode]
            lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
            if lo < -1e-3 or hi > full + 1e-3:
                raise ValueError(
                    f"ScaleOCTIntensity(mode={mode!r}): values span [{lo:g}, {hi:g}], outside [0, {full:g}]; "
                    "is the bit depth right? (mode='uint16' for 16-bit, 'linear' for float data)"
                )
            out = (t / full).clamp_(0.0, 1.0)
        else:
            out = self._log_compress(t)
        out = convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]
        if isinstance(out, MetaTensor):
            out.meta = dict(out.meta)
            out.meta[SCALED_KEY] = mode
        return out

    def _log_compress(self, t: torch.Tensor) -> torch.Tensor:
        v = t.clamp(min=0.0)
        if self.reference is not None:
            ref = float(self.reference)
        else:
            pos = v[v > 0]
            if pos.numel() == 0:
                return torch.zeros_like(v)
            ref = float(
                torch.quantile(pos.double()[:: max(1, pos.numel() // 1_000_000)], self.reference_percentile / 100)
            )
        tiny = ref * 10.0 ** (-2 * self.dynamic_range_db / _DB_FACTOR[self.linear_quantity])
        db = _DB_FACTOR[self.linear_quantity] * torch.log10(v.clamp(min=tiny) / ref)
        return (1.0 + db / self.dynamic_range_db).clamp_(0.0, 1.0)


class ScaleOCTIntensityd(MapTransform):
    """Dictionary version of :class:`ScaleOCTIntensity`.

    Args:
        keys: keys of the images to scale.
        bit_depth_key: item key holding the bit depth (used in auto mode when present, before the metadata).
        allow_missing_keys: do not fail on items without a key.
        kwargs: arguments of :class:`ScaleOCTIntensity`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        bit_depth_key: str | None = None,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.bit_depth_key = bit_depth_key
        self.scaler = ScaleOCTIntensity(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        depth = d.get(self.bit_depth_key) if self.bit_depth_key else None
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key], depth)
        return d


class RandOCTSpeckleNoise(RandomizableTransform):
    """Multiplicative speckle noise in the linear domain of a log-compressed [0, 1] OCT image.

    The image is taken back to the linear domain with the mapping of :class:`ScaleOCTIntensity` (``x`` ->
    ``(x - 1) * dynamic_range_db`` dB), multiplied pixel-wise by independent noise of mean 1, and compressed
    back (clipped to [0, 1]):

    - ``distribution="gamma"``: the *intensity* is multiplied by Gamma(shape ``L``, scale ``1 / L``), the
      speckle of an ``L``-look average (speckle contrast ``1 / sqrt(L)``; ``L = 1`` is fully developed
      exponential speckle);
    - ``distribution="rayleigh"``: the *amplitude* is multiplied by a Rayleigh variable normalised to mean 1
      (``sigma = sqrt(2 / pi)``; contrast ``sqrt(4 / pi - 1)``, fully developed speckle).

    ``looks`` may be a ``(low, high)`` range, sampled uniformly per call. Deterministic by seed
    (``set_random_state``); ``prob`` is the chance to apply it at all.

    Args:
        prob: probability of applying the noise.
        distribution: ``"gamma"`` or ``"rayleigh"``.
        looks: number of looks ``L`` of the gamma distribution, or a ``(low, high)`` range; ignored for Rayleigh.
        dynamic_range_db: dynamic range the image was compressed with (see the module docstring).
    """

    def __init__(
        self,
        prob: float = 0.1,
        distribution: str = "gamma",
        looks: float | tuple[float, float] = (2.0, 8.0),
        dynamic_range_db: float = 50.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if distribution not in ("gamma", "rayleigh"):
            raise ValueError(f"distribution must be 'gamma' or 'rayleigh', got {distribution!r}")
        rng = (float(looks), float(looks)) if np.isscalar(looks) else tuple(float(v) for v in looks)  # type: ignore[arg-type]
        if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
            raise ValueError(f"looks must be positive (or a (low, high) range), got {looks}")
        if not dynamic_range_db > 0:
            raise ValueError(f"dynamic_range_db must be positive, got {dynamic_range_db}")
        self.distribution = distribution
        self.looks_range = rng
        self.dynamic_range_db = float(dynamic_range_db)
        self.looks: float = rng[0]
        self.noise: np.ndarray | None = None

    @property
    def db_factor(self) -> float:
        """10 for gamma (intensity speckle), 20 for Rayleigh (amplitude speckle)."""
        return 10.0 if self.distribution == "gamma" else 20.0

    def randomize(self, img: Any) -> None:  # type: ignore[override]
        """Decide whether to apply the noise and draw the looks and the multiplier field for ``img``'s shape."""
        super().randomize(None)
        if not self._do_transform:
            self.noise = None
            return
        lo, hi = self.looks_range
        self.looks = float(self.R.uniform(lo, hi)) if hi > lo else lo
        shape = tuple(img.shape)
        if self.distribution == "gamma":
            self.noise = self.R.gamma(shape=self.looks, scale=1.0 / self.looks, size=shape).astype(np.float32)
        else:
            self.noise = self.R.rayleigh(scale=math.sqrt(2.0 / math.pi), size=shape).astype(np.float32)

    def to_linear(self, x: torch.Tensor) -> torch.Tensor:
        """Log-compressed [0, 1] values -> linear values (intensity for gamma, amplitude for Rayleigh), max 1."""
        return torch.pow(10.0, (x.clamp(0.0, 1.0) - 1.0) * self.dynamic_range_db / self.db_factor)

    def from_linear(self, lin: torch.Tensor) -> torch.Tensor:
        """Linear values -> log-compressed [0, 1] (clipped)."""
        return (1.0 + self.db_factor * torch.log10(lin.clamp(min=1e-30)) / self.dynamic_range_db).clamp(0.0, 1.0)

    def __call__(self, img: Any, randomize: bool = True) -> Any:
        """Apply the noise to ``img`` (log-compressed, in [0, 1]); ``randomize=False`` reuses the last draw."""
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        if self.noise is None or tuple(self.noise.shape) != tuple(img.shape):
            raise ValueError(
                f"noise drawn for shape {None if self.noise is None else self.noise.shape}, image is {tuple(img.shape)}"
            )
        t = _float_tensor(img)
        _check_nan(t, "RandOCTSpeckleNoise")
        out = self.from_linear(self.to_linear(t) * torch.from_numpy(self.noise).to(t.device))
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class RandOCTSpeckleNoised(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandOCTSpeckleNoise` (one draw per item, the same field for every key).

    Args:
        keys: keys of the images.
        prob, distribution, looks, dynamic_range_db: see :class:`RandOCTSpeckleNoise`.
        allow_missing_keys: do not fail on items without a key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        distribution: str = "gamma",
        looks: float | tuple[float, float] = (2.0, 8.0),
        dynamic_range_db: float = 50.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.rand_speckle = RandOCTSpeckleNoise(1.0, distribution, looks, dynamic_range_db)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandOCTSpeckleNoised:
        super().set_random_state(seed, state)
        self.rand_speckle.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        first = self.first_key(d)
        if first == ():
            return d
        self.rand_speckle.randomize(d[first])
        for key in self.key_iterator(d):
            d[key] = self.rand_speckle(d[key], randomize=False)
        return d


ScaleOCTIntensityD = ScaleOCTIntensityDict = ScaleOCTIntensityd
RandOCTSpeckleNoiseD = RandOCTSpeckleNoiseDict = RandOCTSpeckleNoised

"""OCT transforms in MONAI style: each array transform has a dictionary twin with a ``d`` suffix.

- :mod:`.intensity`: :class:`ScaleOCTIntensity` (8-bit, 16-bit, linear data with log compression) and
  :class:`RandOCTSpeckleNoise` (multiplicative gamma/Rayleigh speckle in the linear domain).
- :mod:`.retina`: :func:`detect_retina_boundaries` (ILM and Bruch's membrane per column),
  :class:`RetinaCrop` (fixed height around the retina) and :class:`FlattenRetina` (Bruch's membrane on one row).
- :mod:`.context`: :class:`ContextDisorder` (swap random pairs of non-overlapping patches, for self-supervised
  context restoration).
- :mod:`.latent`: :class:`SampleLatent` (draw a latent diffusion training latent from a cached encoder posterior).
- :mod:`.spatial`: :class:`LateralityFlip` / :class:`RandLateralityFlip` (left-right flip that mirrors laterality
  and plane angle) and :class:`OCTResize` (resize keeping the wide aspect).
"""

from __future__ import annotations

from .context import (
    ContextDisorder,
    ContextDisorderD,
    ContextDisorderd,
    ContextDisorderDict,
    item_seed,
)
from .intensity import (
    SCALED_KEY,
    RandOCTSpeckleNoise,
    RandOCTSpeckleNoiseD,
    RandOCTSpeckleNoised,
    RandOCTSpeckleNoiseDict,
    ScaleOCTIntensity,
    ScaleOCTIntensityD,
    ScaleOCTIntensityd,
    ScaleOCTIntensityDict,
)
from .latent import SampleLatent, SampleLatentD, SampleLatentd, SampleLatentDict
from .retina import (
    CROP_ORIG_HEIGHT_KEY,
    CROP_START_KEY,
    FLATTEN_TARGET_KEY,
    REFERENCE_ROW_SPACING_MM,
    FlattenRetina,
    FlattenRetinaD,
    FlattenRetinad,
    FlattenRetinaDict,
    RetinaCrop,
    RetinaCropD,
    RetinaCropd,
    RetinaCropDict,
    axial_scale_from_meta,
    detect_retina_boundaries,
    get_flatten_shifts,
)
from .spatial import (
    LateralityFlip,
    LateralityFlipD,
    LateralityFlipd,
    LateralityFlipDict,
    OCTResize,
    OCTResizeD,
    OCTResized,
    OCTResizeDict,
    RandLateralityFlip,
    RandLateralityFlipD,
    RandLateralityFlipd,
    RandLateralityFlipDict,
    flip_plane_angle,
    swap_laterality,
)

__all__ = [
    "ContextDisorder",
    "ContextDisorderD",
    "ContextDisorderDict",
    "ContextDisorderd",
    "CROP_ORIG_HEIGHT_KEY",
    "CROP_START_KEY",
    "FLATTEN_TARGET_KEY",
    "REFERENCE_ROW_SPACING_MM",
    "SCALED_KEY",
    "FlattenRetina",
    "FlattenRetinaD",
    "FlattenRetinaDict",
    "FlattenRetinad",
    "LateralityFlip",
    "LateralityFlipD",
    "LateralityFlipDict",
    "LateralityFlipd",
    "OCTResize",
    "OCTResizeD",
    "OCTResizeDict",
    "OCTResized",
    "RandLateralityFlip",
    "RandLateralityFlipD",
    "RandLateralityFlipDict",
    "RandLateralityFlipd",
    "RandOCTSpeckleNoise",
    "RandOCTSpeckleNoiseD",
    "RandOCTSpeckleNoiseDict",
    "RandOCTSpeckleNoised",
    "RetinaCrop",
    "RetinaCropD",
    "RetinaCropDict",
    "RetinaCropd",
    "SampleLatent",
    "SampleLatentD",
    "SampleLatentDict",
    "SampleLatentd",
    "ScaleOCTIntensity",
    "ScaleOCTIntensityD",
    "ScaleOCTIntensityDict",
    "ScaleOCTIntensityd",
    "axial_scale_from_meta",
    "detect_retina_boundaries",
    "flip_plane_angle",
    "get_flatten_shifts",
    "item_seed",
    "swap_laterality",
]

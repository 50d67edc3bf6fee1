"""OCT data: readers, datalists, patient-grouped splits and the procedural OCT phantom."""

from __future__ import annotations

from .errors import (
    CorruptImageError,
    DataProblems,
    DimensionalityError,
    EmptyDatasetError,
    OCTDataError,
    SplitLeakError,
    UnknownLabelError,
    UnsupportedFormatError,
)
from .keys import OCTKeys, OCTMetaKeys, normalise_laterality

__all__ = [
    "CorruptImageError",
    "DataProblems",
    "DimensionalityError",
    "EmptyDatasetError",
    "OCTDataError",
    "OCTKeys",
    "OCTMetaKeys",
    "SplitLeakError",
    "UnknownLabelError",
    "UnsupportedFormatError",
    "normalise_laterality",
]

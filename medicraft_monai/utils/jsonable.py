"""Plain JSON values from what numpy, torch and pathlib hand us."""

from __future__ import annotations

import math
from collections.abc import Mapping
from os import PathLike
from typing import Any

__all__ = ["to_jsonable"]


def to_jsonable(value: Any, *, ndigits: int | None = None, where: str = "value") -> Any:
    """``value`` as plain JSON types.

    Mappings become dicts with string keys; tuples, lists, numpy arrays and tensors become lists; numpy and torch
    scalars become Python numbers; paths become strings; non-finite floats become ``None`` (JSON has no NaN).

    Args:
        value: what to convert.
        ndigits: round floats to this many decimals (``None``: keep them exact).
        where: the name shown in the error for a value that has no JSON form.

    Raises:
        TypeError: a value (at ``where``, for example ``settings.image_size[1]``) with no JSON form.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, ndigits) if ndigits is not None else value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, ndigits=ndigits, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, PathLike):
        return str(value)
    if type(value).__module__ in ("numpy", "torch") or hasattr(value, "tolist"):
        import numpy as np

        if np.ndim(value) == 0 and hasattr(value, "item"):
            return to_jsonable(value.item(), ndigits=ndigits, where=where)
        if hasattr(value, "tolist"):
            return to_jsonable(value.tolist(), ndigits=ndigits, where=where)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v, ndigits=ndigits, where=f"{where}[{i}]") for i, v in enumerate(items)]
    raise TypeError(f"{where} = {value!r} ({type(value).__name__}) is not JSON-able")

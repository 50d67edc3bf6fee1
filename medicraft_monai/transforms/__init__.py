"""OCT transforms in MONAI style: each array transform has a dictionary twin with a ``d`` suffix."""

from __future__ import annotations

__all__: list[str] = []

"""On/off switches as the command line spells them: the one place a config value becomes a bool.

``python -m monai.bundle run --resume true`` passes the *string* ``"true"`` (only ``True`` is a Python literal for
the command-line parser), and ``--resume false`` would pass ``"false"``, which Python treats as true. A bundle's
``configs/common.json`` reads each switch once through :func:`flag` (its ``switches`` entry, for example
``"switches": {"resume": "$medicraft_monai.utils.flag(@resume)"}``) and every other config uses
``@switches#resume``; Python callers that take switches from users use the same function.
"""

from __future__ import annotations

from typing import Any

__all__ = ["flag"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", ""}


def flag(value: Any) -> bool:
    """A switch as a bool, whatever way the command line spelt it (``true``/``True``/``1``/``yes``/``on``, ...).

    Raises:
        ValueError: a value that is not a recognisable switch.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"not a true/false switch: {value!r}")

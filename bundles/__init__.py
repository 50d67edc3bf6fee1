"""The MONAI bundles of medicraft_monai, one folder each (``bundles/<name>/configs``, ``docs``, ``LICENSE``, ``models``).

This file makes the folder the package ``medicraft_monai.zoo`` that the wheel and an editable install ship it as
(``setup.py`` maps it), so that :func:`medicraft_monai.bundles.bundle_path` finds the bundles through
:mod:`importlib.resources` from anywhere. It holds no code of its own: the bundle registry
(:mod:`medicraft_monai.registry`: ``find``, ``info``, ``scan``, ``ZooEntry``) is reachable as
``medicraft_monai.zoo.find(...)`` and is imported on first use::

    import medicraft_monai.zoo

    medicraft_monai.zoo.find(task="generation", classes=["DME"])
"""

from __future__ import annotations

from typing import Any

_REGISTRY = ("ZooEntry", "find", "format_info", "format_table", "info", "scan")


def __getattr__(name: str) -> Any:
    """The registry's names (:mod:`medicraft_monai.registry`), imported on first use."""
    if name in _REGISTRY:
        from medicraft_monai import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'medicraft_monai.zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_REGISTRY])

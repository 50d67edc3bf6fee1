"""Finds the MONAI bundles shipped with medicraft_monai: the one bundle finder of the package.

The repository keeps its bundles in the top-level ``bundles/<name>/`` folder (every documented command uses that
path); the wheel ships the same folder as the data-only package ``medicraft_monai.zoo`` (``setup.py`` maps it;
its ``__init__.py`` holds only a docstring), and an editable install (``pip install -e .``) maps that package to
the checkout's ``bundles/``. This module finds it through :mod:`importlib.resources`, so a bundle resolves from an
installed wheel, an editable install and any working directory alike::

    from medicraft_monai.bundles import bundle_path, list_bundles

    list_bundles()               # ['oct_classifier', 'oct_context_restoration', 'oct_ddpm', ...]
    bundle_path("oct_ddpm")      # .../medicraft_monai/zoo/oct_ddpm (wheel) or .../bundles/oct_ddpm (checkout)
"""

from __future__ import annotations

import importlib.resources
from os import PathLike
from pathlib import Path

__all__ = ["COMMON_CONFIG", "ZOO_PACKAGE", "bundle_path", "bundles_root", "config_files", "list_bundles"]

ZOO_PACKAGE = "medicraft_monai.zoo"
"""The package the wheel ships the ``bundles/`` folder as."""


def bundles_root() -> Path:
    """The folder that holds the shipped bundles (one sub-folder per bundle).

    It is the package :data:`ZOO_PACKAGE` when it can be imported (a wheel or an editable install made from this
    version); a source tree used without installing it (``PYTHONPATH`` pointing at a checkout, or an editable
    install made before the package knew the zoo) has none, and then the ``bundles/`` folder beside the
    ``medicraft_monai`` package is the one.

    Raises:
        FileNotFoundError: neither exists (a broken installation).
    """
    try:
        root = importlib.resources.files(ZOO_PACKAGE)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parent.parent / "bundles"
        if checkout.is_dir():
            return checkout
        raise FileNotFoundError(
            f"no bundles shipped with medicraft_monai: neither the package {ZOO_PACKAGE!r} nor {checkout} exists; "
            "reinstall medicraft-monai"
        ) from None
    return Path(str(root))  # a regular package (bundles/__init__.py) on the file system: a Path already


def list_bundles() -> list[str]:
    """The names of the shipped bundles (the sub-folders of :func:`bundles_root` holding a ``configs/`` folder)."""
    root = bundles_root()
    return sorted(p.name for p in root.iterdir() if (p / "configs").is_dir())


def bundle_path(name: str) -> Path:
    """The folder of the shipped bundle ``name`` (pass it as ``bundle_root`` to ``monai.bundle``).

    Raises:
        FileNotFoundError: there is no shipped bundle of that name (the message names the known ones).
    """
    root = bundles_root() / name
    if not (root / "configs").is_dir():
        known = ", ".join(list_bundles()) or "none"
        raise FileNotFoundError(f"{name!r} is not a bundle shipped with medicraft_monai (known bundles: {known})")
    return root


COMMON_CONFIG = "common.json"
"""The config file of a bundle that its other configs are layered on (components defined once, as the model zoo
does: ``--config_file "['configs/common.json','configs/train.json']"``)."""


def config_files(bundle_root: str | PathLike, *names: str) -> list[Path]:
    """The config files of a bundle in the order ``monai.bundle run`` merges them for ``names``.

    ``configs/common.json`` (when the bundle has one) comes first, then each of ``names`` (file names in
    ``configs/``, or paths relative to ``bundle_root``), so a training or inference config sees the network,
    scheduler and class settings that ``common.json`` defines once::

        parser.read_config([str(p) for p in config_files(root, "inference.json")])
    """
    root = Path(bundle_root)
    files = [root / n if "/" in n else root / "configs" / n for n in names]
    common = root / "configs" / COMMON_CONFIG
    return ([common] if common.is_file() and common not in files else []) + files

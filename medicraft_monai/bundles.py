"""Finds the MONAI bundles shipped with medicraft_monai: the one bundle finder of the package.

The repository keeps its bundles in the top-level ``bundles/<name>/`` folder (every documented command uses that
path); the wheel ships the same folder as the data-only package ``medicraft_monai.zoo`` (``setup.py`` maps it;
its ``__init__.py`` holds only a docstring), and an editable install (``pip install -e .``) maps that package to
the checkout's ``bundles/``. This module finds it through :mod:`importlib.resources`, so a bundle resolves from an
installed wheel, an editable install and any working directory alike::

    from medicraft_monai.bundles import bundle_path, list_bundles

    list_bundles()               # ['oct_classifier', 'oct_context_restoration', 'oct_ddpm', ...]
    bundle_path("oct_ddpm")      # .../medicraft_monai/zoo/oct_ddpm (wheel) or .../bundles/oct_ddpm (checkout)

:func:`resolve_bundle` is the one place where a bundle given by a user becomes a folder: a shipped bundle's name, a
bundle folder, or a release archive (``<name>_v<version>.zip`` as ``medicraft bundle pack`` writes it), which is
unpacked once into :func:`bundle_cache_dir` and reused from there.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tempfile
import zipfile
from os import PathLike
from pathlib import Path, PurePosixPath

from medicraft_monai.utils import file_digest

__all__ = [
    "CACHE_ENV",
    "COMMON_CONFIG",
    "ZOO_PACKAGE",
    "archive_bundle_name",
    "bundle_cache_dir",
    "bundle_path",
    "bundles_root",
    "config_files",
    "list_bundles",
    "resolve_bundle",
]

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


# --------------------------------------------------------------------------------------------------------------------
# a bundle as a user gives it: a name, a folder or a release archive
# --------------------------------------------------------------------------------------------------------------------
CACHE_ENV = "MEDICRAFT_CACHE"
"""The environment variable naming medicraft_monai's cache folder (default ``~/.cache/medicraft_monai``)."""


def bundle_cache_dir() -> Path:
    """Where unpacked release archives are kept: ``$MEDICRAFT_CACHE/bundles`` (default
    ``~/.cache/medicraft_monai/bundles``; ``$XDG_CACHE_HOME`` is honoured)."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "medicraft_monai")
    return Path(base).expanduser() / "bundles"


def archive_bundle_name(archive: str | PathLike) -> str:
    """The name of the bundle a release archive holds: the one folder at its root holding ``configs/``.

    Raises:
        ValueError: not a zip file, or not exactly one bundle folder at its root (the message names the file).
    """
    path = Path(archive)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: not a bundle archive ({err})") from None
    roots = {PurePosixPath(n).parts[0] for n in names if len(PurePosixPath(n).parts) > 2}
    bundles = sorted(r for r in roots if any(n.startswith(f"{r}/configs/") for n in names))
    if len(bundles) != 1:
        found = ", ".join(bundles) or "none"
        raise ValueError(
            f"{path}: a bundle archive holds one bundle folder (<name>/configs/...) at its root; found {found}"
        )
    return bundles[0]


def _unpack(archive: Path) -> Path:
    """Unpack a release archive once into :func:`bundle_cache_dir` (keyed by its MD5) and return the bundle folder.

    The archive is unpacked into a temporary folder beside its final place and renamed into place, so processes
    unpacking the same archive at once, or one interrupted half-way, never leave a half-unpacked bundle.
    """
    name = archive_bundle_name(archive)
    md5 = file_digest(archive, "md5")
    final = bundle_cache_dir() / f"{archive.stem}-{md5[:12]}"
    if (final / name / "configs").is_dir():
        return final / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = PurePosixPath(member).parts
                if member.startswith("/") or ".." in parts or not parts or parts[0] != name:
                    raise ValueError(f"{archive}: member {member!r} lies outside the bundle folder {name}/")
            zf.extractall(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process unpacked it first: keep that one
            if not (final / name / "configs").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / name


def resolve_bundle(bundle: str | PathLike) -> Path:
    """The folder of a bundle given as a shipped bundle's name, a bundle folder or a release archive (``.zip``).

    A folder is used where it is; an archive is unpacked once into :func:`bundle_cache_dir` (an archive with other
    bytes gets its own folder); a name that is neither a folder nor a file is looked up among the shipped bundles.

    Raises:
        FileNotFoundError: no such folder, archive or shipped bundle (the message names the known bundles).
        ValueError: a folder that is not a bundle (no ``configs/``), or a file that is not a bundle archive.
    """
    path = Path(bundle).expanduser()
    if path.is_dir():
        if not (path / "configs").is_dir():
            raise ValueError(f"{path}: not a bundle folder (it has no configs/ folder)")
        return path.resolve()
    if path.is_file():
        return _unpack(path.resolve())
    if len(path.parts) > 1 or path.suffix == ".zip":
        raise FileNotFoundError(f"{path}: no such bundle folder or archive")
    return bundle_path(str(bundle))

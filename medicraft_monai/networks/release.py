"""A bundle as the model zoo publishes it: :func:`pack_bundle` writes ``<name>_v<version>.zip`` and its
``model_info.json`` entry, which MONAI's own ``monai.bundle.download(url=...)`` installs.

The archive holds the bundle folder at its root (``<name>/configs/...``), as the zoo's release archives do, and only
what a user of the bundle needs: no training logs, no training checkpoints (``models/training/``,
``checkpoint_*.pt``), no outputs of a run, no ``__pycache__`` and no hidden files. Its bytes depend only on the files
packed (fixed member order and time stamps), so packing the same bundle twice gives the same MD5 checksum.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

from medicraft_monai.networks.verification import file_md5
from medicraft_monai.utils import atomic_write, write_json_atomic

__all__ = ["BUNDLE_FOLDERS", "MODEL_INFO", "bundle_archive_files", "bundle_version", "pack_bundle"]

BUNDLE_FOLDERS: tuple[str, ...] = ("configs", "docs", "models", "scripts")
"""The folders of a bundle that a release archive carries (beside the files at the bundle's top level, such as
``LICENSE``); anything else at the top (``logs/``, ``synthetic/``, ``eval/``, ...) is the output of a run."""

MODEL_INFO = "model_info.json"
"""The zoo's index of released archives: ``{"<name>_v<version>": {"checksum": md5, "source": url or path}}``."""

#: what training leaves in models/ that a release does not carry (resumable training state)
_TRAINING_STATE = ("training",)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def bundle_version(bundle_root: str | PathLike) -> str:
    """The ``version`` of a bundle's ``configs/metadata.json``.

    Raises:
        FileNotFoundError: no metadata file.
        ValueError: a metadata file that is not JSON, or states no version (the message names the file).
    """
    meta = Path(bundle_root) / "configs" / "metadata.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found (is {bundle_root} a MONAI bundle folder?)")
    try:
        version = json.loads(meta.read_text()).get("version")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{meta}: not a JSON metadata file ({err})") from None
    if not version or not isinstance(version, str):
        raise ValueError(f"{meta}: states no 'version' (the archive is named <name>_v<version>.zip)")
    return version


def _skipped(rel: Path) -> bool:
    parts = rel.parts
    if any(p.startswith(".") or p == "__pycache__" for p in parts) or rel.suffix == ".pyc":
        return True
    if len(parts) > 1 and parts[0] not in BUNDLE_FOLDERS:
        return True
    if len(parts) > 1 and parts[0] == "models" and (parts[1] in _TRAINING_STATE or parts[-1].startswith("checkpoint")):
        return True
    return False


def bundle_archive_files(bundle_root: str | PathLike) -> Iterator[Path]:
    """The files of a bundle that its release archive carries, relative to the bundle folder, sorted."""
    root = Path(bundle_root)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not _skipped(rel):
            yield rel


def _read_model_info(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        found = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a model_info JSON file ({err}); move it away or fix it") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path}: not a model_info JSON file (an object of '<name>_v<version>' entries)")
    return found


def pack_bundle(
    bundle_root: str | PathLike,
    output_dir: str | PathLike,
    overwrite: bool = False,
    source: str | None = None,
) -> dict[str, Any]:
    """Write the release archive ``<name>_v<version>.zip`` of a bundle and its entry in ``model_info.json``.

    Install it with MONAI's own download (no medicraft_monai needed)::

        python -m monai.bundle download --name oct_ddpm --url file:///path/oct_ddpm_v0.4.0.zip --bundle_dir ./bundles

    Every argument is checked before anything is written: the bundle's metadata and version, an ``output_dir`` that
    is not inside the bundle, an existing archive (kept unless ``overwrite``), a ``model_info.json`` that is JSON.

    Args:
        bundle_root: the bundle folder; its name is the bundle's name.
        output_dir: where the archive and ``model_info.json`` go (created); an existing ``model_info.json`` keeps
            its other entries.
        overwrite: replace an archive of the same name and version.
        source: where the archive will be published (its URL) for the ``model_info.json`` entry; default: the
            archive's path.

    Returns:
        ``{"archive", "checksum" (MD5), "model_info", "entry" (<name>_v<version>), "files" (relative paths)}``.

    Raises:
        FileNotFoundError: no bundle metadata.
        ValueError: a bad metadata or model_info file, an output folder inside the bundle, or an archive that exists.
    """
    root = Path(bundle_root).resolve()
    name, version = root.name, bundle_version(root)
    out = Path(output_dir).resolve()
    if out == root or out.is_relative_to(root):
        raise ValueError(f"{output_dir}: inside the bundle {root}; the archive would pack itself (pick another folder)")
    archive = out / f"{name}_v{version}.zip"
    if archive.exists() and not overwrite:
        raise ValueError(f"{archive}: exists already; give --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{output_dir}: is a file, not a folder")
    info_path = out / MODEL_INFO
    model_info = _read_model_info(info_path)
    files = list(bundle_archive_files(root))

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in files:
                member = zipfile.ZipInfo(f"{name}/{rel.as_posix()}", date_time=_ZIP_TIME)
                member.compress_type = zipfile.ZIP_DEFLATED
                member.external_attr = 0o644 << 16
                zf.writestr(member, (root / rel).read_bytes())

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(archive, write)
    checksum = file_md5(archive)
    entry = f"{name}_v{version}"
    model_info[entry] = {"checksum": checksum, "source": source or str(archive)}
    write_json_atomic(info_path, model_info)
    return {
        "archive": archive,
        "checksum": checksum,
        "model_info": info_path,
        "entry": entry,
        "files": [f.as_posix() for f in files],
    }

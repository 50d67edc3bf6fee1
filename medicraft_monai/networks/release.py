"""A bundle as the model zoo publishes it: :func:`pack_bundle` writes ``<name>_v<version>.zip`` and its
``model_info.json`` entry, which MONAI's own ``monai.bundle.download(url=...)`` installs; and "a trained model is a
bundle": :func:`export_bundle` turns weights trained with config overrides into a self-contained bundle folder.

The archive holds the bundle folder at its root (``<name>/configs/...``), as the zoo's release archives do, and only
what a user of the bundle needs: no training logs, no training checkpoints (``models/training/``,
``checkpoint_*.pt``), no outputs of a run, no ``__pycache__`` and no hidden files. Its bytes depend only on the files
packed (fixed member order and time stamps), so packing the same bundle twice gives the same MD5 checksum.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from medicraft_monai.bundles import COMMON_CONFIG
from medicraft_monai.networks.bundle import bundle_parser
from medicraft_monai.networks.checkpoint import check_checkpoint_file, load_weights
from medicraft_monai.utils import atomic_write, file_digest, file_sha256, write_json_atomic, write_text_atomic

__all__ = [
    "BUNDLE_FOLDERS",
    "MODEL_INFO",
    "TRAINING_RECORDS",
    "bundle_archive_files",
    "bundle_version",
    "export_bundle",
    "pack_bundle",
    "parse_overrides",
]

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
    checksum = file_digest(archive, "md5")
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


# --------------------------------------------------------------------------------------------------------------------
# a trained model is a bundle
# --------------------------------------------------------------------------------------------------------------------
TRAINING_RECORDS: tuple[str, ...] = ("diffusion.json", "latent.json", "autoencoder.pt")
"""Files that training writes next to ``model.pt`` and that sampling checks or needs (the diffusion settings, the
latent scale factor, the autoencoder of a latent model); :func:`export_bundle` copies those it finds."""

_EXPORT_MARK = "medicraft_exported_from"


def parse_overrides(overrides: Mapping[str, Any] | str | Sequence[str] | None) -> dict[str, Any]:
    """Config overrides from a mapping, or from ``key=value`` texts (values read as JSON or Python literals, else
    kept as text: ``channels=[32,64,64]``, ``use_flash_attention=false``, ``class_names=['CNV','DME']``).

    Raises:
        ValueError: a text without ``=``.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    found: dict[str, Any] = {}
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must be key=value (for example channels=[32,64,64])")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
        found[key.strip()] = value
    return found


def _metadata_for(meta: dict[str, Any], parser: Any, source: Path, version: str, record: dict[str, Any]) -> dict:
    """The source's metadata, made true for the exported configs: version and changelog, classes, shapes."""
    meta = json.loads(json.dumps(meta))  # a deep copy
    value = parser.get_parsed_content
    old_meta_size = list(meta["network_data_format"]["inputs"]["image"]["spatial_shape"])
    old_size = list(bundle_parser(source).get_parsed_content("image_size")) if "image_size" in parser else None
    meta["version"] = version
    meta["changelog"] = {
        version: f"exported from {source.name} {record['version']} with the weights "
        f"{record['weights']} (sha256 {record['sha256'][:12]}...) and the overrides {json.dumps(record['overrides'])}"
    }
    meta[_EXPORT_MARK] = record
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    if old_size and all(isinstance(s, int) for s in old_meta_size):
        size = list(value("image_size"))
        if "autoencoder_channels" in parser:  # latent space: the autoencoder halves each side per level but one
            factor = 2 ** (len(value("autoencoder_channels")) - 1)
            image["spatial_shape"] = [n // factor for n in size]
        else:
            image["spatial_shape"] = [n * s // o for n, s, o in zip(size, old_meta_size, old_size)]
        if pred.get("spatial_shape"):
            pred["spatial_shape"] = list(image["spatial_shape"])
    channels_key = "latent_channels" if "latent_channels" in parser else "in_channels"
    if channels_key in parser and image.get("num_channels"):
        image["num_channels"] = int(value(channels_key))
        for where in (image, pred) if pred.get("spatial_shape") else (image,):
            where["num_channels"] = image["num_channels"]
            first = str(where.get("channel_def", {}).get("0", ""))
            if len(where.get("channel_def", {})) > 1 and re.search(r"\b0$", first):  # "..., channel 0", "1", ...
                where["channel_def"] = {str(i): re.sub(r"0$", str(i), first) for i in range(where["num_channels"])}
    if "class_names" in parser:
        names = [str(n) for n in value("class_names")]
        if "class_labels" in fmt["inputs"]:
            labels = fmt["inputs"]["class_labels"]
            labels["channel_def"] = {str(i): n for i, n in enumerate(names)}
            labels["channel_def"][str(len(names))] = "null class (no class: classifier-free guidance)"
            labels["value_range"] = [0, len(names)]
        elif not pred.get("spatial_shape") and pred.get("num_channels"):
            pred["num_channels"] = len(names)
            pred["channel_def"] = {str(i): n for i, n in enumerate(names)}
        meta["label_classes"] = "class index per image: " + ", ".join(f"{i} {n}" for i, n in enumerate(names))
    if "timesteps" in fmt["inputs"] and "num_train_timesteps" in parser:
        fmt["inputs"]["timesteps"]["value_range"] = [0, int(value("num_train_timesteps")) - 1]
    for key in list(meta.get("medicraft_diffusion", {})):
        if key in parser:
            meta["medicraft_diffusion"][key] = value(key)
    meta["eval_metrics"] = {}
    return meta


def _model_card(name: str, meta: dict[str, Any], record: dict[str, Any], files: list[str]) -> str:
    run = f"python -m monai.bundle run --bundle_root {name} --config_file \"['{name}/configs/common.json','{name}/configs/inference.json']\""
    settings = "\n".join(f"- `{k}`: `{json.dumps(v)}`" for k, v in record["overrides"].items()) or "- none"
    return f"""# {meta.get("name", name)}: trained weights (`{name}`)

A bundle exported by `medicraft bundle export` from the `{record["bundle"]}` bundle (version {record["version"]}),
holding the weights it was trained to and the settings it was trained with: nothing needs to be overridden to use
it. Replace the *fill in* parts before sharing it.

## Intended use

{meta.get("intended_use", "Research only.")}

## Data

*Fill in*: the data set the weights were trained on (source, licence, number of images per class, the datalist's
sha256). Classes: {meta.get("label_classes", "see configs/common.json")}.

## Training

Trained with `configs/train.json` of `{record["bundle"]}` and these settings (now in `configs/common.json`):

{settings}

Weights: `{record["weights"]}` (sha256 `{record["sha256"]}`), shipped as `models/model.pt`. Files: {", ".join(f"`{f}`" for f in files)}.

## How to run

```bash
{run}
medicraft multiply DATALIST.json OUTPUT_DIR --bundle_root {name}      # generator bundles
medicraft bundle verify {name}                                        # the model zoo's checks
```

## Limitations

*Fill in*: measured performance (`eval_metrics` in `configs/metadata.json` is empty until it is measured on
held-out data), known failure modes.

## Changelog

- {meta["version"]}: {meta["changelog"][meta["version"]]}
"""


def _recorded_classes(ckpt: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"class_names": [...]}`` from the ``diffusion.json`` beside the weights when the overrides do not name the
    classes (a fine-tuned generator's classes are recorded there), else nothing."""
    record = ckpt.parent / "diffusion.json"
    if "class_names" in settings or not record.is_file():
        return {}
    try:
        names = json.loads(record.read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return {}  # a malformed record is reported where the weights are loaded for sampling
    return {"class_names": [str(c) for c in names]} if isinstance(names, list) and names else {}


def export_bundle(
    source: str | PathLike,
    ckpt_path: str | PathLike,
    output_dir: str | PathLike,
    overrides: Mapping[str, Any] | str | Sequence[str] | None = None,
    version: str = "0.1.0",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a self-contained bundle folder from a bundle's configs and weights trained with config overrides.

    The new bundle holds ``configs/common.json`` (the source's, with ``overrides`` written into it: the settings the
    weights were trained with), the source's task configs unchanged, ``models/model.pt``, the training records found
    next to the weights (``diffusion.json``, ``latent.json``, ``autoencoder.pt``), ``configs/metadata.json`` (version,
    changelog, classes and shapes of the new settings, and where it was exported from), ``docs/README.md`` (a model
    card stub) and the ``LICENSE``. So ``medicraft multiply --bundle_root OUTPUT_DIR`` and ``python -m monai.bundle
    run --bundle_root OUTPUT_DIR --config_file "['.../common.json','.../inference.json']"`` need no overrides.
    The classes default to those in the ``diffusion.json`` beside the weights (what a fine-tuning run recorded).

    Every argument is checked before anything is written: the source bundle, the override keys (only keys that
    ``configs/common.json`` defines: the network, classes, image size, diffusion settings), the weights (they must
    load into the network those settings build), and the output folder (new or empty; with ``overwrite``, a folder
    that an earlier export wrote).

    Args:
        source: the bundle the weights were trained with (a folder).
        ckpt_path: the trained weights (a state dict, e.g. the ``model.pt`` that training wrote).
        output_dir: the new bundle folder; its name is the bundle's name.
        overrides: the config overrides the weights were trained with (a mapping or ``key=value`` texts).
        version: the new bundle's version.
        overwrite: replace a bundle that an earlier export wrote in ``output_dir``.

    Returns:
        ``{"bundle_root", "files", "overrides"}``.

    Raises:
        FileNotFoundError: a missing source config or weights file.
        ValueError: an unknown override key, weights that do not fit, or an output folder that cannot be used.
    """
    from monai.bundle import ConfigParser

    src = Path(source).resolve()
    common = src / "configs" / COMMON_CONFIG
    meta_file = src / "configs" / "metadata.json"
    for needed in (common, meta_file, src / "configs" / "inference.json"):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: not found ({source} must be a bundle layered on {COMMON_CONFIG})")
    settings = parse_overrides(overrides)
    defined = ConfigParser.load_config_file(common)
    unknown = sorted(k for k in settings if k not in defined)
    if unknown:
        raise ValueError(
            f"{common}: defines no {', '.join(unknown)}; only settings of {COMMON_CONFIG} (network, classes, image "
            "size, diffusion) are part of a trained model"
        )
    ckpt = check_checkpoint_file(ckpt_path, "trained weights")
    settings = {**_recorded_classes(ckpt, settings), **settings}
    out = Path(output_dir).resolve()
    if out == src or out.is_relative_to(src) or src.is_relative_to(out):
        raise ValueError(f"{output_dir}: overlaps the source bundle {src}; pick a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        earlier = out / "configs" / "metadata.json"
        try:
            was_export = _EXPORT_MARK in json.loads(earlier.read_text())
        except (OSError, ValueError, TypeError):
            was_export = False
        if not (overwrite and was_export):
            why = "give --overwrite to replace it" if was_export else "not written by an export: pick a new folder"
            raise ValueError(f"{output_dir}: exists and is not empty ({why})")
    parser = bundle_parser(src, overrides=settings)
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as err:  # noqa: BLE001 - a config error of MONAI's, said in one line
        cause = " ".join(str(err.__cause__ or err).split())[:300]
        raise ValueError(
            f"{common}: these settings do not build network_def ({cause}); give all it was trained with"
        ) from None
    load_weights(network, ckpt, what="trained weights")  # fits, or says why in one line naming the file
    records = [ckpt.parent / n for n in TRAINING_RECORDS if (ckpt.parent / n).is_file()]
    record = {
        "bundle": src.name,
        "version": bundle_version(src),
        "weights": ckpt.name,
        "sha256": file_sha256(ckpt),
        "overrides": settings,
    }
    meta = _metadata_for(json.loads(meta_file.read_text()), parser, src, version, record)

    if out.exists():
        shutil.rmtree(out)  # an earlier export's folder (checked above)
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    (out / "docs").mkdir()
    write_json_atomic(out / "configs" / COMMON_CONFIG, {**defined, **settings}, indent=4)
    for task in sorted((src / "configs").iterdir()):
        if task.is_file() and task.name not in (COMMON_CONFIG, "metadata.json"):
            shutil.copyfile(task, out / "configs" / task.name)
    shutil.copyfile(ckpt, out / "models" / "model.pt")
    for found in records:
        shutil.copyfile(found, out / "models" / found.name)
    for extra in ("LICENSE",):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, out / extra)
    write_json_atomic(out / "configs" / "metadata.json", meta, indent=4)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    write_text_atomic(out / "docs" / "README.md", _model_card(out.name, meta, record, [*files, "docs/README.md"]))
    return {"bundle_root": out, "files": sorted([*files, "docs/README.md"]), "overrides": settings}

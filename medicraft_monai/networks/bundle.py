"""The network of a MONAI bundle with its weights, and the config keys that go with it, loaded one way.

:func:`load_bundle_network` reads a bundle's config (``configs/common.json`` layered under ``configs/inference.json``,
as ``monai.bundle run`` merges them), builds ``network_def`` and loads the weights through the one checkpoint loader
(:mod:`medicraft_monai.networks.checkpoint`). The classifier bundle (``oct_classifier``) is loaded this way by the
MONAI Label ``classify`` task and by the feature extractor of the distribution metrics
(:meth:`medicraft_monai.metrics.features.FeatureExtractor.from_bundle`). The MONAI Deploy ``classify`` app gets its
network from the bundle's TorchScript export instead, and reads the same config keys from the config embedded in it
with :func:`configured_class_names` and :func:`bundle_preprocessing`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from medicraft_monai.bundles import config_files
from medicraft_monai.networks.checkpoint import load_state_dict
from medicraft_monai.utils import file_sha256

__all__ = ["BundleNetwork", "bundle_parser", "bundle_preprocessing", "configured_class_names", "load_bundle_network"]

logger = logging.getLogger(__name__)


def bundle_parser(
    bundle_root: str | PathLike,
    config_file: str = "inference.json",
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> ConfigParser:
    """A bundle's config as ``monai.bundle run`` sees it: ``common.json`` (when there is one) under ``config_file``,
    with ``bundle_root`` (and ``device`` when given) set and ``overrides`` applied.

    Raises:
        FileNotFoundError: a config file is missing.
    """
    root = Path(bundle_root)
    paths = config_files(root, config_file)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: bundle config not found (is {root} a MONAI bundle folder?)")
    parser = ConfigParser()
    parser.read_config([str(p) for p in paths])
    parser["bundle_root"] = str(root)
    if device is not None:
        parser["device"] = f"$torch.device('{torch.device(device)}')"
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def configured_class_names(parser: ConfigParser | None) -> list[str] | None:
    """The config's ``class_names`` as a list of str, or None when it has none or they cannot be evaluated here
    (for example an expression that reads the training datalist)."""
    if parser is None or "class_names" not in parser:
        return None
    try:
        names = parser.get_parsed_content("class_names")
    except Exception as err:  # noqa: BLE001 - an expression that needs the training data is no error here
        logger.info("the config's class_names cannot be evaluated here (%s)", err)
        return None
    if isinstance(names, (list, tuple)) and names:
        return [str(n) for n in names]
    return None


def bundle_preprocessing(parser: ConfigParser) -> Callable[[Any], Any]:
    """The config's ``preprocessing`` as one callable (a list of transforms becomes a ``Compose``)."""
    from monai.transforms import Compose

    pre = parser.get_parsed_content("preprocessing")
    return pre if callable(pre) else Compose(list(pre))


@dataclass
class BundleNetwork:
    """A bundle's network with its weights loaded.

    Attributes:
        network: ``network_def`` with the weights, in eval mode (on the config's ``device`` when one was given).
        parser: the bundle's config (read more keys from it, e.g. :func:`bundle_preprocessing`).
        bundle_root: the bundle folder.
        config_path: the config file the network comes from (the last layer).
        ckpt_path: the weights; ``checksum``: their SHA-256.
    """

    network: torch.nn.Module
    parser: ConfigParser
    bundle_root: Path
    config_path: Path
    ckpt_path: Path
    checksum: str

    @property
    def class_names(self) -> list[str] | None:
        """The config's class names (:func:`configured_class_names`)."""
        return configured_class_names(self.parser)


def load_bundle_network(
    bundle_root: str | PathLike,
    ckpt_path: str | PathLike | None = None,
    config_file: str = "inference.json",
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    what: str = "bundle",
) -> BundleNetwork:
    """Build a bundle's ``network_def`` and load its weights.

    Args:
        bundle_root: the bundle folder.
        ckpt_path: the weights (default: the config's ``ckpt_path``, else ``models/model.pt``): a state dict or a
            training checkpoint holding it (see :func:`~medicraft_monai.networks.checkpoint.load_state_dict`).
        config_file: the config with ``network_def`` (a file name in ``configs/`` or a path relative to the bundle),
            layered on ``configs/common.json``.
        overrides: config keys to set first (e.g. ``{"num_classes": 4}`` when the bundle reads its classes from a
            datalist that is not there).
        device: where the network goes (also the config's ``device``); default: left on the CPU.
        what: what the bundle is, for the messages ("classifier bundle").

    Raises:
        FileNotFoundError: the config or the weights are missing (with how to make them).
        ValueError: no ``network_def``, a ``network_def`` that cannot be built, or weights that do not match it;
            :class:`~medicraft_monai.networks.checkpoint.CheckpointError` for an unreadable checkpoint.
    """
    root = Path(bundle_root)
    parser = bundle_parser(root, config_file, overrides, device)
    cfg = config_files(root, config_file)[-1]
    if "network_def" not in parser:
        raise ValueError(f"{cfg}: no 'network_def' key")
    if ckpt_path is None:
        ckpt_path = parser.get_parsed_content("ckpt_path") if "ckpt_path" in parser else root / "models" / "model.pt"
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"{ckpt}: no trained weights for the {what}; train the bundle first "
            f'(python -m monai.bundle run --config_file "{[str(p) for p in config_files(root, "train.json")]}" '
            f"--bundle_root {root}) "
            "or give its checkpoint"
        )
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # noqa: BLE001 - ConfigParser wraps errors of the referenced expressions
        raise ValueError(
            f"{cfg}: cannot build network_def ({type(err).__name__}: {err}); set the keys it depends on with "
            "overrides, for example overrides={'num_classes': 4}"
        ) from err
    state = load_state_dict(ckpt, f"{what} checkpoint")
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise ValueError(f"{ckpt}: checkpoint does not match {cfg} network_def: {err}") from err
    if device is not None:
        network.to(torch.device(device))
    network.eval()
    return BundleNetwork(network, parser, root, cfg, ckpt, file_sha256(ckpt))

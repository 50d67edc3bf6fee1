"""Pluggable feature extractors for the distribution metrics (Frechet distance, KID, PRDC, privacy audit).

The usual Inception-v3 features come from ImageNet photographs and a download; neither fits OCT here. A
:class:`FeatureExtractor` wraps *any* network trained on OCT and turns a ``(B, 1, H, W)`` batch in [0, 1] into
``(B, D)`` features (global average pooling when the network returns feature maps):

- :meth:`FeatureExtractor.from_network`: a MONAI ``DenseNet`` (its ``features`` and ``class_layers`` without the
  last linear layer), a MONAI ``ResNet`` (everything before ``fc``), a module with an ``encoder`` attribute (for
  example a self-supervised encoder-decoder), otherwise the module itself;
- :meth:`FeatureExtractor.from_torchscript`: a TorchScript file mapping images to features or maps;
- :meth:`FeatureExtractor.from_bundle`: a MONAI bundle folder (``network_def`` of ``configs/inference.json`` on
  ``configs/common.json``, plus ``models/model.pt``).

The default, :data:`DEFAULT_EXTRACTOR` (``"oct"``), is the **fixed** OCT feature extractor shipped as
``bundles/oct_synthesis_eval/models/model.pt`` (:data:`DEFAULT_BUNDLE`): the DenseNet121 trunk of the trained
``oct_classifier`` (1024 features at 128 x 256). Being the same file for every user, run and data set, it makes a
Frechet distance, KID or precision/recall mean the same number everywhere, as Inception does for FID; its SHA-256
is recorded with every result (:meth:`FeatureExtractor.describe`).

:func:`load_feature_extractor` picks the right constructor for a module, a path, a bundle folder or a name.
:func:`pixel_features` (down-sampled, flattened pixels) is the pixel space of the memorisation audit; it is not
a substitute for learned features in the Frechet distance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medicraft_monai.bundles import bundle_path
from medicraft_monai.utils import file_sha256

__all__ = [
    "DEFAULT_BUNDLE",
    "DEFAULT_EXTRACTOR",
    "RESIZE_MODES",
    "TRAIN_EXTRACTOR",
    "FeatureExtractor",
    "PixelFeatures",
    "extract_features",
    "load_feature_extractor",
    "pixel_features",
]

#: The bundle that ships the fixed OCT feature extractor (its ``network_def`` and ``models/model.pt``).
DEFAULT_BUNDLE = bundle_path("oct_synthesis_eval")

#: The name of the default feature extractor: the fixed one of :data:`DEFAULT_BUNDLE`.
DEFAULT_EXTRACTOR = "oct"

#: The name that asks the evaluation to train its feature network on the user's real training split
#: (:func:`medicraft_monai.evaluation.evaluate_synthesis`; it needs the data, so :func:`load_feature_extractor`
#: cannot make it).
TRAIN_EXTRACTOR = "train"

#: How a batch of another size reaches the extractor's input size (:class:`~medicraft_monai.transforms.OCTResize`).
RESIZE_MODES = ("stretch", "crop", "fit")

_PROGRESS_MIN_BATCHES = 4


class _ResNetTrunk(nn.Module):
    """A MONAI ``ResNet`` up to and including its global pooling (its ``fc`` left out)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return n.avgpool(x).flatten(1)


def _is_monai_densenet(net: nn.Module) -> bool:
    return isinstance(getattr(net, "features", None), nn.Module) and isinstance(
        getattr(net, "class_layers", None), nn.Sequential
    )


def _is_monai_resnet(net: nn.Module) -> bool:
    return all(hasattr(net, a) for a in ("conv1", "layer1", "layer4", "avgpool", "fc", "no_max_pool"))


def _densenet_trunk(net: nn.Module) -> nn.Module:
    head = [m for name, m in net.class_layers.named_children() if name != "out" and not isinstance(m, nn.Linear)]
    return nn.Sequential(net.features, *head)


class FeatureExtractor(nn.Module):
    """Map a ``(B, 1, H, W)`` batch of B-scans in [0, 1] to ``(B, D)`` float32 features.

    The input is first brought to ``spatial_size`` (when given and different), mapped linearly from [0, 1] to
    ``input_range`` and repeated to ``in_channels`` channels, so that the network sees what it was trained on. A
    network output with spatial dimensions is averaged over them (global average pooling); a tuple or list output
    contributes its last element (the deepest level of an encoder).

    Resizing is :class:`~medicraft_monai.transforms.OCTResize` with ``resize_mode``, the transform the project's
    classifiers are trained with, applied to every image of the batch alike: ``"crop"`` cuts the centre of the
    image to the aspect of ``spatial_size`` and resamples it (bilinear; Gaussian anti-aliasing when shrinking),
    ``"stretch"`` resamples each axis on its own, ``"fit"`` keeps the aspect and pads with zeros. The same input
    size therefore always gives the same network input, whatever the batch or the data set.

    Args:
        network: the module (or TorchScript module) computing features or feature maps.
        spatial_size: (H, W) the network expects; ``None`` keeps the input size.
        input_range: the intensity range the network expects ((0, 1) for the project's classifiers,
            (-1, 1) for a diffusion model's encoder).
        in_channels: channels the network expects (the gray channel is repeated).
        name: a human-readable description, recorded in reports.
        resize_mode: ``"stretch"``, ``"crop"`` or ``"fit"`` (see above).
        source: the file the weights come from (recorded in reports).
        checksum: the SHA-256 of ``source`` (recorded in reports).
    """

    def __init__(
        self,
        network: nn.Module,
        spatial_size: Sequence[int] | None = None,
        input_range: Sequence[float] = (0.0, 1.0),
        in_channels: int = 1,
        name: str | None = None,
        resize_mode: str = "stretch",
        source: str | PathLike | None = None,
        checksum: str | None = None,
    ) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(f"network must be a torch module, got {type(network).__name__}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.network = network
        self.spatial_size = None if spatial_size is None else tuple(int(v) for v in spatial_size)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.in_channels = int(in_channels)
        self.name = name or type(network).__name__
        self.resize_mode = resize_mode
        self.source = None if source is None else str(source)
        self.checksum = checksum

    def describe(self) -> dict[str, Any]:
        """What a report records about the extractor: its name, weights file and SHA-256, and its input handling."""
        return {
            "extractor": self.name,
            "file": self.source,
            "sha256": self.checksum,
            "input_size": None if self.spatial_size is None else list(self.spatial_size),
            "resize_mode": self.resize_mode,
            "input_range": list(self.input_range),
        }

    # ---------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_network(cls, net: nn.Module, **kwargs: Any) -> FeatureExtractor:
        """Features of a network: the trunk of a MONAI DenseNet or ResNet, an ``encoder``, or the module itself.

        Args:
            net: the network (its weights are shared, not copied).
            kwargs: :class:`FeatureExtractor` arguments (``spatial_size``, ``input_range``, ``in_channels``, ``name``).
        """
        if isinstance(net, FeatureExtractor):
            return net
        if _is_monai_densenet(net):
            trunk, kind = _densenet_trunk(net), "DenseNet trunk (features + pooling)"
        elif _is_monai_resnet(net):
            trunk, kind = _ResNetTrunk(net), "ResNet trunk (before fc)"
        elif isinstance(getattr(net, "encoder", None), nn.Module):
            trunk, kind = net.encoder, f"{type(net).__name__}.encoder"
        else:
            trunk, kind = net, type(net).__name__
        kwargs.setdefault("name", kind)
        return cls(trunk, **kwargs)

    @classmethod
    def from_torchscript(cls, path: str | PathLike, **kwargs: Any) -> FeatureExtractor:
        """A TorchScript file (``torch.jit.save``) mapping images to features or feature maps.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a TorchScript archive (a plain state dict needs its network definition:
                use :meth:`from_bundle` or :meth:`from_network`).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: TorchScript feature extractor not found")
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch raises several types for non-TorchScript files
            raise ValueError(
                f"{p}: not a TorchScript file ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "a state dict needs its network definition: use FeatureExtractor.from_bundle(bundle_root) or "
                "FeatureExtractor.from_network(net) after loading the weights"
            ) from err
        kwargs.setdefault("name", f"TorchScript {p.name}")
        kwargs.setdefault("source", p.resolve())
        kwargs.setdefault("checksum", file_sha256(p))
        return cls(module, **kwargs)

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | PathLike,
        ckpt_path: str | PathLike | None = None,
        config_file: str = "inference.json",
        overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> FeatureExtractor:
        """The network of a MONAI bundle: ``network_def`` of ``config_file`` with the weights of ``ckpt_path``.

        The bundle's config says how images reach the network, with these keys (each optional, a keyword
        argument wins over it):

        - ``extractor_image_size`` (else ``image_size``): the (H, W) the network sees (``spatial_size``);
        - ``extractor_resize_mode`` (else ``resize_mode``): how other sizes get there (``resize_mode``);
        - ``extractor_input_range``: the intensity range the network expects (``input_range``, default [0, 1]);
        - ``in_channels``: the channels the network expects;
        - ``extractor_name``: what the network is, for reports (default: the kind of trunk).

        Args:
            bundle_root: the bundle folder.
            ckpt_path: the checkpoint (default ``<bundle_root>/models/model.pt``): a state dict, or a dict holding
                it under ``"model"``, ``"network"`` or ``"state_dict"``.
            config_file: the config with ``network_def``, relative to ``bundle_root``.
            overrides: config keys to set before parsing (for example ``{"num_classes": 4}`` when the bundle reads
                its class list from a datalist that is not there).
            kwargs: :class:`FeatureExtractor` arguments.

        Raises:
            FileNotFoundError: the config or the checkpoint is missing (with how to make it).
            ValueError: the config has no ``network_def``, or the checkpoint does not fit it.
        """
        from medicraft_monai.networks.bundle import load_bundle_network
        from medicraft_monai.networks.release import bundle_version

        root = Path(bundle_root)
        loaded = load_bundle_network(
            root,
            ckpt_path=ckpt_path if ckpt_path is not None else root / "models" / "model.pt",
            config_file=config_file,
            overrides=overrides,
        )
        parser = loaded.parser

        def setting(*keys: str) -> Any:
            for key in keys:
                if key in parser:
                    try:
                        return parser.get_parsed_content(key)
                    except Exception:  # noqa: BLE001 - an unusable key only means the default
                        return None
            return None

        for arg, keys in (
            ("spatial_size", ("extractor_image_size", "image_size")),
            ("resize_mode", ("extractor_resize_mode", "resize_mode")),
            ("input_range", ("extractor_input_range",)),
            ("in_channels", ("in_channels",)),
        ):
            value = setting(*keys)
            if arg not in kwargs and value is not None and (arg != "resize_mode" or value in RESIZE_MODES):
                kwargs[arg] = value
        kwargs.setdefault("source", loaded.ckpt_path.resolve())
        kwargs.setdefault("checksum", loaded.checksum)
        named = "name" in kwargs
        extractor = cls.from_network(loaded.network, **kwargs)
        if not named:
            try:
                version = f" {bundle_version(root)}"
            except (FileNotFoundError, ValueError):  # a bundle without metadata is still a network
                version = ""
            extractor.name = f"{root.resolve().name} bundle{version}: {setting('extractor_name') or extractor.name}"
        return extractor

    # ------------------------------------------------------------------------------------------------- forward
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize, rescale and repeat channels as the network expects."""
        if x.ndim != 4:
            raise ValueError(f"FeatureExtractor expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        x = x.float()
        if self.spatial_size is not None and tuple(x.shape[-2:]) != self.spatial_size:
            x = self._resize(x)
        lo, hi = self.input_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        if x.shape[1] != self.in_channels:
            if x.shape[1] != 1:
                raise ValueError(f"cannot map {x.shape[1]} channels to the {self.in_channels} the network expects")
            x = x.expand(-1, self.in_channels, -1, -1)
        return x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """:class:`~medicraft_monai.transforms.OCTResize` of every image and channel alike (they are its channels)."""
        from monai.utils import convert_to_tensor

        from medicraft_monai.transforms import OCTResize

        b, c, h, w = x.shape
        out = OCTResize(self.spatial_size, mode=self.resize_mode)(x.reshape(b * c, h, w))
        return convert_to_tensor(out, track_meta=False).reshape(b, c, *self.spatial_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> (B, D) float32 features."""
        out = self.network(self.preprocess(x))
        if isinstance(out, (tuple, list)):
            out = out[-1]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.name}: the network returned {type(out).__name__}, expected a tensor")
        if out.ndim > 2:
            out = out.flatten(2).mean(-1)
        elif out.ndim == 1:
            out = out[:, None]
        return out.float()


class PixelFeatures(nn.Module):
    """Down-sampled, flattened pixels (see :func:`pixel_features`) as a module."""

    def __init__(self, size: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        self.size = tuple(int(v) for v in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_features(x, self.size)


def pixel_features(images: torch.Tensor, size: Sequence[int] = (32, 64)) -> torch.Tensor:
    """Pixel-space features: each image area-averaged to ``size`` (H, W) and flattened.

    Euclidean distances between these vectors are root-sum-square pixel differences of the blurred images, the
    pixel space of the memorisation audit (a copied patient B-scan stays close here even when a learned feature
    extractor is blind to the copy). Not meant for the Frechet distance: pixels are not semantic features.

    Args:
        images: ``(N, C, H, W)`` images.
        size: (H, W) after down-sampling (adaptive average pooling).

    Returns:
        ``(N, C * size[0] * size[1])`` float32.
    """
    if images.ndim != 4:
        raise ValueError(f"pixel_features expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    return F.adaptive_avg_pool2d(images.float(), tuple(int(v) for v in size)).flatten(1)


def load_feature_extractor(spec: Any = None, **kwargs: Any) -> FeatureExtractor:
    """A :class:`FeatureExtractor` from a name, a module, a TorchScript file or a bundle folder.

    Args:
        spec: ``None`` or ``"oct"`` (:data:`DEFAULT_EXTRACTOR`: the fixed OCT extractor shipped in
            :data:`DEFAULT_BUNDLE`), ``"pixels"`` (:class:`PixelFeatures`, a baseline without learning), an
            ``nn.Module`` (see :meth:`FeatureExtractor.from_network`), a bundle folder (holding
            ``configs/inference.json`` with a ``network_def``, and ``models/model.pt``), or a TorchScript
            ``.ts``/``.pt`` file.
        kwargs: :class:`FeatureExtractor` arguments.

    Raises:
        FileNotFoundError: the path does not exist, or the bundle has no weights.
        ValueError: the path is neither a bundle folder nor a TorchScript file; ``"train"`` (only the evaluation,
            which has the real training split, can train a feature network: ``evaluate_synthesis``).
        TypeError: ``spec`` is of another type.
    """
    if spec is None or (isinstance(spec, str) and spec == DEFAULT_EXTRACTOR):
        return FeatureExtractor.from_bundle(DEFAULT_BUNDLE, **kwargs)
    if isinstance(spec, FeatureExtractor):
        return spec
    if isinstance(spec, nn.Module):
        return FeatureExtractor.from_network(spec, **kwargs)
    if isinstance(spec, str) and spec == "pixels":
        kwargs.setdefault("name", "pixels")
        return FeatureExtractor(PixelFeatures(), **kwargs)
    if isinstance(spec, str) and spec == TRAIN_EXTRACTOR:
        raise ValueError(
            f"feature extractor {TRAIN_EXTRACTOR!r} is trained on a real training split: pass it to "
            "medicraft_monai.evaluation.evaluate_synthesis (or medicraft evaluate --feature_extractor train); "
            f"load_feature_extractor makes {DEFAULT_EXTRACTOR!r}, 'pixels', a bundle folder or a TorchScript file"
        )
    if isinstance(spec, (str, PathLike)):
        p = Path(spec)
        if p.is_dir():
            if not (p / "configs" / "inference.json").is_file():
                raise ValueError(f"{p}: a folder but not a MONAI bundle (no configs/inference.json)")
            return FeatureExtractor.from_bundle(p, **kwargs)
        if not p.exists():
            raise FileNotFoundError(
                f"{p}: feature extractor not found (expected {DEFAULT_EXTRACTOR!r}, {TRAIN_EXTRACTOR!r}, 'pixels', "
                "a bundle folder or a TorchScript file)"
            )
        if p.suffix.lower() not in (".ts", ".pt", ".pth", ".zip"):
            raise ValueError(f"{p}: unknown feature extractor file (expected a TorchScript .ts or .pt file)")
        return FeatureExtractor.from_torchscript(p, **kwargs)
    raise TypeError(f"cannot make a feature extractor from {type(spec).__name__}: {spec!r}")


def extract_features(
    extractor: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Features of ``images`` ``(N, 1, H, W)`` in [0, 1] as an ``(N, D)`` float32 CPU tensor.

    Runs in ``torch.inference_mode`` with the extractor in eval mode (its train/eval state is restored after).
    A plain module is wrapped by :meth:`FeatureExtractor.from_network`.
    """
    if images.ndim != 4:
        raise ValueError(f"extract_features expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    fe = extractor if isinstance(extractor, FeatureExtractor) else FeatureExtractor.from_network(extractor)
    dev = torch.device(device)
    was_training = fe.training
    fe.eval()
    fe.to(dev)
    n_batches = (len(images) + batch_size - 1) // batch_size
    out: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            starts = range(0, len(images), batch_size)
            for s in tqdm(
                starts, desc="features", unit="batch", disable=not progress or n_batches < _PROGRESS_MIN_BATCHES
            ):
                out.append(fe(images[s : s + batch_size].to(dev)).float().cpu())
    finally:
        fe.train(was_training)
    if not out:
        raise ValueError("extract_features: no images given")
    return torch.cat(out)

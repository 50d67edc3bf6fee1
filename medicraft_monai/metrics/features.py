"""Pluggable feature extractors for the distribution metrics (Frechet distance, KID, PRDC, privacy audit).

The usual Inception-v3 features come from ImageNet photographs and a download; neither fits OCT here. A
:class:`FeatureExtractor` wraps *any* network trained on OCT and turns a ``(B, 1, H, W)`` batch in [0, 1] into
``(B, D)`` features (global average pooling when the network returns feature maps):

- :meth:`FeatureExtractor.from_network`: a MONAI ``DenseNet`` (its ``features`` and ``class_layers`` without the
  last linear layer), a MONAI ``ResNet`` (everything before ``fc``), a module with an ``encoder`` attribute (for
  example a self-supervised encoder-decoder), otherwise the module itself;
- :meth:`FeatureExtractor.from_torchscript`: a TorchScript file mapping images to features or maps;
- :meth:`FeatureExtractor.from_bundle`: a MONAI bundle folder (``configs/inference.json`` ``network_def`` plus
  ``models/model.pt``), by default ``bundles/oct_classifier``.

:func:`load_feature_extractor` picks the right constructor for a module, a path or a bundle folder.
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

__all__ = [
    "DEFAULT_BUNDLE",
    "FeatureExtractor",
    "PixelFeatures",
    "extract_features",
    "load_feature_extractor",
    "pixel_features",
]

#: The default feature extractor: the shipped OCT classifier bundle (trained on OCT, no download).
DEFAULT_BUNDLE = bundle_path("oct_classifier")

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

    The input is first resized to ``spatial_size`` (when given), mapped linearly from [0, 1] to
    ``input_range`` and repeated to ``in_channels`` channels, so that the network sees what it was trained
    on. A network output with spatial dimensions is averaged over them (global average pooling); a tuple or
    list output contributes its last element (the deepest level of an encoder).

    Args:
        network: the module (or TorchScript module) computing features or feature maps.
        spatial_size: (H, W) the network expects; ``None`` keeps the input size.
        input_range: the intensity range the network expects ((0, 1) for the project's classifiers,
            (-1, 1) for a diffusion model's encoder).
        in_channels: channels the network expects (the gray channel is repeated).
        name: a human-readable description, recorded in reports.
    """

    def __init__(
        self,
        network: nn.Module,
        spatial_size: Sequence[int] | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        in_channels: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(f"network must be a torch module, got {type(network).__name__}")
        self.network = network
        self.spatial_size = None if spatial_size is None else tuple(int(v) for v in spatial_size)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.in_channels = int(in_channels)
        self.name = name or type(network).__name__

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

        Args:
            bundle_root: the bundle folder.
            ckpt_path: the checkpoint (default ``<bundle_root>/models/model.pt``): a state dict, or a dict holding
                it under ``"model"``, ``"network"`` or ``"state_dict"``.
            config_file: the config with ``network_def``, relative to ``bundle_root``.
            overrides: config keys to set before parsing (for example ``{"num_classes": 4}`` when the bundle reads
                its class list from a datalist that is not there).
            kwargs: :class:`FeatureExtractor` arguments; ``spatial_size`` defaults to the config's
                ``image_size`` when it has one.

        Raises:
            FileNotFoundError: the config or the checkpoint is missing (with how to make it).
            ValueError: the config has no ``network_def``, or the checkpoint does not fit it.
        """
        from medicraft_monai.networks.bundle import load_bundle_network

        root = Path(bundle_root)
        loaded = load_bundle_network(
            root,
            ckpt_path=ckpt_path if ckpt_path is not None else root / "models" / "model.pt",
            config_file=config_file,
            overrides=overrides,
        )
        if "spatial_size" not in kwargs and "image_size" in loaded.parser:
            try:
                kwargs["spatial_size"] = [int(v) for v in loaded.parser.get_parsed_content("image_size")]
            except Exception:  # noqa: BLE001 - an unusable image_size only means no resizing
                pass
        net = loaded.network
        extractor = cls.from_network(net, **kwargs)
        extractor.name = f"{root.name} bundle: {extractor.name}"
        return extractor

    # ------------------------------------------------------------------------------------------------- forward
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize, rescale and repeat channels as the network expects."""
        if x.ndim != 4:
            raise ValueError(f"FeatureExtractor expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        x = x.float()
        if self.spatial_size is not None and tuple(x.shape[-2:]) != self.spatial_size:
            x = F.interpolate(x, size=self.spatial_size, mode="bilinear", align_corners=False, antialias=True)
        lo, hi = self.input_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        if x.shape[1] != self.in_channels:
            if x.shape[1] != 1:
                raise ValueError(f"cannot map {x.shape[1]} channels to the {self.in_channels} the network expects")
            x = x.expand(-1, self.in_channels, -1, -1)
        return x

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
    """A :class:`FeatureExtractor` from a module, a TorchScript file, a bundle folder, ``"pixels"`` or ``None``.

    Args:
        spec: ``None`` (the default OCT classifier bundle, :data:`DEFAULT_BUNDLE`, which must be trained), an
            ``nn.Module`` (see :meth:`FeatureExtractor.from_network`), a path to a TorchScript ``.ts``/``.pt``
            file, a bundle folder (holding ``configs/inference.json``), or ``"pixels"``
            (:class:`PixelFeatures`, a baseline without learning).
        kwargs: :class:`FeatureExtractor` arguments.

    Raises:
        FileNotFoundError: the path does not exist, or the default bundle is not trained.
        ValueError: the path is neither a bundle folder nor a TorchScript file.
        TypeError: ``spec`` is of another type.
    """
    if spec is None:
        return FeatureExtractor.from_bundle(DEFAULT_BUNDLE, **kwargs)
    if isinstance(spec, FeatureExtractor):
        return spec
    if isinstance(spec, nn.Module):
        return FeatureExtractor.from_network(spec, **kwargs)
    if isinstance(spec, str) and spec == "pixels":
        kwargs.setdefault("name", "pixels")
        return FeatureExtractor(PixelFeatures(), **kwargs)
    if isinstance(spec, (str, PathLike)):
        p = Path(spec)
        if p.is_dir():
            if not (p / "configs" / "inference.json").is_file():
                raise ValueError(f"{p}: a folder but not a MONAI bundle (no configs/inference.json)")
            return FeatureExtractor.from_bundle(p, **kwargs)
        if not p.exists():
            raise FileNotFoundError(f"{p}: feature extractor not found (expected a bundle folder or TorchScript file)")
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

"""Networks for context restoration: a MONAI :class:`~monai.networks.nets.BasicUNet` whose encoder can be reused.

- :class:`ContextRestorationNet`: the encoder-decoder pretrained to restore context-disordered images (a
  ``BasicUNet``; its state dict has the same keys, so a ``BasicUNet`` checkpoint loads into it and back).
- :class:`BasicUNetEncoder`: the contracting path of a ``BasicUNet`` (``conv_0``, ``down_1`` ... ``down_4``, same
  module names, so the pretrained encoder weights load by name).
- :class:`EncoderClassifier`: a :class:`BasicUNetEncoder` with a pooled linear head (fine-tuning for
  classification).
- :class:`PooledEncoder`: images in [0, 1] -> (B, D) globally pooled encoder features (the exported feature
  extractor for Frechet distances).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from monai.networks.nets.basic_unet import Down, TwoConv
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = [
    "DEFAULT_FEATURES",
    "ENCODER_PREFIXES",
    "BasicUNetEncoder",
    "ContextRestorationNet",
    "EncoderClassifier",
    "PooledEncoder",
    "features_from_state_dict",
]

DEFAULT_FEATURES: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
"""BasicUNet's default six feature counts (five encoder levels and the last decoder level)."""

ENCODER_PREFIXES: tuple[str, ...] = ("conv_0.", "down_1.", "down_2.", "down_3.", "down_4.")
"""State-dict key prefixes of a BasicUNet's encoder (contracting path)."""

_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
_NORM = ("instance", {"affine": True})


class ContextRestorationNet(BasicUNet):
    """A 2-D ``BasicUNet`` that restores context-disordered images; the encoder is :attr:`ENCODER_PREFIXES`.

    Args:
        spatial_dims: 2 for B-scans.
        in_channels: image channels.
        out_channels: output channels (1 for restoration; the number of classes when the same architecture is
            fine-tuned for segmentation).
        features: six feature counts (see :class:`monai.networks.nets.BasicUNet`).
        act, norm, bias, dropout, upsample: see :class:`monai.networks.nets.BasicUNet`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        act: str | tuple = _ACT,
        norm: str | tuple = _NORM,
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=tuple(features),
            act=act,
            norm=norm,
            bias=bias,
            dropout=dropout,
            upsample=upsample,
        )
        fea = ensure_tuple_rep(features, 6)
        self.encoder_args = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "features": tuple(int(f) for f in fea[:5]),
            "act": act,
            "norm": norm,
            "bias": bias,
            "dropout": dropout,
        }

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights, with the keys of :class:`BasicUNetEncoder`."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIXES)}

    def make_encoder(self) -> BasicUNetEncoder:
        """A new :class:`BasicUNetEncoder` holding a copy of this network's encoder weights."""
        enc = BasicUNetEncoder(**self.encoder_args)
        enc.load_state_dict(self.encoder_state_dict())
        return enc


class BasicUNetEncoder(nn.Module):
    """The contracting path of a :class:`monai.networks.nets.BasicUNet`: four poolings, ``features[4]`` channels.

    Module names equal BasicUNet's (``conv_0``, ``down_1`` ... ``down_4``), so a BasicUNet's encoder weights load
    with ``load_state_dict`` directly. ``forward`` returns the deepest feature map (B, features[4], H/16, W/16).

    Args:
        spatial_dims, in_channels, act, norm, bias, dropout: see :class:`monai.networks.nets.BasicUNet`.
        features: at least five feature counts (BasicUNet's six are accepted; the sixth is ignored).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        act: str | tuple = _ACT,
        norm: str | tuple = _NORM,
        bias: bool = True,
        dropout: float | tuple = 0.0,
    ) -> None:
        super().__init__()
        fea = tuple(int(f) for f in features)
        if len(fea) < 5:
            raise ValueError(f"features needs five encoder feature counts, got {features}")
        self.out_channels = fea[4]
        self.conv_0 = TwoConv(spatial_dims, in_channels, fea[0], act, norm, bias, dropout)
        self.down_1 = Down(spatial_dims, fea[0], fea[1], act, norm, bias, dropout)
        self.down_2 = Down(spatial_dims, fea[1], fea[2], act, norm, bias, dropout)
        self.down_3 = Down(spatial_dims, fea[2], fea[3], act, norm, bias, dropout)
        self.down_4 = Down(spatial_dims, fea[3], fea[4], act, norm, bias, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_4(self.down_3(self.down_2(self.down_1(self.conv_0(x)))))


class EncoderClassifier(nn.Module):
    """Classification network: a :class:`BasicUNetEncoder`, global average pooling, dropout and a linear layer.

    The encoder is the ``encoder`` attribute (state-dict keys ``encoder.conv_0...``), so
    :func:`medicraft_monai.ssl.load_pretrained` fills it from a context-restoration checkpoint.

    Args:
        num_classes: number of classes (output logits).
        spatial_dims, in_channels, features, act, norm, bias: see :class:`BasicUNetEncoder`.
        dropout: dropout before the linear layer.
    """

    def __init__(
        self,
        num_classes: int,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        act: str | tuple = _ACT,
        norm: str | tuple = _NORM,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = BasicUNetEncoder(spatial_dims, in_channels, features, act, norm, bias)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(self.encoder.out_channels, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.flatten(F.adaptive_avg_pool2d(self.encoder(x), 1), 1)
        return self.head(self.dropout(feats))


class PooledEncoder(nn.Module):
    """(B, 1, H, W) images in [0, 1] -> (B, D) features: optional resize, the encoder, global average pooling.

    Args:
        encoder: a :class:`BasicUNetEncoder`.
        input_size: (H, W) the images are resized to first (bilinear), the size the encoder was trained at;
            ``None`` keeps the size.
    """

    def __init__(self, encoder: BasicUNetEncoder, input_size: Sequence[int] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_size = None if input_size is None else [int(s) for s in input_size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return torch.flatten(F.adaptive_avg_pool2d(self.encoder(x), 1), 1)


def features_from_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[int, int, int, int, int]:
    """The five encoder feature counts of a BasicUNet (or encoder) state dict, read from its weight shapes.

    Raises:
        KeyError: the state dict holds no BasicUNet encoder.
    """
    names = ["conv_0.conv_0.conv.weight"] + [f"down_{k}.convs.conv_0.conv.weight" for k in range(1, 5)]
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"not a BasicUNet encoder state dict: no {missing[0]!r}")
    f = [int(state[n].shape[0]) for n in names]
    return f[0], f[1], f[2], f[3], f[4]

"""Networks beside MONAI's own: :class:`DenseNetFeatures`, the trunk of a MONAI ``DenseNet`` classifier.

The fixed OCT feature extractor of the distribution metrics (``bundles/oct_synthesis_eval/models/model.pt``) is the
trunk of the shipped OCT classifier; this class builds it from a bundle config (``network_def``), and its state dict
is the classifier's without the last linear layer (``class_layers.out``), so the classifier's weights load into it
key by key.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DenseNet

__all__ = ["DenseNetFeatures"]


class DenseNetFeatures(DenseNet):
    """MONAI's ``DenseNet`` without its last linear layer: ``(B, C, *spatial)`` -> ``(B, D)`` pooled features.

    The output is what the classifier's head sees: the dense blocks, the final batch norm and ReLU, global average
    pooling, flattened (``D = init_features`` plus ``growth_rate`` per layer, halved at each transition; 1024 for
    DenseNet121). The parameter names are those of :class:`monai.networks.nets.DenseNet` (``features.*``), so a
    trained classifier's state dict without ``class_layers.out.*`` loads strictly.

    Args:
        spatial_dims, in_channels, init_features, growth_rate, block_config, bn_size, act, norm, dropout_prob:
            as :class:`monai.networks.nets.DenseNet`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            bn_size=bn_size,
            act=act,
            norm=norm,
            dropout_prob=dropout_prob,
        )
        self.out_features = int(self.class_layers.out.in_features)
        del self.class_layers.out

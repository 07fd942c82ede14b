"""Semantic FPN decode head (Kirillov et al., Panoptic Feature Pyramid Networks, 2019)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork

from .upernet import resize


class SemanticFPNHead(nn.Module):
    """Semantic FPN: an FPN neck, then per level 3x3 conv blocks with 2x upsampling down to the finest
    level, summed and classified.

    Laid out like mmsegmentation's ``FPN`` neck + ``FPNHead``, which the official DAT Semantic FPN
    results use. The logits come out at the resolution of the finest input map (stride 4 for DAT).
    Each upsampling step resizes to the next finer map's size, so odd input sizes work.

    Args:
        in_channels: channels of each input map, finest first; each map has half the resolution of
            the one before.
        num_classes: output classes.
        channels: width of the per-level conv blocks (128 in the official configs).
        fpn_channels: width of the FPN neck; ``None``: ``2 * channels``.
        dropout: dropout before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 128,
                 fpn_channels: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        fpn_channels = fpn_channels or 2 * channels
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels)
        self.scale_heads = nn.ModuleList(
            nn.ModuleList(Conv2dNormActivation(fpn_channels if k == 0 else channels, channels, 3)
                          for k in range(max(level, 1)))
            for level in range(len(in_channels))
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Maps ``[B, C_i, h_i, w_i]`` (finest first) -> logits ``[B, num_classes, h_0, w_0]``."""
        pyramid = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
        out = 0
        for level, (convs, x) in enumerate(zip(self.scale_heads, pyramid)):
            for k, conv in enumerate(convs):
                x = conv(x)
                if level > 0:  # up one level per block: level -> level - 1 -> ... -> 0
                    x = resize(x, pyramid[level - k - 1].shape[-2:])
            out = out + x
        return self.classifier(self.dropout(out))

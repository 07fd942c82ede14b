"""UperNet decode head (Xiao et al., 2018) and the auxiliary FCN head used with it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize ``[B, C, h, w]`` maps to ``size`` (``align_corners=False``)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPoolingModule(nn.Module):
    """PSPNet pyramid pooling: pool to each scale, 1x1 conv, upsample and concatenate with the input.

    Args:
        in_channels: channels of the input map.
        channels: channels of each pooled branch.
        pool_scales: output sizes of the adaptive average pools.
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), Conv2dNormActivation(in_channels, channels, 1))
            for scale in pool_scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C + len(pool_scales) * channels, h, w]``."""
        return torch.cat([x] + [resize(branch(x), x.shape[-2:]) for branch in self.branches], dim=1)


class UperNetHead(nn.Module):
    """UperNet: pyramid pooling on the coarsest map, an FPN over all maps, and a fused classifier.

    Laid out like mmsegmentation's ``UPerHead``, which the official DAT segmentation results use.
    The logits come out at the resolution of the finest input map (stride 4 for DAT). Its layers use
    BatchNorm, so training needs batches of at least two images (the 1x1 pooled branch has one value
    per channel and image).

    Args:
        in_channels: channels of each input map, finest first.
        num_classes: output classes.
        channels: width of the FPN and fusion layers (512 in the official configs).
        pool_scales: pyramid pooling scales on the coarsest map.
        dropout: dropout before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, pool_scales)
        self.ppm_bottleneck = Conv2dNormActivation(in_channels[-1] + len(pool_scales) * channels,
                                                   channels, 3)
        self.lateral_convs = nn.ModuleList(Conv2dNormActivation(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(Conv2dNormActivation(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = Conv2dNormActivation(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Maps ``[B, C_i, h_i, w_i]`` (finest first) -> logits ``[B, num_classes, h_0, w_0]``."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.ppm_bottleneck(self.ppm(features[-1])))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [resize(x, size) for x in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """Auxiliary FCN head (mmsegmentation's ``FCNHead``): 3x3 conv blocks and a 1x1 classifier.

    Args:
        in_channels: channels of the input map.
        num_classes: output classes.
        channels: width of the conv blocks.
        num_convs: number of 3x3 conv-BN-ReLU blocks.
        dropout: dropout before the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(Conv2dNormActivation(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels if num_convs else in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, h, w]`` -> logits ``[B, num_classes, h, w]``."""
        return self.classifier(self.dropout(self.convs(x)))

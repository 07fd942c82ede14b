"""Feed-forward layers of DAT (token MLP) and DAT++ (MLP with a depthwise convolution)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TransformerMLP(nn.Module):
    """DAT v1 MLP on ``[B, C, H, W]`` maps; keys ``chunk.linear1``/``chunk.linear2``."""

    def __init__(self, dim: int, expansion: int = 4, drop: float = 0.0) -> None:
        super().__init__()
        self.chunk = nn.Sequential()
        self.chunk.add_module("linear1", nn.Linear(dim, dim * expansion))
        self.chunk.add_module("act", nn.GELU())
        self.chunk.add_module("drop1", nn.Dropout(drop))
        self.chunk.add_module("linear2", nn.Linear(dim * expansion, dim))
        self.chunk.add_module("drop2", nn.Dropout(drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chunk(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvMLP(nn.Module):
    """DAT++ MLP: 1x1 conv, residual 3x3 depthwise conv, GELU, 1x1 conv.

    Keys ``linear1.0``, ``dwc``, ``linear2.0`` as in the official DAT++ checkpoints. The 1x1
    convs run as ``F.linear`` on channels-last tokens (a matmul instead of a much slower 1x1
    convolution backward on CPU); the depthwise conv sees the same map with channels-last strides.
    """

    def __init__(self, dim: int, expansion: int = 4, drop: float = 0.0) -> None:
        super().__init__()
        hidden = dim * expansion
        self.linear1 = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.drop1 = nn.Dropout(drop)
        self.act = nn.GELU()
        self.linear2 = nn.Sequential(nn.Conv2d(hidden, dim, 1))
        self.drop2 = nn.Dropout(drop)
        self.dwc = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]`` (channels-last strides out)."""
        fc1, fc2 = self.linear1[0], self.linear2[0]
        x = F.linear(x.permute(0, 2, 3, 1), fc1.weight.flatten(1), fc1.bias)
        x = self.drop1(x).permute(0, 3, 1, 2)
        x = self.act(x + self.dwc(x))
        x = F.linear(x.permute(0, 2, 3, 1), fc2.weight.flatten(1), fc2.bias)
        return self.drop2(x).permute(0, 3, 1, 2)

"""Feed-forward layers of DAT (token MLP) and DAT++ (MLP with a depthwise convolution)."""

from __future__ import annotations

import torch
import torch.nn as nn


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

    Keys ``linear1.0``, ``dwc``, ``linear2.0`` as in the official DAT++ checkpoints.
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
        x = self.drop1(self.linear1(x))
        x = self.act(x + self.dwc(x))
        return self.drop2(self.linear2(x))

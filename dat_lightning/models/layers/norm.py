"""Normalisation layers shared by the DAT family."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map.

    The weights live in a child ``norm`` (an ``nn.LayerNorm``) so that the state-dict keys are
    ``<name>.norm.weight``/``<name>.norm.bias``, as in the official checkpoints.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.norm.normalized_shape, self.norm.weight,
                         self.norm.bias, self.norm.eps)
        return x.permute(0, 3, 1, 2)

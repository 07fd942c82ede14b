"""Building blocks of the DAT and DAT++ backbones."""

from .attention import biased_attention
from .deformable_attention import (
    DeformableAttention,
    DeformableRecord,
    set_attention_backend,
    set_attention_recompute,
)
from .mlp import ConvMLP, TransformerMLP
from .neighborhood_attention import NeighborhoodAttention2d
from .norm import LayerNorm2d
from .window_attention import WindowAttention

__all__ = [
    "ConvMLP",
    "DeformableAttention",
    "DeformableRecord",
    "LayerNorm2d",
    "NeighborhoodAttention2d",
    "TransformerMLP",
    "WindowAttention",
    "biased_attention",
    "set_attention_backend",
    "set_attention_recompute",
]

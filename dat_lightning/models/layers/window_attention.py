"""DAT v1 local (``L``) and shifted (``S``) window attention, at any input size.

Parameter and buffer names follow the official checkpoints (``proj_qkv``, ``proj_out``,
``relative_position_bias_table``, ``relative_position_index`` and, for shifted windows,
``attn_mask``). Inputs that are not a multiple of the window are zero-padded right and bottom,
padded tokens are not masked, the shift mask is rebuilt for the padded size, and the output is
cropped back: the behaviour of the official dense-prediction code. The size-dependent steps (padding,
choosing the stored or a rebuilt shift mask) are leaves of FX graphs, so the layer traces with
``torch.fx`` and runs the traced graph at any input size.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
from timm.layers import register_notrace_function

from .attention import biased_attention
from .padding import pad_bottom_right

_SHIFT_MASK_VALUE = -100.0  # the official code adds -100 (not -inf) between shifted regions


def relative_position_index(window: int) -> torch.Tensor:
    """``[window^2, window^2]`` index into a ``[(2w-1)^2, heads]`` bias table (Swin layout)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """``[num_windows, window^2, window^2]`` additive mask for a map rolled by ``-shift``."""
    region = torch.zeros(height, width)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[hs, ws] = label
            label += 1
    region = region.view(height // window, window, width // window, window).transpose(1, 2)
    region = region.reshape(-1, window * window)
    diff = region[:, None, :] - region[:, :, None]
    return torch.where(diff != 0, _SHIFT_MASK_VALUE, 0.0)


@register_notrace_function
def shift_mask_for(stored: torch.Tensor, stored_size: tuple[int, int], height: int, width: int,
                   window: int, shift: int) -> torch.Tensor:
    """``stored`` (the mask of a ``stored_size`` map) when the padded map is ``height x width`` of
    that size, else a mask rebuilt for it on ``stored``'s device (always while compiling, where
    sizes may be symbolic)."""
    if not torch.compiler.is_compiling() and (height, width) == tuple(stored_size):
        return stored
    return shift_window_mask(height, width, window, shift).to(stored.device)


torch.fx.wrap("pad_bottom_right")
torch.fx.wrap("shift_mask_for")


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, optionally shifted (Swin style).

    Args:
        dim: channels.
        heads: attention heads.
        window_size: side of the square window.
        fmap_size: feature-map size the model is built for (sizes the stored ``attn_mask``).
        shift: roll of the map before partitioning; 0 for ``L`` blocks.
        attn_drop: attention-probability dropout.
        proj_drop: output dropout.
    """

    def __init__(self, dim: int, heads: int, window_size: int, fmap_size: tuple[int, int],
                 shift: int = 0, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if shift and not 0 < shift < window_size:
            raise ValueError(f"shift {shift} must lie in (0, window_size={window_size})")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.shift = shift
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.01)
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        # The stored mask is for the build size, padded to whole windows like any input.
        self.fmap_size = tuple(-(-s // window_size) * window_size for s in fmap_size)
        if shift:
            h, w = self.fmap_size
            self.register_buffer("attn_mask", shift_window_mask(h, w, window_size, shift))
        self.proj_qkv = nn.Linear(dim, 3 * dim)
        self.proj_out = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self) -> torch.Tensor:
        """``[heads, window^2, window^2]`` relative position bias."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        B, C, H, W = x.shape
        ws = self.window_size
        x = pad_bottom_right(x.permute(0, 2, 3, 1), multiple=ws, channels_last=True)
        Hp, Wp = x.shape[1], x.shape[2]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        r1, r2 = Hp // ws, Wp // ws
        windows = x.reshape(B, r1, ws, r2, ws, C).transpose(2, 3).reshape(B, r1 * r2, ws * ws, C)
        qkv = self.proj_qkv(windows).view(B, r1 * r2, ws * ws, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # [B, nW, heads, N, hd]
        mask = self.position_bias()
        if self.shift:
            shift_mask = shift_mask_for(self.attn_mask, self.fmap_size, Hp, Wp, ws,
                                        self.shift)
            mask = mask[None] + shift_mask[:, None]
        out, _ = biased_attention(q, k, v, mask, self.scale,
                                  self.attn_drop if self.training else 0.0)
        out = self.proj_out(out.transpose(2, 3).reshape(B, r1 * r2, ws * ws, C))
        out = out.view(B, r1, r2, ws, ws, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return self.proj_drop(out[:, :H, :W]).permute(0, 3, 1, 2)

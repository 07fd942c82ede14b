"""Neighborhood attention (DAT++ ``N`` blocks) in plain PyTorch, with natten 0.14 semantics.

For dilation 1 and an odd kernel ``k``, query ``(i, j)`` attends to the ``k x k`` keys whose top-left
corner is ``(clamp(i - k//2, 0, H - k), clamp(j - k//2, 0, W - k))``: windows at the border shift
inwards instead of being truncated. The relative position bias ``rpb[head, 2k-1, 2k-1]`` is read at
``(key_row - query_row + k - 1, key_col - query_col + k - 1)``.

The computation is blocked: the query map is cut into ``tile x tile`` tiles, each tile gathers the
``(tile + k - 1)^2`` keys that cover all of its windows, and a precomputed additive mask (bias inside
each query's window, ``-inf`` outside) turns the tile into one dense attention product
(:func:`~.attention.biased_attention`). Nothing of size ``(HW x HW)`` or ``(HW x k^2 x C)`` is
materialised. The tiling is planned in Python from the map size, so :func:`neighborhood_attention` is a
leaf of FX graphs: a traced model runs it eagerly at whatever size it is given. With
``recompute_attention`` (see ``set_attention_recompute``) the module keeps only q, k, v and the
bias table for backward and recomputes the tiles there (:func:`recomputed_neighborhood_attention`).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .attention import biased_attention
from .padding import pad_bottom_right, size_max, size_min
from .recompute import recompute_in_backward


def neighborhood_first_keys(size: int, kernel_size: int, num_queries: int,
                            device: torch.device) -> torch.Tensor:
    """First key index of the window of each of ``num_queries`` queries along an axis of ``size``."""
    idx = torch.arange(num_queries, device=device)
    return (idx - kernel_size // 2).clamp(0, size - kernel_size)


def _axis_layout(size: int, kernel_size: int, tile: int, device: torch.device):
    """Per-axis tiling: key index of each tile's slots, the first key of each tile (ints, or
    ``None`` while compiling, where sizes are symbolic), membership and bias offsets per
    query/slot."""
    num_tiles = (size + tile - 1) // tile  # not -(-a // b): traced sizes round towards zero
    span = tile + kernel_size - 1
    starts = neighborhood_first_keys(size, kernel_size, num_tiles * tile, device).view(num_tiles, tile)
    tile_first_key = starts[:, 0]  # windows start monotonically, so the first query's is the lowest
    slots = tile_first_key[:, None] + torch.arange(span, device=device)  # [T, span] key index
    member = (slots[:, None, :] >= starts[:, :, None]) & (
        slots[:, None, :] < starts[:, :, None] + kernel_size
    )  # [T, tile, span]
    query = (torch.arange(num_tiles * tile, device=device)).view(num_tiles, tile)
    rel = (slots[:, None, :] - query[:, :, None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
    first_keys = None if torch.compiler.is_compiling() else [
        min(max(t * tile - kernel_size // 2, 0), size - kernel_size)
        for t in range(int(num_tiles))]  # = tile_first_key, as ints (sizes are static)
    return num_tiles, span, slots, first_keys, member, rel


@register_notrace_function
def neighborhood_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor | None, kernel_size: int,
    tile: int = 7, scale: float | None = None, dropout_p: float = 0.0,
) -> torch.Tensor:
    """Neighborhood attention over ``[B, heads, H, W, head_dim]`` maps (``H, W >= kernel_size``).

    Returns ``[B, heads, H, W, head_dim]``. ``rpb`` is ``[heads, 2k-1, 2k-1]`` or ``None``.
    """
    B, nh, H, W, hd = q.shape
    if H < kernel_size or W < kernel_size:
        raise ValueError(
            f"neighborhood_attention needs maps of at least kernel_size={kernel_size} per side, got "
            f"{H}x{W}; pad the input first (NeighborhoodAttention2d does this for you)."
        )
    tile_h, tile_w = size_min(tile, H), size_min(tile, W)
    device = q.device
    nth, span_h, row_slots, row_starts, mem_h, rel_h = _axis_layout(H, kernel_size, tile_h, device)
    ntw, span_w, col_slots, col_starts, mem_w, rel_w = _axis_layout(W, kernel_size, tile_w, device)

    # Additive mask [heads, nth, ntw, tile_h*tile_w, span_h*span_w].
    member = mem_h[:, None, :, None, :, None] & mem_w[None, :, None, :, None, :]
    if rpb is None:
        bias = torch.zeros((), dtype=q.dtype, device=device).expand(nh, *member.shape)
    else:
        bias = rpb[:, rel_h[:, None, :, None, :, None], rel_w[None, :, None, :, None, :]]
    mask = bias.masked_fill(~member, float("-inf")).reshape(
        nh, nth, ntw, tile_h * tile_w, span_h * span_w
    ).to(q.dtype)

    # Queries: pad to whole tiles, then cut into tiles.
    # While compiling (torch.export, torch.compile) sizes may be symbolic: no branches on them.
    compiling = torch.compiler.is_compiling()
    pad_h, pad_w = nth * tile_h - H, ntw * tile_w - W
    qp = F.pad(q, (0, 0, 0, pad_w, 0, pad_h)) if compiling or pad_h or pad_w else q
    qt = qp.view(B, nh, nth, tile_h, ntw, tile_w, hd).transpose(3, 4)
    qt = qt.reshape(B, nh, nth, ntw, tile_h * tile_w, hd)

    # Keys of each tile: a contiguous run of rows/columns from the tile's first window start.
    # Runs past the map read zero padding, which the mask hides. Slices + stack instead of
    # index_select: its backward (index_add_) is several times slower on CPU. While compiling, the
    # same keys are gathered with the slot index tensors (the tile starts are not Python ints).
    half = kernel_size // 2
    extra_h = size_max(
        size_min(size_max((nth - 1) * tile_h - half, 0), H - kernel_size) + span_h - H, 0)
    extra_w = size_max(
        size_min(size_max((ntw - 1) * tile_w - half, 0), W - kernel_size) + span_w - W, 0)

    def gather(t: torch.Tensor) -> torch.Tensor:
        if compiling or extra_h or extra_w:
            t = F.pad(t, (0, 0, 0, extra_w, 0, extra_h))
        if compiling:
            t = t[:, :, row_slots][:, :, :, :, col_slots]
        else:
            t = torch.stack([t.narrow(2, r, span_h) for r in row_starts], 2)
            t = torch.stack([t.narrow(4, c, span_w) for c in col_starts], 4)
        return t.transpose(3, 4).reshape(B, nh, nth, ntw, span_h * span_w, hd)

    out, _ = biased_attention(qt, gather(k), gather(v), mask, hd ** -0.5 if scale is None else scale,
                              dropout_p)
    out = out.view(B, nh, nth, ntw, tile_h, tile_w, hd).transpose(3, 4)
    out = out.reshape(B, nh, nth * tile_h, ntw * tile_w, hd)
    return out[:, :, :H, :W]


@register_notrace_function
def recomputed_neighborhood_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor | None, kernel_size: int,
    tile: int = 7, scale: float | None = None, dropout_p: float = 0.0,
) -> torch.Tensor:
    """:func:`neighborhood_attention`, recomputed in backward when a gradient is needed
    (:func:`~.recompute.recompute_in_backward`): the gathered keys and values (each
    ``(tile + k - 1)^2 / tile^2`` times the keys' size), the mask and the probabilities are not
    stored between forward and backward, only q, k, v and ``rpb``."""
    return recompute_in_backward(neighborhood_attention, q, k, v, rpb, kernel_size, tile, scale,
                                 dropout_p)


torch.fx.wrap("neighborhood_attention")
torch.fx.wrap("recomputed_neighborhood_attention")
torch.fx.wrap("pad_bottom_right")


class NeighborhoodAttention2d(nn.Module):
    """DAT++ ``N`` block attention; parameter names match natten 0.14's ``NeighborhoodAttention2D``.

    Maps smaller than the kernel are zero-padded (bottom/right) before the qkv projection and
    cropped back before the output projection, as natten 0.14 does.
    """

    def __init__(self, dim: int, heads: int, kernel_size: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, tile: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"neighborhood attention needs an odd kernel size, got {kernel_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.tile = tile
        self.rpb = nn.Parameter(torch.zeros(heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.recompute_attention = False  # see set_attention_recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        B, C, H, W = x.shape
        x = pad_bottom_right(x.permute(0, 2, 3, 1), minimum=self.kernel_size, channels_last=True)
        Hp, Wp = x.shape[1], x.shape[2]
        qkv = self.qkv(x).view(B, Hp, Wp, 3, self.heads, self.head_dim).permute(3, 0, 4, 1, 2, 5)
        attend = (recomputed_neighborhood_attention if self.recompute_attention
                  else neighborhood_attention)
        out = attend(qkv[0], qkv[1], qkv[2], self.rpb, self.kernel_size, tile=self.tile,
                     scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, Hp, Wp, C)[:, :H, :W]
        return self.proj_drop(self.proj(out)).permute(0, 3, 1, 2)

"""Deformable multi-head attention (the ``D`` blocks of DAT and DAT++).

Queries come from every position of the feature map; keys and values are sampled with
``grid_sample`` at a grid of reference points moved by offsets that a small convolutional network
predicts from the queries. The relative position bias is a continuous table sampled at the
normalised query-key displacement, so it works at any input size without resizing.

Coordinates follow ``grid_sample(..., align_corners=True)`` conventions, last axis ordered (y, x).
The two generations differ only in small conventions, selected by ``generation``:

========================  =================================  =====================================
                          ``"v1"`` (DAT, CVPR 2022)           ``"pp"`` (DAT++)
========================  =================================  =====================================
reference points          ``(r + 0.5) / Hk * 2 - 1``          ``(r + 0.5) / (Hk - 1) * 2 - 1``
query grid (for the bias) ``(r + 0.5) / H * 2 - 1``           ``r / (H - 1) * 2 - 1``
range factor ``f > 0``    ``tanh(o) * f / Hk``               ``tanh(o) * f / (Hk - 1)`` (``f >= 0``)
range factor ``f < 0``    ``pos = tanh(ref + o)``            ``pos = clamp(ref + o, -1, 1)``
========================  =================================  =====================================

Where the official DAT++ code divides by ``size - 1`` and a key grid or feature map has a single
row or column (inputs of 32 px and below), it returns NaN/inf. Here a length-1 axis places its
only point at the centre (coordinate 0) and the offset range uses ``max(size - 1, 1)``, so the
output stays finite.

Attention backends (:func:`set_attention_backend`): ``"reference"`` materialises the bias and the
logits (:func:`~dat_lightning.models.layers.attention.biased_attention`; the bias is recomputed in
backward instead of stored, see :func:`position_bias`); ``"flex"`` computes the bias inside
FlexAttention (:mod:`~dat_lightning.models.layers.flex_attention`); ``"auto"`` (the default) is
``"flex"`` on CUDA and ``"reference"`` elsewhere. Recording attention probabilities and attention
dropout always use the reference path. With :func:`set_attention_recompute` the reference path
keeps only its inputs for backward and runs again there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .attention import batched_biased_attention, biased_attention
from .flex_attention import flex_deformable_attention
from .neighborhood_attention import NeighborhoodAttention2d
from .norm import LayerNorm2d
from .padding import size_max
from .recompute import builds_backward, recompute_in_backward

__all__ = ["ATTENTION_BACKENDS", "DeformableAttention", "DeformableRecord", "position_bias",
           "query_grid", "reference_points", "set_attention_backend", "set_attention_recompute"]

SATURATION_LEVEL = 0.99  # |tanh| above this counts as saturated in v1's bounded modes
ATTENTION_BACKENDS = ("auto", "reference", "flex")


@dataclass
class DeformableRecord:
    """What one forward pass of a deformable block did, kept only while recording is on.

    All tensors are detached. ``pos``/``ref``: ``[B, groups, Hk, Wk, 2]`` sampling and reference
    points (normalised, (y, x)). ``saturated``: bool, same shape without the last axis.
    ``attn``: ``[B, heads, H*W, Hk*Wk]`` probabilities, only when attention recording is on.
    """

    pos: torch.Tensor
    ref: torch.Tensor
    saturated: torch.Tensor
    fmap_size: tuple[int, int]
    generation: str
    attn: torch.Tensor | None = None

    @property
    def key_grid(self) -> tuple[int, int]:
        return tuple(self.pos.shape[2:4])

    def cell_size(self) -> torch.Tensor:
        """Size of one key-grid cell in normalised coordinates, (y, x)."""
        hk, wk = self.key_grid
        if self.generation == "v1":
            return torch.tensor([2.0 / hk, 2.0 / wk])
        return torch.tensor([2.0 / max(hk - 1, 1), 2.0 / max(wk - 1, 1)])


def _axis_coords(size: int, generation: str, centred: bool, dtype, device) -> torch.Tensor:
    """Normalised coordinates of ``size`` points along one axis (see the module table)."""
    r = torch.arange(size, dtype=dtype, device=device)
    if size == 1 and generation == "pp":
        return torch.zeros(1, dtype=dtype, device=device)
    if generation == "v1":
        return (r + 0.5) / size * 2 - 1
    return ((r + 0.5) if centred else r) / (size - 1) * 2 - 1


@register_notrace_function
def offset_span(offset: torch.Tensor, generation: str) -> torch.Tensor:
    """``[2]`` scale (y, x) of bounded offsets on a ``[N, Hk, Wk, 2]`` offset map: one key-grid
    cell, ``1 / Hk`` (v1) or ``1 / max(Hk - 1, 1)`` (pp). Tensor ops on the sizes, so they stay
    symbolic under ``torch.export``."""
    hk, wk = offset.shape[1], offset.shape[2]
    if generation == "pp":
        hk, wk = size_max(hk - 1, 1), size_max(wk - 1, 1)
    return 1.0 / torch.stack([offset.new_full((), hk), offset.new_full((), wk)])


@register_notrace_function
def reference_points(hk: int, wk: int, generation: str, dtype, device) -> torch.Tensor:
    """``[Hk, Wk, 2]`` undeformed key positions, (y, x)."""
    ys = _axis_coords(hk, generation, True, dtype, device)
    xs = _axis_coords(wk, generation, True, dtype, device)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


@register_notrace_function
def query_grid(h: int, w: int, generation: str, dtype, device) -> torch.Tensor:
    """``[H, W, 2]`` query positions used for the relative position bias, (y, x)."""
    ys = _axis_coords(h, generation, generation == "v1", dtype, device)
    xs = _axis_coords(w, generation, generation == "v1", dtype, device)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


# Size-dependent helpers are leaves of FX graphs (evaluated at the traced graph's run-time sizes).
torch.fx.wrap("offset_span")
torch.fx.wrap("reference_points")
torch.fx.wrap("query_grid")
torch.fx.wrap("_attend")


def _half_displacements(pos: torch.Tensor, query_pos: torch.Tensor, batch: int) -> torch.Tensor:
    """``[groups, B*HW, Ns, 2]`` half query-key displacements in grid_sample's (x, y) order.

    ``pos``: ``[B*groups, Hk, Wk, 2]``; ``query_pos``: ``[HW, 2]``; both (y, x). Built directly
    in this layout, so the table is sampled once per group for all images.
    """
    groups, ns = pos.shape[0] // batch, pos.shape[1] * pos.shape[2]
    keys = pos.flip(-1).mul(0.5).view(batch, groups, 1, ns, 2).transpose(0, 1).contiguous()
    hw = query_pos.shape[0]
    disp = query_pos.flip(-1).mul(0.5).view(1, 1, hw, 1, 2) - keys
    return disp.view(groups, batch * hw, ns, 2)


def _grouped_table(table: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """``[heads, Ht, Wt]`` -> ``[groups, heads / groups, Ht, Wt]`` in ``dtype``."""
    return table.unflatten(0, (groups, -1)).to(dtype)


@torch.library.custom_op("dat_lightning::sample_bias_table", mutates_args=())
def _sample_bias_table(table: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """aten's bilinear ``grid_sample`` (zero padding, ``align_corners=True``) as an op that
    ``torch.compile`` keeps opaque: inductor's decomposition of this gather over the
    ``[groups, B*HW, Ns]`` displacements is several times slower on the CPU than the aten kernel
    (``benchmarks/RESULTS.md``)."""
    return torch.ops.aten.grid_sampler_2d(table, grid, 0, 0, True)


@_sample_bias_table.register_fake
def _(table: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return table.new_empty(table.shape[0], table.shape[1], grid.shape[1], grid.shape[2])


def _sample_bias_table_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _sample_bias_table_backward(ctx, grad: torch.Tensor):
    table, grid = ctx.saved_tensors
    return torch.ops.aten.grid_sampler_2d_backward(grad, table, grid, 0, 0, True, [True, True])


_sample_bias_table.register_autograd(_sample_bias_table_backward,
                                     setup_context=_sample_bias_table_setup)


def _sample_table(pos: torch.Tensor, table: torch.Tensor, query_pos: torch.Tensor,
                  batch: int) -> torch.Tensor:
    """``[groups, heads / groups, B*HW, Ns]`` bias: the table sampled at the displacements
    (through :func:`_sample_bias_table` while ``torch.compile`` traces, not while exporting, so
    exported programs keep plain aten ops)."""
    grouped = _grouped_table(table, pos.shape[0] // batch, pos.dtype)
    disp = _half_displacements(pos, query_pos, batch)
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        if torch.is_autocast_enabled(pos.device.type):  # grid_sample's autocast policy: fp32
            grouped, disp = grouped.float(), disp.float()
        return _sample_bias_table(grouped, disp)
    return F.grid_sample(grouped, disp, mode="bilinear", align_corners=True)


class _ContinuousPositionBias(torch.autograd.Function):
    """``grid_sample`` of the grouped table at the half displacements of ``pos``.

    Saves only ``pos``, the table and the query grid; backward rebuilds the displacements (the
    ``grid`` of ``grid_sample``, 2 / heads-per-group times the size of the bias) and calls
    ``grid_sample``'s backward, then reduces the displacement gradient to ``pos``.
    """

    @staticmethod
    def forward(ctx, pos: torch.Tensor, table: torch.Tensor, query_pos: torch.Tensor,
                batch: int) -> torch.Tensor:
        ctx.save_for_backward(pos, table, query_pos)
        ctx.batch = batch
        return _sample_table(pos, table, query_pos, batch)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pos, table, query_pos = ctx.saved_tensors
        batch = ctx.batch
        groups, ns = pos.shape[0] // batch, pos.shape[1] * pos.shape[2]
        grouped = _grouped_table(table, groups, pos.dtype)
        disp = _half_displacements(pos, query_pos, batch)
        # Same dtypes as the forward's grid_sample (autocast may have run it in fp32).
        grad_table, grad_disp = torch.ops.aten.grid_sampler_2d_backward(
            grad, grouped.to(grad.dtype), disp.to(grad.dtype), 0, 0, True,
            [ctx.needs_input_grad[1], True])
        grad_pos = None
        if ctx.needs_input_grad[0]:  # disp = q / 2 - flip(pos) / 2, summed over the queries
            grad_pos = grad_disp.view(groups, batch, -1, ns, 2).sum(2).mul(-0.5).flip(-1)
            grad_pos = grad_pos.transpose(0, 1).reshape(pos.shape).to(pos.dtype)
        if ctx.needs_input_grad[1]:
            grad_table = grad_table.reshape(table.shape).to(table.dtype)
        return grad_pos, grad_table, None, None


def position_bias(pos: torch.Tensor, table: torch.Tensor, query_pos: torch.Tensor,
                  batch: int) -> torch.Tensor:
    """``[B, heads, HW, Ns]`` continuous relative position bias (a strided view).

    ``pos``: ``[B*groups, Hk, Wk, 2]`` key positions; ``table``: ``[heads, Ht, Wt]``;
    ``query_pos``: ``[HW, 2]`` query positions; all (y, x). The bias is ``table`` sampled
    bilinearly (``align_corners=True``, zero padding) at half the query-key displacement. When a
    gradient is needed it is recomputed in backward, not stored (a custom autograd function; plain
    ``grid_sample`` without gradients and under ``torch.jit`` tracing, e.g. the ONNX export).
    """
    if builds_backward(pos, table):
        bias = _ContinuousPositionBias.apply(pos, table, query_pos, batch)
    else:
        bias = _sample_table(pos, table, query_pos, batch)  # [g, hg, B*HW, Ns]
    groups, heads_per_group, _, ns = bias.shape
    return bias.view(groups, heads_per_group, batch, -1, ns).permute(2, 0, 1, 3, 4).flatten(1, 2)


@register_notrace_function
def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
            table: torch.Tensor | None, query_pos: torch.Tensor, scale: float, dropout_p: float,
            backend: str, need_probs: bool,
            recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention with the position bias by ``backend``; returns (output, probabilities or None).
    With ``recompute`` the reference path is recomputed in backward instead of stored.

    ``pos``: ``[B*groups, Hk, Wk, 2]``; the other shapes as in :func:`position_bias` and
    :func:`~dat_lightning.models.layers.flex_attention.flex_deformable_attention`.
    """
    batch = q.shape[0]
    use_flex = backend == "flex" or (backend == "auto" and q.is_cuda)
    if use_flex and not need_probs and dropout_p == 0.0:
        keys = pos.view(batch, -1, pos.shape[1] * pos.shape[2], 2)
        return flex_deformable_attention(q, k, v, table, keys, query_pos, scale), None
    args = (q, k, v, pos, table, query_pos, scale, dropout_p, need_probs)
    return recompute_in_backward(_reference_attend, *args) if recompute else _reference_attend(*args)


def _reference_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                      table: torch.Tensor | None, query_pos: torch.Tensor, scale: float,
                      dropout_p: float, need_probs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference path of :func:`_attend`: materialised bias and logits."""
    batch = q.shape[0]
    if table is None:
        out, probs = biased_attention(q, k, v, None, scale, dropout_p)
        return out, probs if need_probs else None
    # Heads-major [heads*B, N, d] batches: the bias comes out of grid_sample in this order, so it
    # is added inside the GEMM and its gradient reaches the bias function contiguous.
    heads, hw, ns = q.shape[1], q.shape[2], k.shape[2]
    bias = position_bias(pos, table, query_pos, batch).transpose(0, 1).reshape(-1, hw, ns)
    out, probs = batched_biased_attention(*(t.transpose(0, 1).flatten(0, 1) for t in (q, k, v)),
                                          bias, scale, dropout_p)
    out = out.view(heads, batch, hw, -1).transpose(0, 1)
    return out, probs.view(heads, batch, hw, ns).transpose(0, 1) if need_probs else None


@register_notrace_function
def _offset_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """The offset network's depthwise convolution of the ``[B, C, H, W]`` queries.

    Under CPU autocast it runs in fp32: oneDNN's bf16 depthwise kernels with these large kernels
    and strides are 3-13x slower on the CPU than fp32 ones, forward and backward (measured in
    ``benchmarks/RESULTS.md``), and the tensor is small, so the casts cost little. The output is
    fp32 there; the LayerNorm after it computes in fp32 anyway.
    """
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x.float(), weight.float(), bias.float(), stride, padding,
                            groups=x.shape[1])
    return F.conv2d(x, weight, bias, stride, padding, groups=x.shape[1])


torch.fx.wrap("_offset_depthwise_conv")


class DeformableAttention(nn.Module):
    """Deformable multi-head attention over a ``[B, C, H, W]`` map.

    Args:
        dim: channels (``heads * head_dim``).
        heads: attention heads.
        groups: offset groups; each group of ``heads / groups`` heads shares sampling points.
        fmap_size: feature-map size the model is built for; sizes ``rpe_table``.
        stride: stride of the offset network, so the key grid is about ``H / stride``.
        ksize: kernel of the offset network's depthwise convolution.
        offset_range_factor: bound on the offsets (see the module docstring); -1 squashes/clamps.
        use_pe: add the sampled relative position bias.
        generation: ``"v1"`` or ``"pp"``.
        attn_drop: attention-probability dropout.
        proj_drop: output dropout.
    """

    def __init__(self, dim: int, heads: int, groups: int, fmap_size: tuple[int, int],
                 stride: int = 1, ksize: int = 3, offset_range_factor: float = 2.0,
                 use_pe: bool = True, generation: str = "v1", attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if generation not in ("v1", "pp"):
            raise ValueError(f"generation must be 'v1' or 'pp', got {generation!r}")
        if dim % heads or heads % groups:
            raise ValueError(f"need dim % heads == 0 and heads % groups == 0, got dim={dim}, "
                             f"heads={heads}, groups={groups}")
        self.dim, self.heads, self.groups = dim, heads, groups
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.group_channels = dim // groups
        self.group_heads = heads // groups
        self.stride = stride
        self.offset_range_factor = offset_range_factor
        self.generation = generation
        self.attn_drop = attn_drop
        h, w = fmap_size
        if use_pe:
            self.rpe_table = nn.Parameter(torch.zeros(heads, 2 * h - 1, 2 * w - 1))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.rpe_table = None
        pad = ksize // 2 if (generation == "v1" or ksize != stride) else 0
        gc = self.group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(gc, gc, ksize, stride, pad, groups=gc),
            LayerNorm2d(gc),
            nn.GELU(),
            nn.Conv2d(gc, 2, 1, 1, 0, bias=False),
        )
        self.proj_q = nn.Conv2d(dim, dim, 1)
        self.proj_k = nn.Conv2d(dim, dim, 1)
        self.proj_v = nn.Conv2d(dim, dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)
        # Introspection: off unless a caller (e.g. the OffsetStatistics callback) turns it on.
        self.record_offsets = False
        self.record_attention = False
        self.last_record: DeformableRecord | None = None
        self.attention_backend = "auto"  # see set_attention_backend
        self.recompute_attention = False  # see set_attention_recompute

    def _sampling_points(self, q: torch.Tensor):
        """Channels-last queries ``[B, H, W, C]`` -> (pos, ref, saturated), each
        ``[B*groups, Hk, Wk, (2)]``.

        The grouped offset network runs as one depthwise conv over all channels (its weights
        repeated per group) followed by token-wise LayerNorm/GELU/linear, so the queries are never
        regrouped channels-first; the arithmetic per channel is that of ``conv_offset``.
        """
        B = q.shape[0]
        dwc, norm, act, pwc = self.conv_offset
        offset = _offset_depthwise_conv(q.permute(0, 3, 1, 2),
                                        dwc.weight.repeat(self.groups, 1, 1, 1),
                                        dwc.bias.repeat(self.groups), dwc.stride, dwc.padding)
        hk, wk = offset.shape[2], offset.shape[3]
        offset = offset.permute(0, 2, 3, 1).reshape(B, hk, wk, self.groups, self.group_channels)
        offset = act(F.layer_norm(offset, norm.norm.normalized_shape, norm.norm.weight,
                                  norm.norm.bias, norm.norm.eps))
        offset = F.linear(offset, pwc.weight.flatten(1))  # [B, Hk, Wk, groups, 2]
        offset = offset.permute(0, 3, 1, 2, 4).reshape(B * self.groups, hk, wk, 2)
        f = self.offset_range_factor
        bounded = f > 0 if self.generation == "v1" else f >= 0
        if bounded:
            squashed = offset.tanh()
            offset = squashed * offset_span(offset, self.generation) * f
        ref = reference_points(hk, wk, self.generation, q.dtype, q.device)
        pos = offset + ref
        if f < 0:
            if self.generation == "v1":
                pos = pos.tanh()
                saturated = pos.detach().abs().amax(-1) > SATURATION_LEVEL
            else:
                saturated = pos.detach().abs().amax(-1) >= 1.0
                pos = pos.clamp(-1.0, 1.0)
        elif bounded:
            saturated = squashed.detach().abs().amax(-1) > SATURATION_LEVEL
        else:
            saturated = torch.zeros_like(pos[..., 0], dtype=torch.bool)
        return pos, ref, saturated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]`` (channels-last strides in, channels-last out).

        The 1x1 projections run as ``F.linear`` on channels-last tokens, k and v as one matmul
        over their concatenated weights (they act on the same sampled tokens).
        """
        B, C, H, W = x.shape
        q = F.linear(x.permute(0, 2, 3, 1), self.proj_q.weight.flatten(1), self.proj_q.bias)
        pos, ref, saturated = self._sampling_points(q)
        hk, wk = pos.shape[1], pos.shape[2]
        ns = hk * wk
        sampled = F.grid_sample(x.reshape(B * self.groups, self.group_channels, H, W),
                                pos.flip(-1), mode="bilinear", align_corners=True)
        sampled = sampled.view(B, self.groups, self.group_channels, ns).permute(0, 3, 1, 2)
        w_kv = torch.cat([self.proj_k.weight, self.proj_v.weight]).flatten(1)
        b_kv = torch.cat([self.proj_k.bias, self.proj_v.bias])
        kv = F.linear(sampled.reshape(B, ns, C), w_kv, b_kv)
        k, v = kv.view(B, ns, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        qh = q.view(B, H * W, self.heads, self.head_dim).transpose(1, 2)
        query_pos = query_grid(H, W, self.generation, pos.dtype, pos.device).view(H * W, 2)
        out, probs = _attend(qh, k, v, pos, self.rpe_table,
                             query_pos, self.scale, self.attn_drop if self.training else 0.0,
                             self.attention_backend, self.record_offsets and self.record_attention,
                             self.recompute_attention)
        out = F.linear(out.transpose(1, 2).reshape(B, H, W, C), self.proj_out.weight.flatten(1),
                       self.proj_out.bias)
        if self.record_offsets:
            shape = (B, self.groups, hk, wk)
            self.last_record = DeformableRecord(
                pos=pos.detach().view(*shape, 2),
                ref=ref.detach().expand(*shape, 2),
                saturated=saturated.view(shape),
                fmap_size=(H, W),
                generation=self.generation,
                attn=None if probs is None else probs.detach(),
            )
        return self.proj_drop(out).permute(0, 3, 1, 2)


def set_attention_backend(model: nn.Module, backend: str = "auto") -> int:
    """Select the attention backend of every deformable block in ``model``.

    Args:
        model: a DAT / DAT++ model, a task, or any module containing deformable blocks.
        backend: ``"auto"`` (FlexAttention on CUDA, the reference path elsewhere; on CUDA this
            default is not yet measured against the reference path), ``"reference"`` (materialised
            bias and logits) or ``"flex"`` (bias inside FlexAttention; on the CPU inference only).

    Returns:
        The number of deformable blocks changed.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of "
                         f"{list(ATTENTION_BACKENDS)}")
    return _set_on_blocks(model, DeformableAttention, "attention_backend", backend,
                          "deformable attention blocks, so it has no attention backend to select")


def set_attention_recompute(model: nn.Module, enable: bool = True) -> int:
    """Recompute the attention of every deformable and neighborhood block of ``model`` in
    backward (``enable``), or store it (the default).

    Recomputing keeps only each block's attention inputs between forward and backward, not the
    sampled bias, logits, probabilities or neighborhood tiles: a DAT-T train step then saves 0.82x
    the activations of timm's Swin-T instead of 0.88x, DAT++-T 0.95x instead of 1.36x, for about
    2 % (DAT-T) and 8 % (DAT++-T) more time in fp32 on a CPU (``benchmarks/RESULTS.md``). Unlike
    ``set_grad_checkpointing``, the rest of each block stays stored.

    Returns:
        The number of blocks changed.
    """
    return _set_on_blocks(model, (DeformableAttention, NeighborhoodAttention2d),
                          "recompute_attention", enable,
                          "deformable or neighborhood attention blocks whose attention could be "
                          "recomputed")


def _set_on_blocks(model: nn.Module, types, name: str, value, missing: str) -> int:
    """Set attribute ``name`` of every ``types`` module in ``model``; returns their number."""
    blocks = [m for m in model.modules() if isinstance(m, types)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no {missing}")
    for block in blocks:
        setattr(block, name, value)
    return len(blocks)

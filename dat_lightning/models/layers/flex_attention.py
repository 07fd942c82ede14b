"""FlexAttention backend of the deformable attention: the position bias inside the kernel.

The deformable block's relative position bias is a bilinear lookup in ``rpe_table`` at the
query-key displacement. :func:`deformable_score_mod` computes that lookup per (batch, head, query,
key) score, so :func:`flex_deformable_attention` never materialises the ``[B, heads, HW, Ns]`` bias
or logits. Gradients reach ``rpe_table`` and the sampling positions through the captured tensors.

PyTorch runs FlexAttention through ``torch.compile`` (inductor: Triton on CUDA, C++ on the CPU) and
has no FlexAttention backward on the CPU, so on the CPU this backend only runs inference; select it
with :func:`~dat_lightning.models.layers.deformable_attention.set_attention_backend`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import flex_attention

# Compiled lazily on first call (uncompiled, FlexAttention is a slow dense reference); inside an
# outer torch.compile, dynamo inlines it. Inductor's CPU FlexAttention template only accepts
# captured tensors that are graph inputs, so on the CPU the call is kept out of an outer graph.
_compiled_flex_attention = torch.compile(flex_attention, dynamic=None)
_compiled_flex_attention_own_graph = torch.compiler.disable(_compiled_flex_attention)


def deformable_score_mod(table: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor,
                         heads_per_group: int) -> Callable:
    """A ``score_mod`` adding the bilinearly sampled continuous position bias.

    Args:
        table: ``[heads, Ht, Wt]`` relative position table (``rpe_table``).
        pos: ``[B, groups, Ns, 2]`` normalised key sampling positions, (y, x).
        query_pos: ``[H*W, 2]`` normalised query positions, (y, x).
        heads_per_group: heads sharing one group's sampling positions.

    The bias of head ``h`` is the table sampled like ``grid_sample(..., align_corners=True,
    padding_mode="zeros")`` at half the displacement ``(query - key) / 2``.
    """
    heads, ht, wt = table.shape
    flat = table.reshape(heads, ht * wt)
    # Table pixel coordinate = query term - key term, split so the kernel does one subtraction.
    half_y, half_x = 0.25 * (ht - 1), 0.25 * (wt - 1)
    q_y = ((query_pos[:, 0] + 2) * half_y).contiguous()
    q_x = ((query_pos[:, 1] + 2) * half_x).contiguous()
    k_y = (pos[..., 0] * half_y).contiguous()
    k_x = (pos[..., 1] * half_x).contiguous()

    def score_mod(score, b, h, q_idx, kv_idx):
        g = h // heads_per_group
        iy = q_y[q_idx] - k_y[b, g, kv_idx]
        ix = q_x[q_idx] - k_x[b, g, kv_idx]
        y0, x0 = iy.floor(), ix.floor()
        wy, wx = iy - y0, ix - x0
        y0, x0 = y0.to(torch.int64), x0.to(torch.int64)
        for dy, fy in ((0, 1 - wy), (1, wy)):
            for dx, fx in ((0, 1 - wx), (1, wx)):
                y, x = y0 + dy, x0 + dx
                inside = (y >= 0) & (y < ht) & (x >= 0) & (x < wt)
                value = flat[h, y.clamp(0, ht - 1) * wt + x.clamp(0, wt - 1)]
                score = score + torch.where(inside, value, 0.0) * (fy * fx)
        return score

    return score_mod


def flex_deformable_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              table: torch.Tensor | None, pos: torch.Tensor,
                              query_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` with the bias computed inside FlexAttention.

    ``q``: ``[B, heads, HW, d]``; ``k``, ``v``: ``[B, heads, Ns, d]``; ``pos``: ``[B, groups, Ns,
    2]``; ``query_pos``: ``[HW, 2]``; ``table``: ``[heads, Ht, Wt]`` or ``None`` (no bias).
    """
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, table, pos)):
        raise RuntimeError(
            "attention backend 'flex' cannot train on the CPU: PyTorch's FlexAttention has no CPU "
            "backward. Use set_attention_backend(model, 'auto') (the reference path on the CPU) "
            "for training, or run the forward under torch.no_grad()")
    score_mod = None
    if table is not None:  # the bias in fp32 (or fp64) like the reference path under autocast
        dtype = torch.promote_types(q.dtype, torch.float32)
        score_mod = deformable_score_mod(table.to(dtype), pos.to(dtype), query_pos.to(dtype),
                                         q.shape[1] // pos.shape[1])
    flex = _compiled_flex_attention_own_graph if q.device.type == "cpu" else _compiled_flex_attention
    return flex(q, k, v, score_mod=score_mod, scale=scale)

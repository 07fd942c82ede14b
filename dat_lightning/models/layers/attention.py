"""Scaled dot-product attention with an additive bias, shared by every attention block.

On CPU, for the short sequences of DAT (49-196 keys) and a bias that needs a gradient, the explicit
``matmul -> softmax -> matmul`` is faster than ``F.scaled_dot_product_attention`` (which falls back
to its math path and adds fully-masked-row checks), forward and backward; it also hands back the
probabilities for introspection without a second code path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                     scale: float, dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale + bias) v`` over ``[..., N, d]`` inputs.

    ``bias`` broadcasts against the ``[..., Nq, Nk]`` logits (``-inf`` masks a key). Returns the
    output and the attention probabilities (before dropout).
    """
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    if bias is not None:
        logits = logits + bias
    return _softmax_values(logits, v, dropout_p)


def batched_biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             bias: torch.Tensor, scale: float,
                             dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`biased_attention` over ``[N, L, d]`` batches with a ``[N, L, S]`` bias (one per
    batch element, e.g. per image and head): the bias is added inside the GEMM (``baddbmm``), so
    the logits are written once and the bias gradient is the logits gradient itself."""
    return _softmax_values(torch.baddbmm(bias, q, k.transpose(-2, -1), alpha=scale), v, dropout_p)


def _softmax_values(logits: torch.Tensor, v: torch.Tensor,
                    dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    probs = logits.softmax(-1)
    attn = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return torch.matmul(attn, v), probs

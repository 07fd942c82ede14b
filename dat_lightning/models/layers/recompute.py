"""Layers that recompute in backward instead of storing: when they may, and the checkpoint
wrapper the attention blocks use."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["builds_backward", "recompute_in_backward"]


def builds_backward(*values) -> bool:
    """Whether a call on ``values`` records a backward graph that a recomputing path can replace:
    gradients are enabled, a tensor among ``values`` requires grad, and no ``torch.jit`` trace
    (the ONNX export, which needs plain ops) is running."""
    return (torch.is_grad_enabled() and not torch.jit.is_tracing()
            and any(isinstance(v, torch.Tensor) and v.requires_grad for v in values))


def recompute_in_backward(fn, *args):
    """``fn(*args)`` that, when a gradient is needed, keeps only its inputs for backward and runs
    ``fn`` again there (non-reentrant ``torch.utils.checkpoint``, which replays the random state
    for dropout) instead of storing its intermediates; a plain call without gradients and under
    ``torch.jit`` tracing (the ONNX export)."""
    if builds_backward(*args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)

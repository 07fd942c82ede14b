"""Feed-forward layers of DAT (token MLP) and DAT++ (MLP with a depthwise convolution).

Both MLPs end in ``activation -> linear``, where the activation is ``GELU(h)`` (DAT) or
``GELU(h + dwc(h))`` (DAT++) of the hidden tokens ``h``. Training runs that tail through
:func:`activation_linear`, which saves only ``h`` for backward and recomputes the (cheap,
element-wise or depthwise) activation there, instead of storing both the activation's input and
its output, each four times the width of the block. The results and gradients are those of the
plain layers; only the hidden activations kept between forward and backward shrink.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .conv import fuses_residual, residual_depthwise_conv, with_identity_tap
from .recompute import builds_backward


def _gelu_input(h: torch.Tensor, dwc_weight: torch.Tensor | None,
                dwc_bias: torch.Tensor | None, fuse: bool | None = None) -> torch.Tensor:
    """``h``, or with a depthwise kernel ``h + dwc(h)`` (on the channels-first view of the
    ``[B, H, W, C]`` tokens; see :func:`~dat_lightning.models.layers.conv.residual_depthwise_conv`
    for ``fuse``)."""
    if dwc_weight is None:
        return h
    return residual_depthwise_conv(h.permute(0, 3, 1, 2), dwc_weight, dwc_bias,
                                   fuse).permute(0, 2, 3, 1)


def mlp_activation(h: torch.Tensor, dwc_weight: torch.Tensor | None,
                   dwc_bias: torch.Tensor | None) -> torch.Tensor:
    """``GELU(h)``, or with a depthwise kernel ``GELU(h + dwc(h))``; ``h`` is ``[B, H, W, C]``."""
    return F.gelu(_gelu_input(h, dwc_weight, dwc_bias))


class _RecomputedActivationLinear(torch.autograd.Function):
    """``linear(mlp_activation(h, dwc_weight, dwc_bias), weight, bias)`` that saves ``h`` (and the
    weights) only. Backward recomputes the activation as the forward ran it (in ``h``'s dtype,
    the residual folded into the kernel or not) and applies the GELU and convolution backward
    ops directly (no ``torch.autograd.grad``, so ``torch.compile`` traces it without a graph
    break)."""

    @staticmethod
    def forward(ctx, h, dwc_weight, dwc_bias, weight, bias):
        ctx.save_for_backward(h, dwc_weight, dwc_bias, weight)
        ctx.has_bias = bias is not None
        ctx.fuse = fuses_residual(h)
        return F.linear(mlp_activation(h, dwc_weight, dwc_bias), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        h, dwc_weight, dwc_bias, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # Hidden-sized maps are freed as soon as they are used, and outside double backward the
        # gradient reuses the activation's buffer and the GELU backward runs in place: besides h,
        # one such map is alive (two with a dwc), which sets the peak of checkpointed training
        # and saves fresh, page-faulting allocations.
        pre = _gelu_input(h, dwc_weight, dwc_bias, ctx.fuse)
        grad2d = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_bias = grad_dwc_weight = grad_dwc_bias = act = None
        if needs[3]:
            act = F.gelu(pre)
            grad_weight = grad2d.t() @ act.reshape(-1, act.shape[-1]).to(grad.dtype)
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.has_bias and needs[4]:
            grad_bias = grad2d.sum(0).to(weight.dtype)
        in_place = not torch.is_grad_enabled()  # create_graph needs differentiable ops (no out=)
        if in_place and act is not None and grad.dtype == weight.dtype == act.dtype:
            grad_pre = torch.matmul(grad, weight, out=act)
        else:
            act = None
            grad_pre = (grad @ weight.to(grad.dtype)).to(pre.dtype)
        grad_pre = (torch.ops.aten.gelu_backward.grad_input(grad_pre, pre, grad_input=grad_pre)
                    if in_place else torch.ops.aten.gelu_backward(grad_pre, pre))
        del act, pre
        if dwc_weight is None:
            return grad_pre, None, None, grad_weight, grad_bias
        grad_map, x = grad_pre.permute(0, 3, 1, 2), h.permute(0, 3, 1, 2)
        kernel = dwc_weight.to(h.dtype)
        pad = dwc_weight.shape[-1] // 2
        grad_x, grad_dwc_weight, grad_dwc_bias = torch.ops.aten.convolution_backward(
            grad_map, x, with_identity_tap(kernel) if ctx.fuse else kernel,
            None if dwc_bias is None else list(dwc_bias.shape),
            [1, 1], [pad, pad], [1, 1], False, [0, 0], x.shape[1],
            [needs[0], needs[1], dwc_bias is not None and needs[2]])
        grad_h = None
        if needs[0]:  # the identity tap (fused) or the residual branch carries grad_map itself
            grad_h = (grad_x if ctx.fuse else grad_map + grad_x).permute(0, 2, 3, 1)
        if grad_dwc_weight is not None:
            grad_dwc_weight = grad_dwc_weight.to(dwc_weight.dtype)
        if grad_dwc_bias is not None:
            grad_dwc_bias = grad_dwc_bias.to(dwc_bias.dtype)
        return grad_h, grad_dwc_weight, grad_dwc_bias, grad_weight, grad_bias


@register_notrace_function
def activation_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      dwc_weight: torch.Tensor | None = None,
                      dwc_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(mlp_activation(h, dwc_weight, dwc_bias), weight, bias)`` on ``[B, H, W, C]``
    tokens. When a gradient is needed, the activation is recomputed in backward rather than
    stored (plain ops without gradients and under ``torch.jit`` tracing, e.g. the ONNX export)."""
    if builds_backward(h, weight, bias, dwc_weight, dwc_bias):
        return _RecomputedActivationLinear.apply(h, dwc_weight, dwc_bias, weight, bias)
    return F.linear(mlp_activation(h, dwc_weight, dwc_bias), weight, bias)


torch.fx.wrap("activation_linear")


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
        """``[B, C, H, W]`` -> ``[B, C, H, W]`` (channels-last strides out)."""
        c = self.chunk
        h = c.linear1(x.permute(0, 2, 3, 1))
        if self.training and c.drop1.p > 0:  # dropout between GELU and linear2: plain layers
            y = c.linear2(c.drop1(c.act(h)))
        else:
            y = activation_linear(h, c.linear2.weight, c.linear2.bias)
        return c.drop2(y).permute(0, 3, 1, 2)


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
        h = self.drop1(F.linear(x.permute(0, 2, 3, 1), fc1.weight.flatten(1), fc1.bias))
        y = activation_linear(h, fc2.weight.flatten(1), fc2.bias, self.dwc.weight, self.dwc.bias)
        return self.drop2(y).permute(0, 3, 1, 2)

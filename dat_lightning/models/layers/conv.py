"""``x + dwc(x)``: the residual depthwise convolution of DAT++ (its MLP and local perception unit).

A depthwise convolution is linear, so ``x + conv(x, w)`` equals ``conv(x, w + e)`` where ``e`` is
1 at the kernel's centre tap ("same" padding, odd kernel). In full precision the residual runs as
that single convolution: the element-wise add over the map (and, in backward, the sum of the two
branches' gradients) disappears, which is memory traffic of the size of the map, as large as the
convolution's own. In reduced precision (bf16/fp16, or under autocast) the sum stays explicit,
because ``1 + w`` rounded to 8 bits would perturb the centre weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["fuses_residual", "residual_depthwise_conv", "with_identity_tap"]


def fuses_residual(x: torch.Tensor) -> bool:
    """Whether :func:`residual_depthwise_conv` folds the residual into the kernel for ``x``: in
    fp32/fp64 outside autocast, and not under ``torch.jit`` tracing (the ONNX exporter needs the
    kernel to be a parameter, not a computed tensor)."""
    return (x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(x.device.type) and not torch.jit.is_tracing())


def with_identity_tap(weight: torch.Tensor) -> torch.Tensor:
    """``[C, 1, k, k]`` depthwise kernel with 1 added at its centre tap (``k`` odd)."""
    kh, kw = weight.shape[-2:]
    return weight + F.pad(weight.new_ones(1, 1, 1, 1), (kw // 2, kw // 2, kh // 2, kh // 2))


@register_notrace_function
def residual_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            fuse: bool | None = None) -> torch.Tensor:
    """``x + conv2d(x, weight, bias)`` over a ``[B, C, H, W]`` map, depthwise, "same" padding,
    in ``x``'s dtype (autocast, when on, runs the convolution in its dtype). ``fuse`` (default
    :func:`fuses_residual`) folds the residual into the kernel."""
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    pad = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    if fuses_residual(x) if fuse is None else fuse:
        return F.conv2d(x, with_identity_tap(weight), bias, padding=pad, groups=x.shape[1])
    return x + F.conv2d(x, weight, bias, padding=pad, groups=x.shape[1])


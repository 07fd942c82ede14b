"""Bottom/right zero padding of feature maps, kept out of FX graphs.

The amount of padding depends on the input size, so under ``torch.fx.symbolic_trace`` it cannot be
decided in Python. :func:`pad_bottom_right` is therefore a leaf of FX graphs (timm's
``register_notrace_function`` for timm's feature extraction, ``torch.fx.wrap("pad_bottom_right")``
in each calling module for plain ``torch.fx.symbolic_trace``): it runs eagerly
with the real sizes every time the traced graph is called. Callers crop back with ``x[..., :H, :W]``,
which is a no-op view when nothing was padded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function


@register_notrace_function
def pad_bottom_right(x: torch.Tensor, multiple: int = 1, minimum: int = 1,
                     channels_last: bool = False) -> torch.Tensor:
    """Zero-pad the spatial axes of ``x`` (``[B, C, H, W]``, or ``[B, H, W, C]`` with
    ``channels_last``) at the bottom/right so that each is a multiple of ``multiple`` and at least
    ``minimum``; ``x`` itself when no padding is needed."""
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    pad_h = max(minimum - h, 0) + (-max(h, minimum)) % multiple
    pad_w = max(minimum - w, 0) + (-max(w, minimum)) % multiple
    if not (pad_h or pad_w):
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h))


"""Size arithmetic and bottom/right zero padding of feature maps, for every way of tracing.

The amount of padding depends on the input size, so under ``torch.fx.symbolic_trace`` it cannot be
decided in Python. :func:`pad_bottom_right` is therefore a leaf of FX graphs (timm's
``register_notrace_function`` for timm's feature extraction, ``torch.fx.wrap("pad_bottom_right")``
in each calling module for plain ``torch.fx.symbolic_trace``): it runs eagerly
with the real sizes every time the traced graph is called. Callers crop back with ``x[..., :H, :W]``,
which is a no-op view when nothing was padded. While compiling (``torch.compile``,
``torch.export``) sizes may be symbolic: the padding is then applied unconditionally (possibly by
zero), its amount branches only on ``size < minimum`` (a guard), and :func:`size_max` /
:func:`size_min` keep the callers' other size arithmetic symbolic instead of branching on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function


def size_max(a: int, b: int) -> int:
    """``max`` of two sizes; ``torch.sym_max`` while compiling, where sizes may be symbolic (and a
    plain ``max`` elsewhere: the TorchScript tracer hands sizes over as tensors)."""
    return torch.sym_max(a, b) if torch.compiler.is_compiling() else max(a, b)


def size_min(a: int, b: int) -> int:
    """``min`` of two sizes, like :func:`size_max`."""
    return torch.sym_min(a, b) if torch.compiler.is_compiling() else min(a, b)


@register_notrace_function
def pad_bottom_right(x: torch.Tensor, multiple: int = 1, minimum: int = 1,
                     channels_last: bool = False) -> torch.Tensor:
    """Zero-pad the spatial axes of ``x`` (``[B, C, H, W]``, or ``[B, H, W, C]`` with
    ``channels_last``) at the bottom/right so that each is a multiple of ``multiple`` and at least
    ``minimum``; ``x`` itself when no padding is needed."""
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    pad_h, pad_w = _pad_amount(h, multiple, minimum), _pad_amount(w, multiple, minimum)
    if not torch.compiler.is_compiling() and not (pad_h or pad_w):  # compiling: sizes symbolic
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h))


def _pad_amount(size: int, multiple: int, minimum: int) -> int:
    """Padding that makes ``size`` at least ``minimum`` and then a multiple of ``multiple``.

    While compiling, ``size < minimum`` becomes a guard (or is decided by the size's range under
    ``torch.export``) rather than a symbolic ``max``, and a multiple of 1 adds nothing: nested
    ``Max``/``Mod`` expressions compound from stage to stage and made dynamo's symbolic-shape
    reasoning take minutes per new input size."""
    pad = minimum - size if minimum > 1 and size < minimum else 0
    if multiple > 1:
        pad = pad + (-(size + pad)) % multiple
    return pad

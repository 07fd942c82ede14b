"""The deformable blocks' sampling offsets in plain torch: block discovery and keys, recording,
statistics and pixel conversion.

Used by the offset callbacks (:mod:`dat_lightning.callbacks`), the figures
(:mod:`dat_lightning.visualization`) and the notebooks; it imports neither Lightning nor matplotlib.

Block keys are module paths from ``stages.`` on (``stages.2.attns.1``), the names
:meth:`~dat_lightning.models.DAT.deformable_blocks` gives inside a DAT, whatever wraps it (a task,
a segmentation model). Stages are numbered from 0 like the modules: ``stage_of("stages.2.attns.1")``
is ``"stage2"``.

================  =================================================================================
statistic         meaning (see :func:`offset_statistics`)
================  =================================================================================
``mean_abs_cells``  mean |pos - ref| (Euclidean, (y, x)) in key-grid cells
``std_abs_cells``   its standard deviation
``max_abs_cells``   its maximum
``mean_abs_px``     mean |pos - ref| in input pixels (a feature cell is ``input / fmap`` px)
``std_abs_px``      its standard deviation
``max_abs_px``      its maximum
``saturated``       fraction of sampling points whose offset is saturated (tanh > 0.99 or clamped at
                    the border), among the points whose reference lies inside the map (DAT++ places
                    its last reference row/column on or beyond the border, where they are clamped
                    whatever the offset)
``outside``         fraction of sampling points outside the feature map (|coordinate| > 1)
``spread``          std of the sampling points over the key grid / that of the reference points
                    (clamped to the map), averaged over images and groups: 1 = undeformed spread,
                    -> 0 = the points collapse onto one location; 1 for a 1x1 grid
``attn_entropy``    attention entropy / log(number of keys) (records with attention only)
================  =================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import torch
import torch.nn as nn

from dat_lightning.models.dat import DAT, DATFeatures
from dat_lightning.models.layers.deformable_attention import DeformableAttention, DeformableRecord

__all__ = [
    "batch_images",
    "block_key",
    "deformable_blocks",
    "find_dat",
    "inactive",
    "input_size_from_batch",
    "normalized_to_pixels",
    "offset_network_norms",
    "offset_statistics",
    "record_sampling",
    "recording",
    "stage_of",
]


def find_dat(model: nn.Module) -> tuple[str, DAT | DATFeatures] | None:
    """``(name prefix, module)`` of the first DAT backbone inside ``model`` (``model`` itself
    gives the prefix ``""``), or ``None`` when there is none."""
    for name, module in model.named_modules():
        if isinstance(module, (DAT, DATFeatures)):
            return (f"{name}." if name else ""), module
    return None


def block_key(name: str) -> str:
    """Key of a block: its module path from ``stages.`` on (any prefix such as ``model.`` dropped)."""
    i = name.rfind("stages.")
    return name[i:] if i >= 0 else name


def stage_of(key: str) -> str:
    """``"stage<i>"`` (0-based, like the module path) for a block key ``stages.<i>.…``, else the key."""
    parts = key.split(".")
    return f"stage{parts[1]}" if len(parts) > 1 and parts[0] == "stages" else key


def deformable_blocks(module: nn.Module) -> list[tuple[str, DeformableAttention]]:
    """``(key, block)`` of every :class:`DeformableAttention` of the first DAT inside ``module``
    (see :func:`find_dat`; the one the forward pass trains, not e.g. an EMA copy), or of
    ``module`` itself when it holds no DAT, in forward order."""
    found = find_dat(module)
    root = found[1] if found is not None else module
    return [(block_key(n), m) for n, m in root.named_modules() if isinstance(m, DeformableAttention)]


@dataclass
class _Requests:
    """Flags of a block before the first open :func:`recording`, and the open ones' attention flags."""

    offsets: bool
    attention: bool
    open: dict[int, bool] = field(default_factory=dict)


_REQUESTS: WeakKeyDictionary[DeformableAttention, _Requests] = WeakKeyDictionary()


@contextmanager
def recording(blocks: Sequence[DeformableAttention], attention: bool = False) -> Iterator[None]:
    """Record offsets (and with ``attention``, attention probabilities) of ``blocks`` inside the
    ``with`` body; old records are dropped on entry.

    Recordings may overlap in any order (two callbacks that open one at a batch start and close
    it at the batch end): a block records attention while any open recording asks for it, and
    gets back the flags it had before the first one opened when the last one closes.
    """
    token = object()
    for block in blocks:
        requests = _REQUESTS.setdefault(block, _Requests(block.record_offsets, block.record_attention))
        requests.open[id(token)] = attention
        block.record_offsets = True
        block.record_attention = requests.attention or any(requests.open.values())
        block.last_record = None
    try:
        yield
    finally:
        for block in blocks:
            requests = _REQUESTS[block]
            del requests.open[id(token)]
            if requests.open:
                block.record_attention = requests.attention or any(requests.open.values())
            else:
                block.record_offsets, block.record_attention = requests.offsets, requests.attention
                del _REQUESTS[block]


def inactive(record: DeformableRecord) -> bool:
    """True when the block's feature map is a single cell: every sampling point reads the same
    value, so its offsets change nothing and get no gradient (small inputs in the last stage)."""
    return tuple(record.fmap_size) == (1, 1)


@torch.no_grad()
def record_sampling(model: nn.Module, images: torch.Tensor, blocks: Sequence[DeformableAttention],
                    attention: bool = True) -> list[DeformableRecord]:
    """Run ``model`` on ``images`` in eval mode, recording ``blocks`` (offsets, and attention
    with ``attention``), and return their records.

    Runs the DAT inside ``model`` (``forward_features`` of a :class:`DAT`), else ``model`` itself.
    The blocks' recording flags and the model's train/eval mode are restored afterwards; the
    records stay in ``block.last_record``.

    Raises:
        RuntimeError: when a block did not run in the forward pass.
    """
    found = find_dat(model)
    backbone = found[1] if found is not None else model
    forward = backbone.forward_features if isinstance(backbone, DAT) else backbone
    training = model.training
    model.eval()
    try:
        with recording(blocks, attention):
            forward(images)
    finally:
        model.train(training)
    missing = [i for i, b in enumerate(blocks) if b.last_record is None]
    if missing:
        raise RuntimeError(f"record_sampling: {len(missing)} of the requested deformable blocks did not "
                           "run in the forward pass; pass blocks that are part of the model")
    return [b.last_record for b in blocks]


def batch_images(batch: Any) -> torch.Tensor | list[torch.Tensor] | None:
    """The images of a batch: ``batch["image"]`` (tensor or list of tensors), else its first tensor."""
    if isinstance(batch, Mapping):
        if "image" in batch:
            return batch["image"]
        batch = list(batch.values())
    if isinstance(batch, torch.Tensor):
        return batch
    return next((v for v in batch if isinstance(v, torch.Tensor) and v.ndim >= 3), None)


def input_size_from_batch(batch: Any) -> tuple[int, int] | None:
    """(H, W) of the images of a batch (see :func:`batch_images`), ``None`` if there are none.

    For a list of images of different sizes, the largest height and width (the padded batch).
    """
    images = batch_images(batch)
    if isinstance(images, torch.Tensor) and images.ndim >= 3:
        return int(images.shape[-2]), int(images.shape[-1])
    if isinstance(images, (list, tuple)) and images and all(isinstance(t, torch.Tensor) for t in images):
        return max(int(t.shape[-2]) for t in images), max(int(t.shape[-1]) for t in images)
    return None


def normalized_to_pixels(coords: torch.Tensor, fmap_size: tuple[int, int],
                         input_size: tuple[int, int]) -> torch.Tensor:
    """Normalised ``grid_sample(align_corners=True)`` coordinates (y, x) -> input pixels (y, x).

    -1 / +1 are the centres of the first / last feature cell; a feature cell covers
    ``input / fmap`` input pixels; pixel ``i`` has its centre at ``i`` (matplotlib's ``imshow``).
    """
    fmap = coords.new_tensor(fmap_size)
    cell = coords.new_tensor(input_size) / fmap
    return ((coords + 1) / 2 * (fmap - 1) + 0.5) * cell - 0.5


def offset_statistics(records: Sequence[DeformableRecord], input_size: tuple[int, int] | None = None,
                      attention_entropy: bool = False) -> dict[str, float]:
    """Pooled offset statistics of one or more records (keys in the module docstring).

    Pixel statistics need ``input_size``; ``attn_entropy`` needs records with attention.
    """
    cells, pixels, spreads, entropies = [], [], [], []
    saturated = interior = outside = points = 0
    for rec in records:
        offset = rec.pos - rec.ref
        cells.append((offset / rec.cell_size().to(offset)).norm(dim=-1).flatten())
        if input_size is not None:
            moved = normalized_to_pixels(rec.pos, rec.fmap_size, input_size)
            pixels.append((moved - normalized_to_pixels(rec.ref, rec.fmap_size, input_size))
                          .norm(dim=-1).flatten())
        inside_ref = rec.ref.abs().amax(-1) < 1
        saturated += int((rec.saturated & inside_ref).sum())
        interior += int(inside_ref.sum())
        outside += int((rec.pos.abs().amax(-1) > 1).sum())
        points += inside_ref.numel()
        pos_spread = rec.pos.flatten(2, 3).var(2, unbiased=False).sum(-1).sqrt()  # [B, groups]
        ref_spread = rec.ref.clamp(-1, 1).flatten(2, 3).var(2, unbiased=False).sum(-1).sqrt()
        single = ref_spread == 0
        spreads.append(torch.where(single, 1.0, pos_spread / ref_spread.masked_fill(single, 1.0))
                       .flatten())
        if attention_entropy:
            if rec.attn is None:
                raise ValueError("attention entropy needs records made with record_attention=True")
            keys = rec.attn.shape[-1]
            ent = -(rec.attn * rec.attn.clamp_min(1e-12).log()).sum(-1)
            entropies.append((ent / math.log(keys) if keys > 1 else torch.zeros_like(ent)).flatten())
    stats = _moments("abs_cells", torch.cat(cells))
    if pixels:
        stats.update(_moments("abs_px", torch.cat(pixels)))
    stats["saturated"] = saturated / interior if interior else 0.0
    stats["outside"] = outside / points
    stats["spread"] = float(torch.cat(spreads).mean())
    if entropies:
        stats["attn_entropy"] = float(torch.cat(entropies).mean())
    return stats


def _moments(name: str, values: torch.Tensor) -> dict[str, float]:
    mean, std, top = torch.stack([values.mean(), values.std(unbiased=False), values.max()]).tolist()
    return {f"mean_{name}": mean, f"std_{name}": std, f"max_{name}": top}


def offset_network_norms(blocks: Sequence[DeformableAttention]) -> dict[str, float]:
    """L2 norms of the offset networks' (``conv_offset``) weights and gradients, together.

    ``grad_norm`` is absent when no parameter has a gradient (e.g. frozen offset networks).
    """
    params = [p for block in blocks for p in block.conv_offset.parameters()]
    norms = {"weight_norm": float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.detach()) for p in params])))}
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if grads:
        norms["grad_norm"] = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    return norms

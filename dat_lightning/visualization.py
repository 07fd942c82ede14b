"""Figures of where deformable attention samples its keys, as in the DAT papers.

:func:`plot_sampling_points` takes a model (a :class:`~dat_lightning.models.DAT` or any module
that contains DAT blocks, e.g. a LightningModule) and one or more images, and returns a matplotlib
figure with one row per image: the sampling points of one deformable block over the image (with
their reference grid), a few query points with their most-attended keys, and the histogram of the
offsets. Coordinates follow ``grid_sample(align_corners=True)``: -1 / +1 are the centres of the
first / last *feature* cell, and a feature cell covers ``input / fmap`` input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from dat_lightning.callbacks.statistics import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    block_key,
    deformable_blocks,
    normalized_to_pixels,
    stage_of,
)
from dat_lightning.models.dat import DAT
from dat_lightning.models.layers.deformable_attention import DeformableAttention, DeformableRecord

__all__ = ["denormalize", "draw_sampling_points", "plot_sampling_points", "record_sampling"]

GROUP_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[N, 3, H, W]`` normalised images -> ``[N, H, W, 3]`` in [0, 1] for display."""
    m = images.new_tensor(mean).view(1, -1, 1, 1)
    s = images.new_tensor(std).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1).permute(0, 2, 3, 1)


def _as_batch(image: torch.Tensor | np.ndarray, mean: Sequence[float],
              std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised ``[N, 3, H, W]`` model input, ``[N, H, W, 3]`` display image in [0, 1])."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.shape[-1] != 3 or image.ndim not in (3, 4):
            raise ValueError(f"numpy images must be HWC (or NHWC) uint8 RGB, got dtype {image.dtype} "
                             f"and shape {image.shape}")
        display = torch.from_numpy(image).float().div(255).reshape(-1, *image.shape[-3:])
        m, s = torch.tensor(mean), torch.tensor(std)
        return ((display - m) / s).permute(0, 3, 1, 2).contiguous(), display
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError("image must be a normalised [3, H, W] / [N, 3, H, W] tensor or an HWC uint8 "
                         f"numpy array, got {type(image).__name__} of shape {tuple(image.shape)}")
    batch = image.reshape(-1, *image.shape[-3:]).float()
    return batch, denormalize(batch.detach().cpu(), mean, std)


@torch.no_grad()
def record_sampling(model: nn.Module, images: torch.Tensor,
                    blocks: Sequence[DeformableAttention]) -> list[DeformableRecord]:
    """Run ``model`` on ``images`` in eval mode with offset and attention recording on ``blocks``.

    Runs the first :class:`DAT` inside ``model`` (``forward_features``), else ``model`` itself.
    The blocks' recording flags and the model's train/eval mode are restored afterwards; the
    records stay in ``block.last_record``.
    """
    backbone = next((m for m in model.modules() if isinstance(m, DAT)), None)
    flags = [(b.record_offsets, b.record_attention) for b in blocks]
    training = model.training
    model.eval()
    try:
        for b in blocks:
            b.record_offsets = b.record_attention = True
            b.last_record = None
        (backbone.forward_features if backbone is not None else model)(images)
    finally:
        model.train(training)
        for b, (offsets, attention) in zip(blocks, flags):
            b.record_offsets, b.record_attention = offsets, attention
    missing = [i for i, b in enumerate(blocks) if b.last_record is None]
    if missing:
        raise RuntimeError(f"record_sampling: {len(missing)} of the requested deformable blocks did not "
                           "run in the forward pass; pass blocks that are part of the model")
    return [b.last_record for b in blocks]


def _query_cells(fmap_size: tuple[int, int], num_queries: int) -> list[tuple[int, int]]:
    """``num_queries`` (row, col) feature cells spread along the map's diagonal."""
    h, w = fmap_size
    return list(dict.fromkeys(((j * h) // (num_queries + 1), (j * w) // (num_queries + 1))
                              for j in range(1, num_queries + 1)))


def draw_sampling_points(display: torch.Tensor, record: DeformableRecord, title: str = "",
                         num_queries: int = 3, top_k: int = 8) -> Figure:
    """Figure of one block's record over ``display`` images (``[N, H, W, 3]`` in [0, 1]).

    Row per image: sampling points (coloured by offset group; the scatter has gid
    ``"sampling_points"``) with their reference points; query points (gid ``"queries"``) and their
    ``top_k`` most-attended keys (needs ``record.attn``); histogram of the offsets in cells.
    """
    n, height, width = display.shape[:3]
    size = (height, width)
    pos = normalized_to_pixels(record.pos.float().cpu(), record.fmap_size, size)  # [N, g, Hk, Wk, 2]
    ref = normalized_to_pixels(record.ref.float().cpu(), record.fmap_size, size)
    cells = (record.pos - record.ref).float().cpu() / record.cell_size()
    groups = pos.shape[1]
    colors = np.repeat([GROUP_COLORS[g % len(GROUP_COLORS)] for g in range(groups)],
                       pos.shape[2] * pos.shape[3])
    fig = Figure(figsize=(9.6, 3.2 * n + 0.4), layout="constrained")
    if title:
        fig.suptitle(title)
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(display[i].numpy())
        p, r = pos[i].reshape(-1, 2).numpy(), ref[i].reshape(-1, 2).numpy()
        ax.add_collection(LineCollection(np.stack([r[:, ::-1], p[:, ::-1]], 1), colors=colors,
                                         linewidths=0.6, alpha=0.6))
        ax.scatter(r[:, 1], r[:, 0], s=8, marker="+", c="white", linewidths=0.6, gid="reference_points")
        ax.scatter(p[:, 1], p[:, 0], s=14, c=colors, edgecolors="black", linewidths=0.3,
                   gid="sampling_points")
        ax.set_title("sampling points", fontsize=9)
        ax = axes[i, 1]
        ax.imshow(display[i].numpy())
        ax.set_title(f"queries and top-{top_k} keys", fontsize=9)
        if record.attn is not None:
            _draw_attention(ax, record, pos[i], i, num_queries, top_k, size)
        ax = axes[i, 2]
        ax.hist([cells[i, ..., 0].flatten().numpy(), cells[i, ..., 1].flatten().numpy()], bins=20,
                label=["y", "x"])
        ax.set_xlabel("offset (key-grid cells)")
        ax.legend(fontsize=8)
        for ax in axes[i, :2]:
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.set_axis_off()
    return fig


def _draw_attention(ax, record: DeformableRecord, pos: torch.Tensor, i: int, num_queries: int,
                    top_k: int, size: tuple[int, int]) -> None:
    """Queries of image ``i`` and their most-attended sampling points (weights summed per group)."""
    attn = record.attn[i].float().cpu()  # [heads, H*W, Ns]
    heads, groups = attn.shape[0], pos.shape[0]
    h, w = record.fmap_size
    # Weight of each (group, key): the attention of that group's heads, averaged over all heads.
    per_group = attn.view(groups, heads // groups, h * w, -1).sum(1) / heads  # [g, HW, Ns]
    keys = pos.reshape(-1, 2)
    cell = torch.tensor(size, dtype=torch.float32) / torch.tensor([h, w], dtype=torch.float32)
    queries = _query_cells(record.fmap_size, num_queries)
    colors = [GROUP_COLORS[(j + 3) % len(GROUP_COLORS)] for j in range(len(queries))]
    for (qi, qj), color in zip(queries, colors):
        yx = (torch.tensor([qi, qj], dtype=torch.float32) + 0.5) * cell - 0.5
        weights = per_group[:, qi * w + qj].flatten()
        top = weights.topk(min(top_k, weights.numel()))
        kyx = keys[top.indices].numpy()
        ax.add_collection(LineCollection([[(yx[1], yx[0]), (k[1], k[0])] for k in kyx], colors=color,
                                         linewidths=0.8, alpha=0.7))
        ax.scatter(kyx[:, 1], kyx[:, 0], s=200 * top.values.numpy() / float(top.values.max()) + 4,
                   c=color, edgecolors="white", linewidths=0.4)
    if queries:
        q = (torch.tensor(queries, dtype=torch.float32) + 0.5) * cell - 0.5
        ax.scatter(q[:, 1], q[:, 0], s=110, marker="*", c=colors, edgecolors="black", linewidths=0.6,
                   gid="queries")


def plot_sampling_points(model: nn.Module, image: torch.Tensor | np.ndarray, block: str | None = None,
                         stage: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD, num_queries: int = 3,
                         top_k: int = 8) -> Figure:
    """Draw the sampling points of one deformable block of ``model`` for ``image``.

    Args:
        model: a DAT, or any module containing DAT blocks (e.g. a LightningModule).
        image: normalised ``[3, H, W]`` / ``[N, 3, H, W]`` tensor, or an HWC / NHWC uint8 RGB array
            (normalised here with ``mean``/``std``).
        block: block name, e.g. ``"stages.2.attns.1"`` (anything before ``stages.`` is ignored).
        stage: use the last deformable block of this stage (when ``block`` is not given); default:
            the first stage that has one.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        num_queries: query points whose most-attended keys are drawn.
        top_k: keys drawn per query.

    Returns:
        The figure (save it with ``fig.savefig("points.png")``). The block keeps the record in
        ``last_record``.
    """
    blocks = deformable_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} contains no DeformableAttention block to plot")
    names = [k for k, _ in blocks]
    if block is not None:
        chosen = [(k, b) for k, b in blocks if k == block_key(block)]
        if not chosen:
            raise ValueError(f"no deformable block named {block!r}; available: {names}")
    else:
        wanted = f"stage{stage}" if stage is not None else stage_of(names[0])
        chosen = [(k, b) for k, b in blocks if stage_of(k) == wanted]
        if not chosen:
            raise ValueError(f"stage {stage} has no deformable block; available: {names}")
    key, module = chosen[-1]
    batch, display = _as_batch(image, mean, std)
    device = next(model.parameters()).device
    (record,) = record_sampling(model, batch.to(device), [module])
    return draw_sampling_points(display, record, title=key, num_queries=num_queries, top_k=top_k)

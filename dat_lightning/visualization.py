"""Figures of where deformable attention samples its keys, as in the DAT papers.

:func:`plot_sampling_points` takes a model (a :class:`~dat_lightning.models.DAT` or any module
that contains DAT blocks, e.g. a LightningModule) and one or more images, and returns a matplotlib
figure with one row per image and three panels, each with its own legend:

* **sampling points**: the block's undeformed reference grid (white crosses), the sampling points
  the offsets moved them to (dots, one colour per offset group) and a line from each reference
  point to its sampling point;
* **queries and top-k keys**: a few query positions (stars, one colour per query) and the keys
  each attends to most (circles of the query's colour, area proportional to the attention weight);
* **offset histogram**: number of sampling points per offset, y and x, in key-grid cells.

Image axes are in input pixels. Stages are numbered from 0 like the modules (``stage2`` holds
``stages.2.attns.1``). Coordinates follow ``grid_sample(align_corners=True)``: -1 / +1 are the
centres of the first / last *feature* cell, and a feature cell covers ``input / fmap`` input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from dat_lightning.models.layers.deformable_attention import DeformableRecord
from dat_lightning.offsets import (
    block_key,
    deformable_blocks,
    inactive,
    normalized_to_pixels,
    record_sampling,
    stage_of,
)
from datamodules.plotting import denormalize

__all__ = ["GROUP_COLORS", "QUERY_COLORS", "draw_sampling_points", "plot_sampling_points"]

#: Colours of the offset groups' sampling points (ColorBrewer Set1).
GROUP_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")
#: Colours of the query points and their keys: bright, far apart in hue, visible on photos.
QUERY_COLORS = ("#ffff33", "#00e5ff", "#ff33ff", "#66ff33", "#ff8c1a", "#ffffff")


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
    return batch, denormalize(batch.cpu(), mean, std)


def _query_cells(fmap_size: tuple[int, int], num_queries: int) -> list[tuple[int, int]]:
    """``num_queries`` (row, col) feature cells spread along the map's diagonal."""
    h, w = fmap_size
    return list(dict.fromkeys(((j * h) // (num_queries + 1), (j * w) // (num_queries + 1))
                              for j in range(1, num_queries + 1)))


def draw_sampling_points(display: torch.Tensor, record: DeformableRecord, title: str = "",
                         num_queries: int = 3, top_k: int = 8) -> Figure:
    """Figure of one block's record over ``display`` images (``[N, H, W, 3]`` in [0, 1]).

    Row per image, panels and legends as in the module docstring. Scatter gids:
    ``"reference_points"``, ``"sampling_points"``, ``"queries"`` (the last needs ``record.attn``).
    A block on a 1x1 feature map is flagged as inactive in the title.
    """
    n, height, width = display.shape[:3]
    size = (height, width)
    pos = normalized_to_pixels(record.pos.float().cpu(), record.fmap_size, size)  # [N, g, Hk, Wk, 2]
    ref = normalized_to_pixels(record.ref.float().cpu(), record.fmap_size, size)
    cells = (record.pos - record.ref).float().cpu() / record.cell_size()
    groups = pos.shape[1]
    group_colors = [GROUP_COLORS[g % len(GROUP_COLORS)] for g in range(groups)]
    colors = np.repeat(group_colors, pos.shape[2] * pos.shape[3])
    fig = Figure(figsize=(11, 3.4 * n + 0.5), layout="constrained")
    if inactive(record):
        title = f"{title} (inactive: 1x1 feature map, the offsets change nothing)".strip()
    if title:
        fig.suptitle(title)
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(display[i].numpy())
        p, r = pos[i].reshape(-1, 2).numpy(), ref[i].reshape(-1, 2).numpy()
        ax.add_collection(LineCollection(np.stack([r[:, ::-1], p[:, ::-1]], 1), colors=colors,
                                         linewidths=0.6, alpha=0.6))
        ax.scatter(r[:, 1], r[:, 0], s=10, marker="+", c="white", linewidths=0.8, gid="reference_points")
        ax.scatter(p[:, 1], p[:, 0], s=14, c=colors, edgecolors="black", linewidths=0.3,
                   gid="sampling_points")
        handles = [Line2D([], [], marker="+", color="white", markeredgecolor="black", linestyle="",
                          label="reference point")]
        handles += [Line2D([], [], marker="o", color=c, markeredgecolor="black", linestyle="",
                           label=f"sampling point, group {g}") for g, c in enumerate(group_colors)]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  framealpha=0.9)
        ax.set_title("sampling points (line: offset)", fontsize=9)
        ax = axes[i, 1]
        ax.imshow(display[i].numpy())
        ax.set_title(f"queries and their top-{top_k} keys", fontsize=9)
        if record.attn is not None:
            _draw_attention(ax, record, pos[i], i, num_queries, top_k, size)
        ax = axes[i, 2]
        ax.hist([cells[i, ..., 0].flatten().numpy(), cells[i, ..., 1].flatten().numpy()], bins=20,
                label=["y offset", "x offset"])
        ax.set_xlabel("offset (key-grid cells)")
        ax.set_ylabel("sampling points")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("offset histogram", fontsize=9)
        ax.legend(fontsize=7)
        for ax in axes[i, :2]:
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.set_xlabel("x (input pixels)")
            ax.set_ylabel("y (input pixels)")
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
    colors = [QUERY_COLORS[j % len(QUERY_COLORS)] for j in range(len(queries))]
    handles = []
    for j, ((qi, qj), color) in enumerate(zip(queries, colors)):
        yx = (torch.tensor([qi, qj], dtype=torch.float32) + 0.5) * cell - 0.5
        weights = per_group[:, qi * w + qj].flatten()
        top = weights.topk(min(top_k, weights.numel()))
        kyx = keys[top.indices].numpy()
        ax.add_collection(LineCollection([[(yx[1], yx[0]), (k[1], k[0])] for k in kyx], colors=color,
                                         linewidths=0.8, alpha=0.8))
        ax.scatter(kyx[:, 1], kyx[:, 0], s=200 * top.values.numpy() / float(top.values.max()) + 4,
                   c=color, edgecolors="black", linewidths=0.4)
        handles.append(Line2D([], [], marker="*", markersize=10, color=color, markeredgecolor="black",
                              linestyle="", label=f"query {j} at cell ({qi}, {qj})"))
    if queries:
        q = (torch.tensor(queries, dtype=torch.float32) + 0.5) * cell - 0.5
        ax.scatter(q[:, 1], q[:, 0], s=110, marker="*", c=colors, edgecolors="black", linewidths=0.6,
                   gid="queries")
        handles.append(Line2D([], [], marker="o", color="lightgray", markeredgecolor="black",
                              linestyle="", label="its keys (area: attention)"))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  framealpha=0.9)


def plot_sampling_points(model: nn.Module, image: torch.Tensor | np.ndarray, block: str | None = None,
                         stage: int | None = None, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                         std: Sequence[float] = IMAGENET_DEFAULT_STD, num_queries: int = 3,
                         top_k: int = 8) -> Figure:
    """Draw the sampling points of one deformable block of ``model`` for ``image``.

    Args:
        model: a DAT, or any module containing DAT blocks (e.g. a LightningModule).
        image: normalised ``[3, H, W]`` / ``[N, 3, H, W]`` tensor, or an HWC / NHWC uint8 RGB array
            (normalised here with ``mean``/``std``).
        block: block key, e.g. ``"stages.2.attns.1"`` (anything before ``stages.`` is ignored).
        stage: use the last deformable block of this stage, numbered from 0 like the modules
            (when ``block`` is not given); default: the first stage that has one.
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
    return draw_sampling_points(display, record, title=f"{stage_of(key)}: block {key}",
                                num_queries=num_queries, top_k=top_k)

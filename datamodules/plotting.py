"""Draw a batch of the batch contract as a matplotlib figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["denormalize", "plot_batch"]


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised ``[N, 3, H, W]`` (or ``[3, H, W]``) images -> ``[N, H, W, 3]`` (``[H, W, 3]``) in [0, 1].

    The one inverse of the datamodules' normalisation, for display (figures, callbacks, notebooks).
    """
    images = images.detach().float()
    shape = (-1, 1, 1) if images.ndim == 3 else (1, -1, 1, 1)
    m, s = images.new_tensor(mean).view(shape), images.new_tensor(std).view(shape)
    return (images * s + m).clamp(0, 1).movedim(-3, -1)


def _label_text(label: torch.Tensor, class_names: Sequence[str]) -> str:
    if label.ndim == 0:
        return class_names[int(label)]
    return ", ".join(class_names[i] for i in torch.nonzero(label).flatten().tolist()) or "(none)"


def _overlay(ax: Any, mask: np.ndarray, num_classes: int, ignore_index: int | None) -> None:
    shown = np.ma.masked_where(mask == ignore_index if ignore_index is not None else mask < 0, mask)
    ax.imshow(
        shown,
        cmap=colormaps["tab20"],
        vmin=0,
        vmax=max(num_classes - 1, 1),
        alpha=0.5,
        interpolation="nearest",
    )


def plot_batch(
    batch: dict[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    max_images: int = 8,
    ignore_index: int = 255,
) -> Figure:
    """Plot up to ``max_images`` samples: images un-normalised, with labels, mask overlays or boxes.

    The figure type follows the batch keys: ``label`` (classification titles), ``mask`` (semantic
    mask overlay, ``ignore_index`` left transparent) or ``target`` (boxes with class names, and
    instance masks when present; detection labels count from 1).
    """
    images = batch["image"]
    count = min(len(images), max_images)
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(3 * cols, 3 * rows))
    for i in range(count):
        ax = figure.add_subplot(rows, cols, i + 1)
        ax.imshow(denormalize(images[i].cpu(), mean, std).numpy())
        ax.set_axis_off()
        if "label" in batch:
            ax.set_title(_label_text(batch["label"][i], class_names), fontsize=9)
        if "mask" in batch:
            _overlay(ax, batch["mask"][i].cpu().numpy(), len(class_names), ignore_index)
        if "target" in batch:
            target = batch["target"][i]
            if "masks" in target and len(target["masks"]):
                instance = target["masks"].cpu().numpy().astype(bool)
                ids = np.where(instance.any(0), instance.argmax(0), -1)
                _overlay(ax, ids, len(instance), None)
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                x0, y0, x1, y1 = box
                ax.add_patch(
                    Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.5)
                )
                ax.text(x0, y0, class_names[label - 1], color="black", fontsize=7, backgroundcolor="yellow")
    figure.tight_layout()
    return figure

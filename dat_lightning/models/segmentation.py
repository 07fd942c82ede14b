"""A semantic segmentation model: a DAT feature backbone, a decode head and an optional auxiliary
head, with whole-image or sliding-window inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .heads.upernet import resize

__all__ = ["SegmentationModel", "sliding_window_logits"]


def _window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, size)``; the last window ends at ``size``."""
    if size <= window:
        return [0]
    return [*range(0, size - window, stride), size - window]


def sliding_window_logits(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                          window: int, stride: int) -> torch.Tensor:
    """Logits of ``model`` over an image batch, computed window by window and averaged where windows
    overlap.

    Windows of ``window x window`` pixels start every ``stride`` pixels; the last row and column of
    windows are moved back to end at the image border, so every pixel is covered. A side shorter
    than ``window`` is taken whole (one window of that length).

    Args:
        model: maps ``[B, 3, h, w]`` crops to logits ``[B, C, h, w]`` at the crop resolution.
        image: batch ``[B, 3, H, W]``.
        window: window side in pixels.
        stride: step between windows in pixels (``<= window``).

    Returns:
        float32 logits ``[B, C, H, W]``.
    """
    if not 0 < stride <= window:
        raise ValueError(f"slide stride must be in (0, window={window}] so that windows cover the image, "
                         f"got {stride}")
    height, width = image.shape[-2:]
    logits = counts = None
    for top in _window_offsets(height, window, stride):
        for left in _window_offsets(width, window, stride):
            crop = image[..., top:top + window, left:left + window]
            out = model(crop).float()
            if logits is None:
                logits = out.new_zeros(*out.shape[:2], height, width)
                counts = out.new_zeros(1, 1, height, width)
            logits[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += out
            counts[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += 1
    return logits / counts


class SegmentationModel(nn.Module):
    """Backbone, decode head and optional auxiliary head of a semantic segmentation model.

    Args:
        backbone: module returning the stage maps, finest first (a ``features_only`` DAT).
        decode_head: maps the stage maps to logits at the finest map's resolution.
        aux_head: optional head on the map ``aux_stage``, for an auxiliary training loss.
        aux_stage: index of the stage map the auxiliary head reads.
        slide_window: window side of :meth:`infer`; None: whole image.
        slide_stride: step between windows; None: two thirds of ``slide_window``.

    Raises:
        ValueError: for a window side below 1 or a stride outside ``(0, slide_window]``.
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, aux_head: nn.Module | None = None,
                 aux_stage: int = 2, slide_window: int | None = None,
                 slide_stride: int | None = None) -> None:
        super().__init__()
        if slide_window is not None and slide_window < 1:
            raise ValueError(f"slide_window must be a positive window side in pixels (or None for "
                             f"whole-image inference), got {slide_window}")
        if slide_window is not None and slide_stride is None:
            slide_stride = max(1, 2 * slide_window // 3)
        if slide_window is not None and not 0 < slide_stride <= slide_window:
            raise ValueError(f"slide_stride must be in (0, slide_window={slide_window}] so that the "
                             f"windows cover the image, got {slide_stride}")
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.aux_stage = aux_stage
        self.slide_window = slide_window
        self.slide_stride = slide_stride

    @staticmethod
    def resize(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Bilinearly resize ``[B, C, h, w]`` logits to ``size``."""
        return resize(logits, size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, H, W]`` at the input resolution, from one pass over the image."""
        return self.resize(self.decode_head(self.backbone(image)), image.shape[-2:])

    def forward_train(self, image: torch.Tensor,
                      size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decode-head logits and auxiliary-head logits (None without an auxiliary head), both
        resized to ``size`` (the mask's)."""
        features = self.backbone(image)
        logits = self.resize(self.decode_head(features), size)
        if self.aux_head is None:
            return logits, None
        return logits, self.resize(self.aux_head(features[self.aux_stage]), size)

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Evaluation logits ``[B, num_classes, H, W]``: whole image, or sliding windows when
        ``slide_window`` is set."""
        if self.slide_window is None:
            return self(image)
        return sliding_window_logits(self, image, self.slide_window, self.slide_stride)

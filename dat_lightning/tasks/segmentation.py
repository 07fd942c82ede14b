"""Semantic segmentation with a DAT / DAT++ backbone and an UperNet or Semantic FPN head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..models import create_backbone
from ..models.heads import FCNHead, SemanticFPNHead, UperNetHead
from ..models.heads.upernet import resize
from .base import BaseTask

__all__ = ["SemanticSegmentationTask", "sliding_window_logits"]

#: Index of the DAT stage (stride 16) the auxiliary FCN head reads, as in mmsegmentation's UperNet.
AUX_STAGE = 2


def _window_starts(size: int, window: int, stride: int) -> list[int]:
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
    for top in _window_starts(height, window, stride):
        for left in _window_starts(width, window, stride):
            crop = image[..., top:top + window, left:left + window]
            out = model(crop).float()
            if logits is None:
                logits = out.new_zeros(*out.shape[:2], height, width)
                counts = out.new_zeros(1, 1, height, width)
            logits[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += out
            counts[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += 1
    return logits / counts


class SemanticSegmentationTask(BaseTask):
    """Semantic segmentation: a ``features_only`` DAT / DAT++ backbone (strides 4/8/16/32) with an
    UperNet or Semantic FPN decode head, as in the official DAT segmentation results.

    Batches are dicts with ``"image"`` (float ``[B, 3, H, W]``), ``"mask"`` (int64 ``[B, H, W]``,
    ``ignore_index`` for unlabelled pixels) and optionally ``"id"`` (passed through by
    :meth:`predict_step`).

    Loss: pixel-wise cross entropy (ignoring ``ignore_index``) of the logits upsampled bilinearly to
    the mask size, plus ``aux_weight`` times that of an auxiliary FCN head on the stage-3 (stride 16)
    features during training. Evaluation and prediction run on the whole image, or with sliding
    windows when ``slide_window`` is set; logits are always at the full input resolution.

    Metrics (``train_``/``val_``/``test_`` prefixes): ``miou`` (macro Jaccard index) and
    ``pixel_acc``; losses are logged as ``train_loss`` (``train_aux_loss`` for the auxiliary
    head), ``val_loss`` and ``test_loss``.

    The default LR schedule is a linear warmup followed by polynomial decay (as mmsegmentation).

    Args:
        head: decode head, ``"upernet"`` or ``"fpn"`` (Semantic FPN).
        head_channels: width of the decode head; None: 512 for UperNet, 128 for Semantic FPN (whose
            FPN neck is twice as wide), as in the official configs.
        ignore_index: mask value of pixels left out of the loss and the metrics.
        aux_weight: weight of the auxiliary FCN head's loss; 0 disables the auxiliary head.
        aux_channels: width of the auxiliary FCN head.
        dropout: dropout before the classifiers of the heads.
        slide_window: window side for sliding-window evaluation and prediction; None: whole image.
        slide_stride: step between windows; None: two thirds of ``slide_window``.
        predict_probs: :meth:`predict_step` also returns the class probabilities.
        lr_schedule: LR decay after the warmup (see :class:`BaseTask`).
        warmup_steps: linear LR warmup, in optimizer steps.
        **kwargs: backbone, optimisation and fine-tuning settings of :class:`BaseTask`
            (``num_classes``, ``backbone``, ``weights``, ``backbone_kwargs``, ``optimizer``, ...).
    """

    def __init__(
        self,
        head: Literal["upernet", "fpn"] = "upernet",
        head_channels: int | None = None,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        aux_channels: int = 256,
        dropout: float = 0.1,
        slide_window: int | None = None,
        slide_stride: int | None = None,
        predict_probs: bool = False,
        lr_schedule: Literal["cosine", "poly", "constant"] = "poly",
        warmup_steps: int = 1500,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr_schedule=lr_schedule, warmup_steps=warmup_steps, **kwargs)

    # --- configuration -----------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build ``self.backbone`` (four feature maps), ``self.decode_head`` and, with
        ``aux_weight > 0``, ``self.aux_head``.

        Raises:
            ValueError: for an unknown head, a negative ``aux_weight`` or invalid window settings.
        """
        hp = self.hparams
        if hp.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0 (0 disables the auxiliary head), got {hp.aux_weight}")
        if hp.slide_window is not None and hp.slide_window < 1:
            raise ValueError(f"slide_window must be a positive window side in pixels (or None for "
                             f"whole-image inference), got {hp.slide_window}")
        if hp.slide_window is not None and not 0 < self.window_stride <= hp.slide_window:
            raise ValueError(f"slide_stride must be in (0, slide_window={hp.slide_window}] so that the "
                             f"windows cover the image, got {hp.slide_stride}")
        self.backbone = create_backbone(hp.backbone, hp.weights, features_only=True, out_indices=(0, 1, 2, 3),
                                        **(hp.backbone_kwargs or {}))
        channels = self.backbone.feature_info.channels()
        if hp.head == "upernet":
            self.decode_head = UperNetHead(channels, hp.num_classes, channels=hp.head_channels or 512,
                                           dropout=hp.dropout)
        elif hp.head == "fpn":
            self.decode_head = SemanticFPNHead(channels, hp.num_classes, channels=hp.head_channels or 128,
                                               dropout=hp.dropout)
        else:
            raise ValueError(f"unknown head {hp.head!r}; choose 'upernet' or 'fpn'")
        self.aux_head = None
        if hp.aux_weight > 0:
            self.aux_head = FCNHead(channels[AUX_STAGE], hp.num_classes, channels=hp.aux_channels,
                                    dropout=hp.dropout)

    def configure_metrics(self) -> None:
        """Build the metric collections (``miou``, ``pixel_acc``) for the three splits."""
        n, ignore = self.hparams.num_classes, self.hparams.ignore_index
        collection = MetricCollection({
            "miou": MulticlassJaccardIndex(num_classes=n, average="macro", ignore_index=ignore),
            "pixel_acc": MulticlassAccuracy(num_classes=n, average="micro", ignore_index=ignore),
        })
        self.train_metrics = collection.clone(prefix="train_")
        self.val_metrics = collection.clone(prefix="val_")
        self.test_metrics = collection.clone(prefix="test_")

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        """The best checkpoint has the highest validation mIoU."""
        return ("val_miou", "max")

    @property
    def window_stride(self) -> int | None:
        """Step between sliding windows (``slide_stride``, or two thirds of ``slide_window``)."""
        hp = self.hparams
        if hp.slide_window is None or hp.slide_stride is not None:
            return hp.slide_stride
        return max(1, 2 * hp.slide_window // 3)

    # --- forward -----------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, H, W]`` at the input resolution, from one pass over the image."""
        return resize(self.decode_head(self.backbone(image)), image.shape[-2:])

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Evaluation logits ``[B, num_classes, H, W]``: whole image, or sliding windows when
        ``slide_window`` is set."""
        if self.hparams.slide_window is None:
            return self(image)
        return sliding_window_logits(self, image, self.hparams.slide_window, self.window_stride)

    def _loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), mask, ignore_index=self.hparams.ignore_index)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Cross entropy of the decode head (plus the weighted auxiliary loss) on one batch."""
        image, mask = batch["image"], batch["mask"]
        features = self.backbone(image)
        logits = resize(self.decode_head(features), mask.shape[-2:])
        loss = self._loss(logits, mask)
        batch_size = image.shape[0]
        if self.aux_head is not None:
            aux_loss = self._loss(resize(self.aux_head(features[AUX_STAGE]), mask.shape[-2:]), mask)
            self.log("train_aux_loss", aux_loss, on_step=True, on_epoch=True, batch_size=batch_size,
                     sync_dist=True)
            loss = loss + self.hparams.aux_weight * aux_loss
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 sync_dist=True)
        self.train_metrics.update(logits.detach().argmax(dim=1), mask)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        image, mask = batch["image"], batch["mask"]
        logits = self.infer(image)
        metrics = self.val_metrics if split == "val" else self.test_metrics
        metrics.update(logits.argmax(dim=1), mask)
        batch_size = image.shape[0]
        self.log(f"{split}_loss", self._loss(logits, mask), prog_bar=split == "val", batch_size=batch_size,
                 sync_dist=True)
        self.log_dict(metrics, batch_size=batch_size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and metrics of :meth:`infer` on one batch."""
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and metrics of :meth:`infer` on one batch."""
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``mask`` (int64 ``[B, H, W]``, class per pixel at the input resolution), ``probs``
        (float ``[B, num_classes, H, W]``, only with ``predict_probs``) and the batch's ``id`` if any."""
        logits = self.infer(batch["image"])
        output: dict[str, Any] = {"mask": logits.argmax(dim=1)}
        if self.hparams.predict_probs:
            output["probs"] = logits.softmax(dim=1)
        if "id" in batch:
            output["id"] = batch["id"]
        return output

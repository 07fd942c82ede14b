"""Semantic segmentation with a DAT / DAT++ backbone and an UperNet or Semantic FPN head."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..models import create_backbone
from ..models.heads import FCNHead, SemanticFPNHead, UperNetHead
from ..models.segmentation import SegmentationModel, sliding_window_logits
from .base import BaseTask, EvaluationOutputs

__all__ = ["SemanticSegmentationTask", "sliding_window_logits"]

#: Index of the DAT stage (stride 16) the auxiliary FCN head reads, as in mmsegmentation's UperNet.
AUX_STAGE = 2
#: Top-level state-dict prefixes of checkpoints written before the task held ``self.model``.
_LEGACY_PREFIXES = ("backbone.", "decode_head.", "aux_head.")


class SemanticSegmentationTask(BaseTask):
    """Semantic segmentation: a ``features_only`` DAT / DAT++ backbone (strides 4/8/16/32) with an
    UperNet or Semantic FPN decode head, as in the official DAT segmentation results.

    Batches are dicts with ``"image"`` (float ``[B, 3, H, W]``), ``"mask"`` (int64 ``[B, H, W]``,
    ``ignore_index`` for unlabelled pixels) and optionally ``"id"`` (passed through by
    :meth:`predict_step`).

    Loss: pixel-wise cross entropy (ignoring ``ignore_index``) of the logits upsampled bilinearly to
    the mask size, plus ``aux_weight`` times that of an auxiliary FCN head on stage 2 (0-based, stride 16)
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
        warmup_steps: linear LR warmup, in optimizer steps (below 1: a share of the run).
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
        warmup_steps: int | float = 1500,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr_schedule=lr_schedule, warmup_steps=warmup_steps, **kwargs)

    # --- configuration -----------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build ``self.model``, a :class:`~dat_lightning.models.segmentation.SegmentationModel`:
        the backbone (four feature maps), the decode head and, with ``aux_weight > 0``, the
        auxiliary head.

        Raises:
            ValueError: for an unknown head, a negative ``aux_weight`` or invalid window settings.
        """
        hp = self.hparams
        if hp.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0 (0 disables the auxiliary head), got {hp.aux_weight}")
        if hp.head not in ("upernet", "fpn"):
            raise ValueError(f"unknown head {hp.head!r}; choose 'upernet' or 'fpn'")
        backbone = create_backbone(hp.backbone, hp.weights, features_only=True, out_indices=(0, 1, 2, 3),
                                   **(hp.backbone_kwargs or {}))
        channels = backbone.feature_info.channels()
        if hp.head == "upernet":
            decode_head = UperNetHead(channels, hp.num_classes, channels=hp.head_channels or 512,
                                      dropout=hp.dropout)
        else:
            decode_head = SemanticFPNHead(channels, hp.num_classes, channels=hp.head_channels or 128,
                                          dropout=hp.dropout)
        aux_head = None
        if hp.aux_weight > 0:
            aux_head = FCNHead(channels[AUX_STAGE], hp.num_classes, channels=hp.aux_channels,
                               dropout=hp.dropout)
        self.model = SegmentationModel(backbone, decode_head, aux_head, aux_stage=AUX_STAGE,
                                       slide_window=hp.slide_window, slide_stride=hp.slide_stride)

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Map the state-dict keys of checkpoints written before the model object existed
        (``backbone.*``, ``decode_head.*``, ``aux_head.*``) to ``model.*``."""
        state = checkpoint["state_dict"]
        for key in list(state):
            if key.startswith(_LEGACY_PREFIXES):
                state[f"model.{key}"] = state.pop(key)

    def _loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), mask, ignore_index=self.hparams.ignore_index)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Cross entropy of the decode head (plus the weighted auxiliary loss) on one batch."""
        image, mask = batch["image"], batch["mask"]
        logits, aux_logits = self.model.forward_train(image, mask.shape[-2:])
        loss = self._loss(logits, mask)
        batch_size = image.shape[0]
        if aux_logits is not None:
            aux_loss = self._loss(aux_logits, mask)
            self.log("train_aux_loss", aux_loss, on_step=True, on_epoch=True, batch_size=batch_size,
                     sync_dist=True)
            loss = loss + self.hparams.aux_weight * aux_loss
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 sync_dist=True)
        self.train_metrics.update(logits.detach().argmax(dim=1), mask)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def evaluation_outputs(self, batch: dict[str, Any]) -> EvaluationOutputs:
        """Predicted classes of :meth:`SegmentationModel.infer`, the mask and the loss."""
        image, mask = batch["image"], batch["mask"]
        logits = self.model.infer(image)
        return EvaluationOutputs(logits.argmax(dim=1), mask, self._loss(logits, mask), image.shape[0])

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``mask`` (int64 ``[B, H, W]``, class per pixel at the input resolution), ``probs``
        (float ``[B, num_classes, H, W]``, only with ``predict_probs``) and the batch's ``id`` if any."""
        logits = self.model.infer(batch["image"])
        output: dict[str, Any] = {"mask": logits.argmax(dim=1)}
        if self.hparams.predict_probs:
            output["probs"] = logits.softmax(dim=1)
        if "id" in batch:
            output["id"] = batch["id"]
        return output

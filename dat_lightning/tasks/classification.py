"""Image classification (multi-class or multi-label) with a DAT / DAT++ backbone."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from ..models import create_backbone
from .base import BaseTask, EvaluationOutputs

__all__ = ["ClassificationTask"]


class ClassificationTask(BaseTask):
    """Fine-tune a DAT / DAT++ classifier.

    Batches are dicts with ``"image"`` (float ``[B, 3, H, W]``), ``"label"`` (int64 ``[B]``, or
    float multi-hot ``[B, C]`` when ``multi_label``) and optionally ``"id"`` (passed through by
    :meth:`predict_step`).

    Losses: cross entropy (with ``label_smoothing`` and ``class_weights``); with Mixup/CutMix the
    soft-target cross entropy of the mixed targets (label smoothing then happens inside Mixup);
    multi-label: binary cross entropy with logits (``class_weights`` weigh the classes).

    Metrics (``train_``/``val_``/``test_`` prefixes), always on the original hard labels:
    ``acc1``, ``acc5`` (only when ``num_classes > 5``) and macro ``f1``; multi-label: macro
    ``map`` (average precision) and macro ``f1``. Losses are logged as ``train_loss``,
    ``val_loss``, ``test_loss``.

    With ``ema_decay`` an exponential moving average of the weights is kept (updated after every
    optimizer step, saved in checkpoints); validation, test and prediction then use the EMA
    weights.

    Args:
        multi_label: labels are multi-hot vectors; uses sigmoid outputs and binary cross entropy.
        label_smoothing: label smoothing of the cross entropy (multi-class only).
        class_weights: per-class loss weights, one per class.
        mixup_alpha: Mixup beta-distribution alpha; > 0 enables Mixup (multi-class only).
        cutmix_alpha: CutMix beta-distribution alpha; > 0 enables CutMix (multi-class only).
        mixup_prob: probability of mixing a batch.
        mixup_switch_prob: probability of CutMix instead of Mixup when both are enabled.
        ema_decay: decay of the weight EMA (e.g. 0.9998); None disables it.
        **kwargs: backbone, optimisation and fine-tuning settings of :class:`BaseTask`
            (``num_classes``, ``backbone``, ``weights``, ``optimizer``, ...).
    """

    def __init__(
        self,
        multi_label: bool = False,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        ema_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    # --- configuration -----------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build the classifier (``self.model``), the optional EMA copy (``self.model_ema``) and
        the Mixup/CutMix transform (``self.mixup``).

        Raises:
            ValueError: for settings that contradict each other.
        """
        hp = self.hparams
        backbone_kwargs = dict(hp.backbone_kwargs or {})
        if backbone_kwargs.pop("num_classes", hp.num_classes) != hp.num_classes:
            raise ValueError(f"backbone_kwargs sets num_classes={hp.backbone_kwargs['num_classes']} "
                             f"but the task has num_classes={hp.num_classes}; remove it from "
                             "backbone_kwargs (the task sets the classifier size)")
        self.model = create_backbone(hp.backbone, hp.weights, num_classes=hp.num_classes,
                                     **backbone_kwargs)
        self.model_ema = None
        if hp.ema_decay is not None:
            if not 0 < hp.ema_decay < 1:
                raise ValueError(f"ema_decay must be in (0, 1) (or None to disable the EMA), got "
                                 f"{hp.ema_decay}")
            self.model_ema = ModelEmaV3(self.model, decay=hp.ema_decay).requires_grad_(False)
        self.mixup = None
        if hp.mixup_alpha > 0 or hp.cutmix_alpha > 0:
            if hp.multi_label:
                raise ValueError("Mixup/CutMix needs multi-class labels; set mixup_alpha=0 and "
                                 "cutmix_alpha=0 for a multi_label task")
            self.mixup = Mixup(mixup_alpha=hp.mixup_alpha, cutmix_alpha=hp.cutmix_alpha,
                               prob=hp.mixup_prob, switch_prob=hp.mixup_switch_prob,
                               label_smoothing=hp.label_smoothing, num_classes=hp.num_classes)

    def configure_losses(self) -> None:
        """Build ``self.criterion`` (the training loss) and ``self.eval_criterion`` (hard labels).

        Raises:
            ValueError: if ``class_weights`` does not have one weight per class, or label
                smoothing is asked for a multi-label task.
        """
        hp = self.hparams
        weight = None
        if hp.class_weights is not None:
            if len(hp.class_weights) != hp.num_classes:
                raise ValueError(f"class_weights has {len(hp.class_weights)} values but "
                                 f"num_classes is {hp.num_classes}; give one weight per class")
            weight = torch.tensor(hp.class_weights, dtype=torch.float32)
        if hp.multi_label:
            if hp.label_smoothing:
                raise ValueError("label_smoothing applies to multi-class cross entropy; set it to 0 "
                                 "for a multi_label task")
            self.eval_criterion = nn.BCEWithLogitsLoss(weight=weight)
            self.criterion = self.eval_criterion
            return
        self.eval_criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=hp.label_smoothing)
        if self.mixup is None:
            self.criterion = self.eval_criterion
        elif weight is None:
            self.criterion = SoftTargetCrossEntropy()
        else:  # cross entropy with probability targets is the weighted soft-target loss
            self.criterion = nn.CrossEntropyLoss(weight=weight)

    def configure_metrics(self) -> None:
        """Build the metric collections (see the class docstring for the names)."""
        n = self.hparams.num_classes
        if self.hparams.multi_label:
            metrics = {"map": MultilabelAveragePrecision(num_labels=n, average="macro"),
                       "f1": MultilabelF1Score(num_labels=n, average="macro")}
        else:
            metrics = {"acc1": MulticlassAccuracy(num_classes=n, top_k=1, average="micro")}
            if n > 5:
                metrics["acc5"] = MulticlassAccuracy(num_classes=n, top_k=5, average="micro")
            metrics["f1"] = MulticlassF1Score(num_classes=n, average="macro")
        collection = MetricCollection(metrics)
        self.train_metrics = collection.clone(prefix="train_")
        self.val_metrics = collection.clone(prefix="val_")
        self.test_metrics = collection.clone(prefix="test_")

    def optimizer_exclude(self) -> tuple[str, ...]:
        """The EMA copy is not optimized."""
        return ("model_ema.",)

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        """Best checkpoint by top-1 accuracy (multi-label: mean average precision)."""
        return ("val_map" if self.hparams.multi_label else "val_acc1", "max")

    # --- forward -----------------------------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        """The weights used outside training: the EMA when enabled, else the trained model."""
        return self.model if self.model_ema is None else self.model_ema.module

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 probabilities (sigmoid when ``multi_label``, else softmax), the metrics' input,
        so that multi-label thresholds never see logits."""
        logits = logits.detach().float()
        return logits.sigmoid() if self.hparams.multi_label else logits.softmax(dim=1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss on (optionally mixed) images; metrics against the original labels."""
        image, label = batch["image"], batch["label"]
        target = label.float() if self.hparams.multi_label else label
        if self.mixup is not None:
            if image.shape[0] % 2 == 0:
                image, target = self.mixup(image, label)
            else:  # Mixup pairs samples; an odd (last) batch is used unmixed
                target = mixup_target(label, self.hparams.num_classes, 1.0,
                                      self.hparams.label_smoothing)
        logits = self(image)
        loss = self.criterion(logits, target)
        batch_size = image.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=True)
        self.train_metrics.update(self._probabilities(logits), self._metric_target(label))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def _metric_target(self, label: torch.Tensor) -> torch.Tensor:
        return label.long() if self.hparams.multi_label else label

    def evaluation_outputs(self, batch: dict[str, Any]) -> EvaluationOutputs:
        """Probabilities of the evaluation weights, hard labels and the loss."""
        image, label = batch["image"], batch["label"]
        logits = self.eval_model(image)
        target = label.float() if self.hparams.multi_label else label
        return EvaluationOutputs(self._probabilities(logits), self._metric_target(label),
                                 self.eval_criterion(logits, target), image.shape[0])

    def predict_step(self, batch: dict[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> dict[str, Any]:
        """``probs`` ``[B, C]`` (softmax, or sigmoid when ``multi_label``), ``pred`` (class index
        ``[B]``, or 0/1 ``[B, C]`` at 0.5 when ``multi_label``) and the batch's ``id`` if any;
        float32 also under mixed precision."""
        probs = self._probabilities(self.eval_model(batch["image"]))
        pred = (probs > 0.5).long() if self.hparams.multi_label else probs.argmax(dim=1)
        output = {"probs": probs, "pred": pred}
        if "id" in batch:
            output["id"] = batch["id"]
        return output

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimizer, then update the weight EMA."""
        super().optimizer_step(*args, **kwargs)
        if self.model_ema is not None:
            self.model_ema.update(self.model)

"""Object detection and instance segmentation with a DAT / DAT++ + FPN backbone in torchvision's
RetinaNet, Faster R-CNN and Mask R-CNN."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchmetrics import MetricCollection
from torchmetrics.detection import MeanAveragePrecision

from ..models import create_backbone
from ..models.detection import DETECTOR_OUT_INDICES, build_detector
from .base import BaseTask, EvaluationOutputs

__all__ = ["ObjectDetectionTask"]

#: Scalar results of ``MeanAveragePrecision`` that are logged (per-class values are not).
_LOGGED = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


class ObjectDetectionTask(BaseTask):
    """Object detection (RetinaNet, Faster R-CNN) or instance segmentation (Mask R-CNN) with torchvision's
    detectors on a DAT / DAT++ backbone with a feature pyramid.

    The FPN follows the official DAT detection configs: P3-P7 from stages 1-3 for RetinaNet (P6/P7
    from the last stage's map), P2-P6 from stages 0-3 for the R-CNNs (P6 max-pooled).

    Batches are dicts with ``"image"`` (list of float ``[3, H, W]``, already normalised; sizes may
    differ), ``"target"`` (list of dicts with ``boxes`` float ``[N, 4]`` xyxy in pixels, ``labels``
    int64 ``[N]`` in ``1..num_classes`` (0 is the background) and, for Mask R-CNN, ``masks`` uint8
    ``[N, H, W]``) and optionally ``"id"`` (passed through by :meth:`predict_step`). The detector
    resizes the images to ``min_size``/``max_size`` itself and returns boxes in input pixels.
    Calling the task, ``task(images, targets=None)``, runs the detector (``self.model``): the loss
    dict in training mode (``targets`` required), else one dict of ``boxes``, ``labels``, ``scores``
    (and ``masks`` ``[N, 1, H, W]`` probabilities) per image.

    Training loss: the sum of torchvision's losses, each logged as ``train_<name>`` (e.g.
    ``train_loss_classifier``, ``train_loss_box_reg``, ``train_loss_objectness``, ``train_loss_mask``;
    RetinaNet: ``train_classification``, ``train_bbox_regression``) next to ``train_loss``.

    Metrics (COCO-style ``MeanAveragePrecision``, validation and test only): ``val_map``,
    ``val_map_50``, ``val_map_75``, ``val_map_small``/``medium``/``large``, ``val_mar_1``/``10``/``100``
    for boxes and, with Mask R-CNN, the same for masks as ``val_segm_map``, ``val_segm_map_50``, ...
    (``test_`` likewise). Predicted masks count at probability 0.5.

    The default LR schedule is a linear warmup followed by cosine decay.

    Args:
        detector: ``"retinanet"``, ``"faster_rcnn"`` or ``"mask_rcnn"``.
        fpn_channels: channels of the feature pyramid levels.
        min_size: short side the detector resizes images to.
        max_size: upper bound of the long side after resizing.
        detector_kwargs: further options of the torchvision detector class, e.g.
            ``rpn_pre_nms_top_n_train``, ``box_batch_size_per_image``, ``box_detections_per_img``
            (R-CNNs), ``topk_candidates``, ``detections_per_img`` (RetinaNet), ``score_thresh``...
        lr_schedule: LR decay after the warmup (see :class:`BaseTask`).
        warmup_steps: linear LR warmup, in optimizer steps (below 1: a share of the run).
        **kwargs: backbone, optimisation and fine-tuning settings of :class:`BaseTask`
            (``num_classes`` without the background, ``backbone``, ``weights``, ``backbone_kwargs``,
            ``optimizer``, ...).
    """

    def __init__(
        self,
        detector: Literal["retinanet", "faster_rcnn", "mask_rcnn"] = "faster_rcnn",
        fpn_channels: int = 256,
        min_size: int = 800,
        max_size: int = 1333,
        detector_kwargs: dict[str, Any] | None = None,
        lr_schedule: Literal["cosine", "poly", "constant"] = "cosine",
        warmup_steps: int | float = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr_schedule=lr_schedule, warmup_steps=warmup_steps, **kwargs)

    @property
    def with_masks(self) -> bool:
        """Whether the detector predicts instance masks (Mask R-CNN)."""
        return self.hparams.detector == "mask_rcnn"

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        """The best checkpoint has the highest validation box mAP (no validation loss is computed)."""
        return ("val_map", "max")

    # --- configuration -----------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build the torchvision detector ``self.model`` on a ``features_only`` DAT + FPN.

        Raises:
            ValueError: for an unknown detector.
        """
        hp = self.hparams
        if hp.detector not in DETECTOR_OUT_INDICES:
            raise ValueError(f"unknown detector {hp.detector!r}; choose one of "
                             f"{sorted(DETECTOR_OUT_INDICES)}")
        body = create_backbone(hp.backbone, hp.weights, features_only=True,
                               out_indices=DETECTOR_OUT_INDICES[hp.detector], **(hp.backbone_kwargs or {}))
        self.model = build_detector(hp.detector, body, hp.num_classes, fpn_channels=hp.fpn_channels,
                                    min_size=hp.min_size, max_size=hp.max_size, **(hp.detector_kwargs or {}))

    def configure_metrics(self) -> None:
        """Build the ``MeanAveragePrecision`` collections for validation and test (boxes, and masks
        for Mask R-CNN)."""
        iou_type = ("bbox", "segm") if self.with_masks else "bbox"
        collection = MetricCollection({"map": MeanAveragePrecision(iou_type=iou_type)})
        self.val_metrics = collection.clone(prefix="val_")
        self.test_metrics = collection.clone(prefix="test_")

    # --- steps -------------------------------------------------------------------------------
    def _targets(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        targets = batch["target"]
        if self.with_masks and any("masks" not in t for t in targets):
            raise ValueError("mask_rcnn needs instance masks: every target needs a 'masks' entry (uint8 "
                             "[N, H, W]); use a datamodule that loads masks, or detector='faster_rcnn'")
        return targets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Sum of the detector's losses on one batch; each loss is logged."""
        losses = self(batch["image"], self._targets(batch))
        loss = sum(losses.values())
        batch_size = len(batch["image"])
        self.log_dict({f"train_{name}": value for name, value in losses.items()}, on_step=True, on_epoch=True,
                      batch_size=batch_size)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 sync_dist=True)
        return loss

    def evaluation_outputs(self, batch: dict[str, Any]) -> EvaluationOutputs:
        """Detections and targets of one batch (masks as booleans for Mask R-CNN); no loss."""
        detections = self(batch["image"])
        targets = self._targets(batch)
        if self.with_masks:
            detections = [dict(d, masks=d["masks"][:, 0] > 0.5) for d in detections]
            targets = [dict(t, masks=t["masks"].bool()) for t in targets]
        return EvaluationOutputs(detections, targets, None, len(batch["image"]))

    def log_evaluation_metrics(self, metrics: MetricCollection, split: str, batch_size: int) -> None:
        """Nothing per batch: the mAP is computed and logged when the epoch ends."""

    def _log_map(self, split: str) -> None:
        metrics = self.val_metrics if split == "val" else self.test_metrics
        prefix = f"{split}_"
        logged = {}
        for key, value in metrics.compute().items():
            # boxes and masks give "<split>_bbox_map", "<split>_segm_map"...; boxes alone "<split>_map"...
            name = key.removeprefix(prefix).removeprefix("bbox_")
            if name.removeprefix("segm_") in _LOGGED:
                logged[prefix + name] = value
        self.log_dict(logged)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        """Log the validation mAP (see the class docstring for the names)."""
        self._log_map("val")

    def on_test_epoch_end(self) -> None:
        """Log the test mAP (see the class docstring for the names)."""
        self._log_map("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``detections``: torchvision's list of per-image dicts (``boxes`` float ``[N, 4]`` xyxy in
        input pixels, ``labels`` int64 ``[N]``, ``scores`` float ``[N]``, with Mask R-CNN ``masks`` float
        ``[N, 1, H, W]`` probabilities), and the batch's ``id`` if any."""
        output: dict[str, Any] = {"detections": self(batch["image"])}
        if "id" in batch:
            output["id"] = batch["id"]
        return output

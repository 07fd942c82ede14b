"""DAT + FPN backbones for torchvision's RetinaNet, Faster R-CNN and Mask R-CNN."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

Detector = Literal["retinanet", "faster_rcnn", "mask_rcnn"]

#: DAT stages (strides 4/8/16/32) each detector's FPN is built on: RetinaNet uses P3-P5 (+ P6/P7 from
#: the last stage's map), the R-CNNs P2-P5 (+ a max-pooled P6), as in the official DAT detection configs.
DETECTOR_OUT_INDICES: dict[str, tuple[int, ...]] = {
    "retinanet": (1, 2, 3),
    "faster_rcnn": (0, 1, 2, 3),
    "mask_rcnn": (0, 1, 2, 3),
}


class DATFPNBackbone(nn.Module):
    """A multi-scale feature extractor followed by torchvision's :class:`FeaturePyramidNetwork`.

    The torchvision detectors take it as their ``backbone``: it returns an ordered dict of maps with
    ``out_channels`` channels each, named ``"0"``, ``"1"``, ... (then the extra block's names).

    Args:
        body: feature extractor returning a list of ``[B, C_i, H/s_i, W/s_i]`` maps, finest first, with
            timm's ``feature_info`` (e.g. a ``features_only`` DAT).
        out_channels: channels of every pyramid level.
        extra_blocks: levels added after the coarsest one; ``None``: one max-pooled level (P6).
    """

    def __init__(self, body: nn.Module, out_channels: int = 256,
                 extra_blocks: ExtraFPNBlock | None = None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels,
                                         extra_blocks if extra_blocks is not None else LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Image batch ``[B, 3, H, W]`` -> pyramid levels, finest first."""
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_detector(detector: Detector, body: nn.Module, num_classes: int, fpn_channels: int = 256,
                   min_size: int = 800, max_size: int = 1333, **kwargs: Any) -> nn.Module:
    """Wrap a feature extractor in an FPN and a torchvision detector.

    Images are expected already normalised (the transform's mean/std are 0/1); the detector resizes
    them so the short side is ``min_size`` (long side at most ``max_size``) and maps its boxes back.

    Args:
        detector: ``"retinanet"``, ``"faster_rcnn"`` or ``"mask_rcnn"``.
        body: feature extractor returning the stages in :data:`DETECTOR_OUT_INDICES` ``[detector]``.
        num_classes: object classes, without the background (labels run from 1 to ``num_classes``).
        fpn_channels: channels of the pyramid levels.
        min_size: short side the images are resized to.
        max_size: upper bound of the long side after resizing.
        **kwargs: further options of the torchvision detector (e.g. ``rpn_pre_nms_top_n_train``,
            ``box_batch_size_per_image``, ``score_thresh``).

    Returns:
        The torchvision detector (``RetinaNet``, ``FasterRCNN`` or ``MaskRCNN``).
    """
    if detector not in DETECTOR_OUT_INDICES:
        raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DETECTOR_OUT_INDICES)}")
    channels = body.feature_info.channels()
    stages = DETECTOR_OUT_INDICES[detector]
    if len(channels) != len(stages):
        raise ValueError(f"{detector} needs {len(stages)} feature maps (stages {stages}), the backbone "
                         f"returns {len(channels)}; build it with out_indices={stages}")
    common = dict(num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
                  image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], **kwargs)
    if detector == "retinanet":
        # P6 from the last stage's map (mmdetection's add_extra_convs="on_input"), P7 from P6
        return RetinaNet(DATFPNBackbone(body, fpn_channels, LastLevelP6P7(channels[-1], fpn_channels)),
                         **common)
    fpn = DATFPNBackbone(body, fpn_channels, LastLevelMaxPool())
    if detector == "faster_rcnn":
        return FasterRCNN(fpn, **common)
    model = MaskRCNN(fpn, **common)
    if "mask_head" not in kwargs and "mask_predictor" not in kwargs:
        # mask head as wide as the pyramid (torchvision's default is 256 wide, like its FPN)
        model.roi_heads.mask_head = MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, dilation=1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1)
    return model

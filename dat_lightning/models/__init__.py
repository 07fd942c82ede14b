"""DAT and DAT++ backbones (registered with timm on import), pretrained weights, checkpoint loading."""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

from .checkpoint import CheckpointError, LoadReport, load_checkpoint
from .dat import DAT, DATFeatures, DATStage
from .detection import DETECTOR_OUT_INDICES, DATFPNBackbone, build_detector
from .heads import FCNHead, SemanticFPNHead, UperNetHead
from .official import from_official_config, from_official_dense_config
from .official_configs import OFFICIAL_CONFIGS, official_kwargs
from .weights import WEIGHTS, PretrainedWeights, WeightsDownloadError, get_weights, list_weights

__all__ = ["DAT", "DETECTOR_OUT_INDICES", "OFFICIAL_CONFIGS", "WEIGHTS", "CheckpointError",
           "DATFPNBackbone", "DATFeatures", "DATStage", "FCNHead", "LoadReport", "PretrainedWeights",
           "SemanticFPNHead", "UperNetHead", "WeightsDownloadError", "build_detector", "create_backbone",
           "from_official_config", "from_official_dense_config", "get_weights", "list_weights",
           "load_checkpoint", "official_kwargs"]


def create_backbone(name: str, weights: str | None = None, *, features_only: bool = False,
                    out_indices: tuple[int, ...] = (0, 1, 2, 3), num_classes: int = 0,
                    allow_pickle: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered DAT preset with timm and load ``weights`` into it.

    Args:
        name: timm model name (``"dat_tiny"``, ``"dat_pp_small"``, ...).
        weights: a checkpoint path or a registered weight name (``"dat_tiny.in1k"``); None keeps
            the random initialisation. Loaded with :func:`load_checkpoint` (strict; the report is
            logged).
        features_only: return a :class:`DATFeatures` (list of stage maps) instead of a classifier.
        out_indices: stages returned when ``features_only``.
        num_classes: classifier outputs (0: no classifier, :meth:`DAT.forward` gives pooled
            features); ignored when ``features_only``.
        allow_pickle: fully unpickle ``weights`` (trusted files only, see :func:`load_checkpoint`).
        **kwargs: override preset settings (``drop_path_rate``, ``img_size``, or a whole config).
    """
    if features_only:
        kwargs.update(features_only=True, out_indices=out_indices)
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_checkpoint(model, weights, allow_pickle=allow_pickle)
    return model

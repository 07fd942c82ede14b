"""DAT and DAT++ backbones, their timm presets, pretrained weights and checkpoint loading.

Names are imported on first use, so that ``import dat_lightning.models.dat`` (the architecture)
pulls in neither the weights downloader nor Lightning. The presets are registered with timm when
:mod:`dat_lightning.models.presets` is imported: by any of its names below (``create_backbone``,
``PRESETS``), by the tasks, or explicitly (``import dat_lightning.models.presets``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "checkpoint": ("CheckpointError", "LoadReport", "load_checkpoint"),
    "dat": ("DAT", "DATFeatures", "DATStage"),
    "official": ("from_official_config", "from_official_dense_config"),
    "official_configs": ("OFFICIAL_CONFIGS", "official_kwargs"),
    "detection": ("DETECTOR_OUT_INDICES", "DATFPNBackbone", "build_detector"),
    "heads": ("FCNHead", "SemanticFPNHead", "UperNetHead"),
    "presets": ("PRESETS", "TEST_CONFIGS", "check_model_name", "create_backbone"),
    "weights": ("WEIGHTS", "PretrainedWeights", "WeightsDownloadError", "get_weights",
                "list_weights"),
}
_OWNER = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_OWNER)


def __getattr__(name: str) -> Any:
    if name not in _OWNER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_OWNER[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

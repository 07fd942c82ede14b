"""DAT and DAT++ backbones (registered with timm on import) and task heads."""

from .dat import DAT, OFFICIAL_CONFIGS, DATFeatures, DATStage, from_official_config, official_kwargs

__all__ = ["DAT", "OFFICIAL_CONFIGS", "DATFeatures", "DATStage", "from_official_config",
           "official_kwargs"]

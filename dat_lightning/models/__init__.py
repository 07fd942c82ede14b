"""DAT and DAT++ backbones and task heads."""

from .dat import DAT, OFFICIAL_CONFIGS, DATStage, from_official_config

__all__ = ["DAT", "OFFICIAL_CONFIGS", "DATStage", "from_official_config"]

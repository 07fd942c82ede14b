"""dat-lightning: fine-tune DAT and DAT++ backbones with PyTorch Lightning."""

from .models import DAT, OFFICIAL_CONFIGS, from_official_config

__version__ = "0.1.0"
__all__ = ["DAT", "OFFICIAL_CONFIGS", "__version__", "from_official_config"]

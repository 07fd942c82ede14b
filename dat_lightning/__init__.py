"""dat-lightning: fine-tune DAT and DAT++ backbones with PyTorch Lightning.

``import dat_lightning`` stays light (the architecture only); ``import dat_lightning.models.presets``
(or using a task or ``create_backbone``) registers the DAT presets with timm.
"""

from .models.dat import DAT
from .models.official_configs import OFFICIAL_CONFIGS

__version__ = "0.1.0"
__all__ = ["DAT", "OFFICIAL_CONFIGS", "__version__"]

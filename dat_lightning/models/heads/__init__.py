"""Dense-prediction decode heads for the multi-scale DAT feature maps."""

from .semantic_fpn import SemanticFPNHead
from .upernet import FCNHead, PyramidPoolingModule, UperNetHead

__all__ = ["FCNHead", "PyramidPoolingModule", "SemanticFPNHead", "UperNetHead"]

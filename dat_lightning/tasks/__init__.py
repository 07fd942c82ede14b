"""LightningModules for fine-tuning DAT / DAT++: the shared base task and the task types."""

from .base import BaseTask
from .classification import ClassificationTask
from .optim import build_lr_scheduler, param_groups, schedule_factor
from .segmentation import SemanticSegmentationTask

__all__ = ["BaseTask", "ClassificationTask", "SemanticSegmentationTask", "build_lr_scheduler",
           "param_groups", "schedule_factor"]

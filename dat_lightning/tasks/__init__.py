"""LightningModules for fine-tuning DAT / DAT++: the shared base task and the task types."""

from .base import BaseTask
from .classification import ClassificationTask
from .detection import ObjectDetectionTask
from .optim import build_lr_scheduler, param_groups, schedule_factor
from .segmentation import SemanticSegmentationTask, sliding_window_logits

__all__ = ["BaseTask", "ClassificationTask", "ObjectDetectionTask", "SemanticSegmentationTask",
           "build_lr_scheduler", "param_groups", "schedule_factor", "sliding_window_logits"]

"""Lightning callbacks: offset statistics and the stability guard for the deformable attention,
checkpointing by the task's metric, and prediction files."""

from .checkpoint import TaskCheckpoint
from .offset_guard import GuardEvent, OffsetGuard, OffsetInstabilityError, OffsetInstabilityWarning
from .prediction_writer import PredictionWriter
from .statistics import OffsetStatistics, deformable_blocks, offset_network_norms, offset_statistics

__all__ = [
    "GuardEvent",
    "OffsetGuard",
    "OffsetInstabilityError",
    "OffsetInstabilityWarning",
    "OffsetStatistics",
    "PredictionWriter",
    "TaskCheckpoint",
    "deformable_blocks",
    "offset_network_norms",
    "offset_statistics",
]

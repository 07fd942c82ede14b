"""Lightning callbacks: offset statistics and the stability guard for the deformable attention,
checkpointing by the task's metric, and prediction files."""

from .checkpoint import TaskCheckpoint
from .offset_guard import GuardEvent, OffsetGuard, OffsetInstabilityError, OffsetInstabilityWarning
from .offset_statistics import OffsetStatistics, offset_network_norms, offset_statistics
from .prediction_writer import PredictionWriter

__all__ = [
    "GuardEvent",
    "OffsetGuard",
    "OffsetInstabilityError",
    "OffsetInstabilityWarning",
    "OffsetStatistics",
    "PredictionWriter",
    "TaskCheckpoint",
    "offset_network_norms",
    "offset_statistics",
]

"""Lightning callbacks: offset statistics and the stability guard for the deformable attention,
checkpointing by the task's metric, and prediction files.

The offset maths they use (block discovery, recording, statistics) is in :mod:`dat_lightning.offsets`.
"""

from dat_lightning.offsets import deformable_blocks, offset_network_norms, offset_statistics

from .checkpoint import AtomicCheckpointIO, SkippedCheckpointWarning, TaskCheckpoint
from .offset_guard import GuardEvent, OffsetGuard, OffsetInstabilityError, OffsetInstabilityWarning
from .prediction_writer import PredictionWriter
from .statistics import OffsetStatistics

__all__ = [
    "AtomicCheckpointIO",
    "GuardEvent",
    "OffsetGuard",
    "OffsetInstabilityError",
    "OffsetInstabilityWarning",
    "OffsetStatistics",
    "PredictionWriter",
    "SkippedCheckpointWarning",
    "TaskCheckpoint",
    "deformable_blocks",
    "offset_network_norms",
    "offset_statistics",
]

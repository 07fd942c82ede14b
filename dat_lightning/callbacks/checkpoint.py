"""Checkpointing that follows each task's own validation metric."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class TaskCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose ``monitor`` defaults to the
    task's validation metric (``checkpoint_monitor`` of the task, e.g. ``("val_acc1", "max")``).

    Give ``monitor``/``mode`` explicitly to track something else; every other argument is
    ModelCheckpoint's (``dirpath``, ``filename``, ``save_last``, ``save_top_k``, ...).
    """

    def __init__(self, monitor: str | None = None, mode: str = "min", **kwargs: Any) -> None:
        super().__init__(monitor=monitor, mode=mode, **kwargs)
        self._monitor_from_task = monitor is None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        target = getattr(pl_module, "checkpoint_monitor", None)
        if self._monitor_from_task and target is not None:
            self.monitor, self.mode = target
            self.kth_value = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
        super().setup(trainer, pl_module, stage)

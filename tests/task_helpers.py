"""Builders shared by the task tests: a task on a tiny DAT and a quiet CPU trainer."""

from __future__ import annotations

from functools import partial
from typing import Any, TypeVar

import torch
from conftest import tiny_dat_kwargs
from lightning.pytorch import Trainer, seed_everything

from dat_lightning.tasks import BaseTask

Task = TypeVar("Task", bound=BaseTask)


def make_task(task_cls: type[Task], num_classes: int, *, generation: str = "v1", lr: float = 2e-3,
              seed: int | None = None, **overrides: Any) -> Task:
    """``task_cls`` on a tiny random-init DAT (``generation`` "v1" or "pp", no drop path), trained
    with AdamW at ``lr``; ``seed`` seeds everything first; ``overrides`` are further task arguments."""
    if seed is not None:
        seed_everything(seed)
    settings = dict(num_classes=num_classes, backbone="dat_tiny",
                    backbone_kwargs=dict(tiny_dat_kwargs(generation, num_classes), drop_path_rate=0.0),
                    optimizer=partial(torch.optim.AdamW, lr=lr))
    return task_cls(**{**settings, **overrides})


def make_trainer(**overrides: Any) -> Trainer:
    """A CPU trainer without logger, progress bar, model summary or checkpoints (unless overridden)."""
    settings = dict(accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False)
    return Trainer(**{**settings, **overrides})

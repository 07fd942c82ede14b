"""Shared LightningModule of the dat-lightning tasks: backbone settings, optimisation and
fine-tuning strategies (layer-wise LR decay, offset-network LR, staged unfreezing)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import OptimizerCallable

from ..models.presets import check_model_name
from .optim import SCHEDULES, build_lr_scheduler, param_groups

__all__ = ["BaseTask"]


class BaseTask(LightningModule, ABC):
    """Base class of the tasks: a DAT backbone plus a task head, trained with per-group LRs.

    Subclasses implement :meth:`configure_models` (and usually :meth:`configure_losses`,
    :meth:`configure_metrics` and the ``*_step`` methods); they take their own arguments and pass
    the shared ones on with ``**kwargs``. Every argument is stored in ``self.hparams`` (except
    ``optimizer``) before the ``configure_*`` methods run.

    The optimizer receives the groups of :func:`~dat_lightning.tasks.optim.param_groups`, so they
    survive any optimizer choice; its LR is the peak LR, which each group scales by its
    ``lr_scale``. The LR follows :func:`~dat_lightning.tasks.optim.build_lr_scheduler`, stepped once
    per optimizer step (correct under gradient accumulation). All groups exist from the start,
    frozen ones with LR 0 and ``requires_grad=False``, so a checkpoint saved before or after an
    unfreeze resumes with matching optimizer state. Each group's LR is logged as
    ``lr_<group name>`` (left to a :class:`~lightning.pytorch.callbacks.LearningRateMonitor`
    when the trainer has one, as the CLI does). Subclasses that override :meth:`configure_optimizers`,
    :meth:`on_train_batch_start` or :meth:`on_train_end` must call ``super()``.

    Args:
        num_classes: number of classes (linked from the datamodule by the CLI).
        backbone: registered DAT preset (``dat_tiny``, ``dat_pp_small``, ...).
        weights: registered weight name (``"dat_tiny.in1k"``), checkpoint path, or None for a
            random initialisation.
        backbone_kwargs: settings that override the preset (``drop_path_rate``, ``img_size``...).
        class_names: optional names of the ``num_classes`` classes, kept in the checkpoint.
        optimizer: optimizer class with its settings, called with the parameter groups; its
            ``lr`` is the peak LR and its ``weight_decay`` applies to the decaying groups.
        lr_schedule: LR decay after the warmup: ``cosine``, ``poly`` or ``constant``.
        warmup_steps: linear LR warmup, in optimizer steps.
        min_lr_ratio: final LR of the decay as a fraction of the peak LR.
        poly_power: exponent of the ``poly`` schedule.
        layer_decay: layer-wise LR decay over the DAT blocks (stem decays most, head 1); 1 = off.
        offset_lr_mult: LR multiplier of the deformable offset networks (``conv_offset``); lower it
            (e.g. 0.1) if the offsets diverge.
        freeze_backbone_epochs: train only the task head for this many epochs (LR 0, no gradients
            in the backbone), then unfreeze.
        unfreeze_warmup_steps: linear LR ramp of a group after it is unfrozen, in optimizer steps.
        freeze_offsets_steps: keep the offset networks frozen for this many optimizer steps.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "dat_tiny",
        weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Literal["cosine", "poly", "constant"] = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        poly_power: float = 1.0,
        layer_decay: float = 1.0,
        offset_lr_mult: float = 1.0,
        freeze_backbone_epochs: int = 0,
        unfreeze_warmup_steps: int = 0,
        freeze_offsets_steps: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is "
                             f"{num_classes}; give one name per class or leave it out")
        counts = dict(warmup_steps=warmup_steps, freeze_backbone_epochs=freeze_backbone_epochs,
                      unfreeze_warmup_steps=unfreeze_warmup_steps,
                      freeze_offsets_steps=freeze_offsets_steps)
        if negative := {k: v for k, v in counts.items() if v < 0}:
            raise ValueError(f"these settings must be >= 0: {negative}")
        check_model_name(backbone)
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {SCHEDULES}")
        self.optimizer_factory = optimizer
        self.save_hyperparameters(ignore=["optimizer"])
        self._frozen: tuple[bool, bool] | None = None
        self._frozen_steps = (0, 0)
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @abstractmethod
    def configure_models(self) -> None:
        """Build the backbone and the task head(s) from ``self.hparams``."""

    def configure_losses(self) -> None:
        """Build the loss function(s) from ``self.hparams``."""

    def configure_metrics(self) -> None:
        """Build ``train_metrics``/``val_metrics``/``test_metrics`` (``MetricCollection`` clones
        with the prefixes ``train_``, ``val_``, ``test_``)."""

    def optimizer_exclude(self) -> tuple[str, ...]:
        """Name prefixes of parameters the optimizer must not receive (e.g. an EMA copy)."""
        return ()

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        """The validation metric that picks the best checkpoint, and ``"min"``/``"max"``."""
        return ("val_loss", "min")

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """Optimizer over :func:`param_groups` and a per-step LR scheduler (see the class doc).

        Raises:
            ValueError: when a freezing option has nothing to freeze, or the run length is
                unknown (an iterable dataset without ``Trainer(max_steps=...)``).
        """
        hp = self.hparams
        groups = param_groups(self, layer_decay=hp.layer_decay, offset_lr_mult=hp.offset_lr_mult,
                              exclude=self.optimizer_exclude())
        if hp.freeze_backbone_epochs and not any(g["backbone"] for g in groups):
            raise ValueError(f"freeze_backbone_epochs={hp.freeze_backbone_epochs} but "
                             f"{type(self).__name__} has no DAT backbone parameters to freeze; "
                             "set freeze_backbone_epochs=0")
        if hp.freeze_offsets_steps and not any(g["offset"] for g in groups):
            raise ValueError(f"freeze_offsets_steps={hp.freeze_offsets_steps} but backbone "
                             f"{hp.backbone!r} has no deformable offset networks (conv_offset); set "
                             "freeze_offsets_steps=0")
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError("the LR schedule needs the run length: set Trainer(max_steps=...) when "
                             "the training dataloader has no length")
        backbone_steps = 0
        if hp.freeze_backbone_epochs:
            batches = self.trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError("freeze_backbone_epochs needs a training dataloader with a length")
            steps_per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
            backbone_steps = hp.freeze_backbone_epochs * steps_per_epoch
        self._frozen_steps = (backbone_steps, hp.freeze_offsets_steps)
        optimizer = self.optimizer_factory(groups)
        scheduler = build_lr_scheduler(
            optimizer, int(total_steps), schedule=hp.lr_schedule, warmup_steps=hp.warmup_steps,
            min_lr_ratio=hp.min_lr_ratio, poly_power=hp.poly_power,
            backbone_frozen_steps=backbone_steps, offset_frozen_steps=hp.freeze_offsets_steps,
            unfreeze_warmup_steps=hp.unfreeze_warmup_steps)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _set_frozen(self, backbone: bool, offsets: bool) -> None:
        """Set ``requires_grad`` of every optimized parameter for the given freezing state."""
        for group in self.trainer.optimizers[0].param_groups:
            frozen = (backbone and group.get("backbone")) or (offsets and group.get("offset"))
            for param in group["params"]:
                param.requires_grad_(not frozen)
        self._frozen = (backbone, offsets)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Freeze or unfreeze for the current optimizer step and log each group's LR."""
        step = self.trainer.global_step
        state = (step < self._frozen_steps[0], step < self._frozen_steps[1])
        if state != self._frozen:
            self._set_frozen(*state)
        if not any(isinstance(cb, LearningRateMonitor) for cb in self.trainer.callbacks):
            groups = self.trainer.optimizers[0].param_groups
            self.log_dict({f"lr_{g['name']}": g["lr"] for g in groups}, on_step=True,
                          on_epoch=False)

    def on_train_end(self) -> None:
        """Leave every parameter trainable after fitting."""
        if self._frozen is not None:
            self._set_frozen(False, False)

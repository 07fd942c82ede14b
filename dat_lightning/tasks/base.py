"""Shared LightningModule of the dat-lightning tasks: backbone settings, optimisation and
fine-tuning strategies (layer-wise LR decay, offset-network LR, staged unfreezing)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MetricCollection

from ..models.presets import check_model_name
from .optim import SCHEDULES, build_lr_scheduler, param_groups

__all__ = ["WARMUP_SHARE", "BaseTask", "EvaluationOutputs"]

#: Share of a run's optimizer steps above which the LR warm-ups trigger a warning.
WARMUP_SHARE = 1 / 3


def _steps_of_run(value: int | float, total_steps: int) -> int:
    """Optimizer steps of a warm-up setting: ``value`` steps, or that share of ``total_steps`` when
    ``value`` is below 1."""
    return round(value * total_steps) if value < 1 else int(value)


class EvaluationOutputs(NamedTuple):
    """What a task computes on one validation or test batch (see :meth:`BaseTask.evaluation_outputs`)."""

    #: predictions, as the task's metrics take them.
    preds: Any
    #: targets, as the task's metrics take them.
    target: Any
    #: the batch's loss, logged as ``val_loss`` / ``test_loss``; None when the task has none.
    loss: torch.Tensor | None
    #: number of samples in the batch.
    batch_size: int


class BaseTask(LightningModule, ABC):
    """Base class of the tasks: a DAT backbone plus a task head, trained with per-group LRs.

    Subclasses implement :meth:`configure_models`, which builds ``self.model`` (called by
    :meth:`forward`), usually :meth:`configure_losses` and :meth:`configure_metrics`, and
    :meth:`training_step`, :meth:`evaluation_outputs` (shared by :meth:`validation_step` and
    :meth:`test_step`) and :meth:`predict_step`; they take their own arguments and pass the shared
    ones on with ``**kwargs``. Every argument is stored in ``self.hparams`` (except ``optimizer``)
    before the ``configure_*`` methods run.

    The optimizer receives the groups of :func:`~dat_lightning.tasks.optim.param_groups`, so they
    survive any optimizer choice; its LR is the peak LR, which each group scales by its
    ``lr_scale``. The LR follows :func:`~dat_lightning.tasks.optim.build_lr_scheduler`, stepped once
    per optimizer step (correct under gradient accumulation). All groups exist from the start,
    frozen ones with LR 0 and ``requires_grad=False``, so a checkpoint saved before or after an
    unfreeze resumes with matching optimizer state. Each group's LR is logged at every step as
    ``lr_<group name>`` (e.g. ``lr_backbone_decay``), also when the trainer has a
    :class:`~lightning.pytorch.callbacks.LearningRateMonitor` of its own. Subclasses that
    override :meth:`configure_optimizers`, :meth:`on_train_batch_start` or :meth:`on_train_end`
    must call ``super()``.

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
        warmup_steps: linear LR warmup: optimizer steps, or a share of the run's optimizer steps
            when below 1 (``0.05``: the first 5 %). A warning says when the warm-ups take more
            than a third of a run over the whole training set (runs cut short by ``max_steps``,
            ``limit_train_batches`` or ``fast_dev_run`` are not checked).
        min_lr_ratio: final LR of the decay as a fraction of the peak LR.
        poly_power: exponent of the ``poly`` schedule.
        layer_decay: layer-wise LR decay over the DAT blocks (stem decays most, head 1); 1 = off.
        offset_lr_mult: LR multiplier of the deformable offset networks (``conv_offset``); lower it
            (e.g. 0.1) if the offsets diverge.
        freeze_backbone_epochs: train only the task head for this many epochs (LR 0, no gradients
            in the backbone), then unfreeze.
        unfreeze_warmup_steps: linear LR ramp of a group after it is unfrozen: optimizer steps, or a
            share of the run when below 1 (as ``warmup_steps``).
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
        warmup_steps: int | float = 0,
        min_lr_ratio: float = 0.0,
        poly_power: float = 1.0,
        layer_decay: float = 1.0,
        offset_lr_mult: float = 1.0,
        freeze_backbone_epochs: int = 0,
        unfreeze_warmup_steps: int | float = 0,
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
        """Build ``self.model`` (backbone and task head(s)) from ``self.hparams``."""

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

    # --- forward and evaluation ------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``self.model`` on the inputs (see each task for what it returns)."""
        return self.model(*args, **kwargs)

    @abstractmethod
    def evaluation_outputs(self, batch: Any) -> EvaluationOutputs:
        """Predictions, targets, loss and size of one validation or test batch."""

    def _evaluate(self, batch: Any, split: Literal["val", "test"]) -> None:
        preds, target, loss, batch_size = self.evaluation_outputs(batch)
        metrics = self.val_metrics if split == "val" else self.test_metrics
        metrics.update(preds, target)
        if loss is not None:
            self.log(f"{split}_loss", loss, prog_bar=split == "val", batch_size=batch_size,
                     sync_dist=True)
        self.log_evaluation_metrics(metrics, split, batch_size)

    def log_evaluation_metrics(self, metrics: MetricCollection, split: Literal["val", "test"],
                               batch_size: int) -> None:
        """Log the updated metric collection (Lightning computes it when the epoch ends)."""
        self.log_dict(metrics, prog_bar=split == "val", batch_size=batch_size)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Loss and metrics of :meth:`evaluation_outputs` on one batch."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Loss and metrics of :meth:`evaluation_outputs` on one batch."""
        self._evaluate(batch, "test")

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
        total_steps = int(total_steps)
        warmup = _steps_of_run(hp.warmup_steps, total_steps)
        unfreeze_warmup = _steps_of_run(hp.unfreeze_warmup_steps, total_steps) if backbone_steps else 0
        trainer = self.trainer
        shortened = trainer.fast_dev_run or trainer.max_steps != -1 or trainer.limit_train_batches != 1.0
        if not shortened and warmup + unfreeze_warmup > WARMUP_SHARE * total_steps:
            rank_zero_warn(
                f"the LR warm-ups (warmup_steps={hp.warmup_steps}, unfreeze_warmup_steps="
                f"{hp.unfreeze_warmup_steps}) take {warmup + unfreeze_warmup} of this run's "
                f"{total_steps} optimizer steps, so the LR stays below its peak for most of the run; "
                "give them as a share of the run (e.g. warmup_steps: 0.05) or lower them")
        optimizer = self.optimizer_factory(groups)
        scheduler = build_lr_scheduler(
            optimizer, total_steps, schedule=hp.lr_schedule, warmup_steps=warmup,
            min_lr_ratio=hp.min_lr_ratio, poly_power=hp.poly_power,
            backbone_frozen_steps=backbone_steps, offset_frozen_steps=hp.freeze_offsets_steps,
            unfreeze_warmup_steps=_steps_of_run(hp.unfreeze_warmup_steps, total_steps))
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
        groups = self.trainer.optimizers[0].param_groups
        self.log_dict({f"lr_{g['name']}": g["lr"] for g in groups}, on_step=True, on_epoch=False)

    def on_train_end(self) -> None:
        """Leave every parameter trainable after fitting."""
        if self._frozen is not None:
            self._set_frozen(False, False)

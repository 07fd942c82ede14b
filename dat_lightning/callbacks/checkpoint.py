"""Checkpointing that follows each task's own validation metric, keeps ``last.ckpt`` the latest
state, and never writes a truncated or non-finite checkpoint."""

from __future__ import annotations

import os
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from .offset_guard import OffsetGuard

__all__ = ["AtomicCheckpointIO", "SkippedCheckpointWarning", "TaskCheckpoint"]

#: Suffix of the temporary file a checkpoint is written to before it is renamed.
TEMP_SUFFIX = ".partial"


class SkippedCheckpointWarning(UserWarning):
    """Warned by :class:`TaskCheckpoint` when it refuses to write a checkpoint of a non-finite state."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`~lightning.fabric.plugins.io.TorchCheckpointIO` that writes a local checkpoint to
    ``<name>.partial`` in the checkpoint's own folder, flushes it to disk (``fsync``) and renames
    it over ``<name>``: a kill during the write leaves the previous file intact (and at most a
    ``.partial`` file, which :class:`TaskCheckpoint` removes at the next start), also when the
    folder is on another filesystem than the system temp dir. Remote paths use Lightning's save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + TEMP_SUFFIX)
        try:
            with open(temp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


class TaskCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` for the dat-lightning tasks.

    * ``monitor="auto"`` tracks the task's validation metric (``checkpoint_monitor`` of the
      task, e.g. ``("val_acc1", "max")``) and ``mode="auto"`` takes its direction; give them
      explicitly to track something else (``mode="auto"`` is then ``"min"``). File names carry
      the monitored value: ``epoch=3-step=120-val_acc1=0.9812.ckpt``.
    * With ``save_last``, ``last.ckpt`` is written at every checkpoint trigger (every
      ``every_n_train_steps`` steps, ``train_time_interval`` or ``every_n_epochs`` epochs; before
      or after the first validation; improved or not) and whenever the best checkpoint changes,
      so it always holds the latest state and, in its callback state, ``best_model_path`` and
      ``best_model_score``. The best ``save_top_k`` checkpoints are chosen by the monitor
      independently (saved once the monitored metric exists).
    * No checkpoint of a state with a NaN/inf parameter, buffer or optimizer state is written: the
      save is skipped with a :class:`SkippedCheckpointWarning` naming the step, and the previous
      ``last.ckpt`` stays. An :class:`~dat_lightning.callbacks.OffsetGuard` in ``"stop"`` mode is
      asked before every save.
    * Local checkpoints are written atomically (:class:`AtomicCheckpointIO`); stale ``.partial``
      files of a killed run are removed at the start of ``fit``, and the folder is checked to be
      writable before training starts.

    The other arguments are ModelCheckpoint's.

    Args:
        dirpath: checkpoint folder; default ``<log dir>/checkpoints``.
        filename: file name pattern; default ``{epoch}-{step}-{<monitor>:.4f}`` (``{epoch}-{step}``
            without a monitor).
        monitor: metric that picks the best checkpoints; ``"auto"``: the task's metric; ``None``:
            keep the latest.
        verbose: log each save decision.
        save_last: write ``last.ckpt`` at every trigger; ``"link"`` makes it a symbolic link to the
            latest top-k file instead (ModelCheckpoint's meaning: the latest state only when every
            trigger saves a top-k file, e.g. ``save_top_k=-1``).
        save_top_k: number of best checkpoints kept (-1: all, 0: none).
        save_on_exception: also save when training raises.
        save_weights_only: save only the model weights.
        mode: ``"min"``/``"max"``; ``"auto"``: the task's direction for its metric.
        auto_insert_metric_name: write ``name=value`` into file names.
        every_n_train_steps: save every this many optimizer steps.
        train_time_interval: save every this much training time.
        every_n_epochs: save every this many epochs (the default, 1, when no trigger is given).
        save_on_train_epoch_end: save at train-epoch end rather than validation end.
        enable_version_counter: add ``-v1``... when a file name exists already.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 monitor: str | None = "auto", verbose: bool = False,
                 save_last: bool | Literal["link"] | None = None, save_top_k: int = 1,
                 save_on_exception: bool = False, save_weights_only: bool = False,
                 mode: Literal["auto", "min", "max"] = "auto", auto_insert_metric_name: bool = True,
                 every_n_train_steps: int | None = None, train_time_interval: timedelta | None = None,
                 every_n_epochs: int | None = None, save_on_train_epoch_end: bool | None = None,
                 enable_version_counter: bool = True) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"TaskCheckpoint: mode must be 'auto', 'min' or 'max', got {mode!r}")
        super().__init__(dirpath=dirpath, filename=filename, monitor=None if monitor == "auto" else monitor,
                         verbose=verbose, save_last=save_last, save_top_k=save_top_k,
                         save_on_exception=save_on_exception, save_weights_only=save_weights_only,
                         mode="min" if mode == "auto" else mode,
                         auto_insert_metric_name=auto_insert_metric_name,
                         every_n_train_steps=every_n_train_steps, train_time_interval=train_time_interval,
                         every_n_epochs=every_n_epochs, save_on_train_epoch_end=save_on_train_epoch_end,
                         enable_version_counter=enable_version_counter)
        self._auto_monitor, self._auto_mode = monitor == "auto", mode == "auto"
        self._auto_filename = filename is None
        self._step_interval = every_n_train_steps or 0
        self._time_interval = train_time_interval
        self._epoch_interval = self.every_n_epochs or 0
        self._last_time: float | None = None
        self._checked: tuple[int, str | None] | None = None
        self._last_written_step = -1

    # --- setup -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        target = getattr(pl_module, "checkpoint_monitor", None)
        if target is not None and (self._auto_monitor or self.monitor == target[0]):
            self.monitor = target[0]
            if self._auto_mode:
                self.mode = target[1]
        if self._auto_filename:
            self.filename = "{epoch}-{step}" + (f"-{{{self.monitor}:.4f}}" if self.monitor else "")
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        local = self.dirpath is not None and _is_local_file_protocol(self.dirpath)
        if stage == "fit" and trainer.is_global_zero and local:
            self._prepare_dir(Path(self.dirpath))

    @staticmethod
    def _prepare_dir(dirpath: Path) -> None:
        """Check that ``dirpath`` takes files and remove ``.partial`` files of a killed run."""
        probe = dirpath / f".write-probe{TEMP_SUFFIX}"
        try:
            dirpath.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise OSError(f"TaskCheckpoint cannot write checkpoints to {str(dirpath)!r} "
                          f"({err.strerror or err}); set checkpoint.dirpath (--checkpoint.dirpath) to a "
                          "writable folder") from err
        for stale in dirpath.glob(f"*.ckpt{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_time = time.monotonic()

    # --- the invariant: no non-finite or guard-rejected state reaches disk -----------------------
    def _unsafe_state(self, trainer: pl.Trainer) -> str | None:
        """What in the current state is non-finite (``None`` when all is finite); once per step."""
        step = trainer.global_step
        if self._checked is not None and self._checked[0] == step:
            return self._checked[1]
        for callback in trainer.callbacks:
            if isinstance(callback, OffsetGuard):
                callback.approve_save(trainer, trainer.lightning_module)
        found = _first_non_finite(trainer)
        if trainer.strategy.reduce_boolean_decision(found is not None, all=False):
            found = found or "a tensor on another process"
        self._checked = (step, found)
        if found is not None:
            kept = (f"the previous checkpoint {self.last_model_path!r} stays the latest"
                    if self.last_model_path else "no earlier checkpoint of this run exists")
            warnings.warn(f"TaskCheckpoint: not writing any checkpoint of step {step}: {found} is NaN/inf; "
                          f"{kept}. Lower the learning rate, enable gradient clipping "
                          "(trainer.gradient_clip_val) or check the inputs of this step.",
                          SkippedCheckpointWarning, stacklevel=2)
        return found

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if self.save_top_k and self._unsafe_state(trainer) is None:
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self._unsafe_state(trainer) is None:
            super()._save_checkpoint(trainer, filepath)

    # --- last.ckpt at every trigger ------------------------------------------------------------
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        """ModelCheckpoint calls this only after a top-k save; :meth:`_write_last` replaces it."""

    def _write_last(self, trainer: pl.Trainer) -> None:
        if not self.save_last or self._skipped(trainer) or self._unsafe_state(trainer) is not None:
            return
        super()._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_written_step = trainer.global_step

    @staticmethod
    def _skipped(trainer: pl.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING

    def _epoch_trigger(self, trainer: pl.Trainer) -> bool:
        return self._epoch_interval >= 1 and (trainer.current_epoch + 1) % self._epoch_interval == 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        best = self.best_model_path
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step_trigger = self._step_interval >= 1 and trainer.global_step % self._step_interval == 0
        time_trigger = False
        if self._time_interval is not None and self._last_time is not None:
            time_trigger = time.monotonic() - self._last_time >= self._time_interval.total_seconds()
            time_trigger = bool(trainer.strategy.broadcast(time_trigger))
            if time_trigger:
                self._last_time = time.monotonic()
        if step_trigger or time_trigger or self.best_model_path != best:
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = self.best_model_path
        super().on_train_epoch_end(trainer, pl_module)
        on_epoch_end = self._should_save_on_train_epoch_end(trainer)
        if (on_epoch_end and self._epoch_trigger(trainer)) or self.best_model_path != best:
            self._write_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = self.best_model_path
        super().on_validation_end(trainer, pl_module)
        on_epoch_end = self._should_save_on_train_epoch_end(trainer)
        if (not on_epoch_end and self._epoch_trigger(trainer)) or self.best_model_path != best:
            self._write_last(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        saving = self._should_save_on_exception(trainer)
        super().on_exception(trainer, pl_module, exception)
        if saving:
            self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_written_step != trainer.global_step:
            self._write_last(trainer)


def _first_non_finite(trainer: pl.Trainer) -> str | None:
    """Name of the first NaN/inf floating tensor among the module's state and the optimizers'
    states, or ``None``. One device sync per device unless something is non-finite."""
    module = trainer.lightning_module
    names = {id(p): n for n, p in module.named_parameters()}
    named = [(f"parameter/buffer {n!r}", t) for n, t in module.state_dict(keep_vars=True).items()]
    for i, optimizer in enumerate(trainer.optimizers):
        for param, state in optimizer.state.items():
            named += [(f"optimizer {i} state {key!r} of {names.get(id(param), 'a parameter')!r}", v)
                      for key, v in state.items()]
    named = [(n, t.detach()) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point()]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, t in named:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return None
    return next(n for n, t in named if not bool(torch.isfinite(t).all()))

"""The ``lightning`` / ``dat-lightning`` / ``python -m dat_lightning`` command line.

A :class:`~lightning.pytorch.cli.LightningCLI` in subclass mode over the tasks in
:mod:`dat_lightning.tasks` and the datamodules in :mod:`datamodules`::

    lightning fit --config recipes/digits_dat.yaml
    lightning fit --config recipes/cifar_dat.yaml --trainer.devices 4
    lightning fit --config recipes/digits_dat.yaml --ckpt_path last      # resume
    lightning test --config recipes/digits_dat.yaml --ckpt_path best
    lightning predict --config recipes/digits_dat.yaml --ckpt_path best

Each run writes into its own folder, ``<logger save_dir>/<name>/version_<n>/`` (TensorBoard logs,
``config.yaml``, ``checkpoints/``, ``predictions/``). ``--ckpt_path last`` and ``--ckpt_path best``
work in any later process, for every subcommand: ``last`` is the newest ``last.ckpt`` of the
recipe's runs (or of a fixed ``checkpoint.dirpath``), ``best`` the best checkpoint recorded in it.
A ``fit`` resumed from ``last`` continues in that run's folder. Every run ends with a short
summary of where its logs, checkpoints and predictions are.

``num_classes`` and ``class_names`` are linked from the datamodule into the task. Every run gets
the default callbacks below, each configurable from a recipe under its own key (for example
``checkpoint.save_top_k``, ``offset_guard.action``):

============================  =================================================================
``checkpoint``                best (by the task's validation metric) and last checkpoints
``offset_statistics``         deformable-offset statistics and sampling-point images
``offset_guard``              stability guard on the offsets (warns by default)
``prediction_writer``         ``predict`` outputs to CSV / PNG masks / COCO-style JSON
============================  =================================================================

The tasks log the learning rate of every parameter group themselves (``lr_<group>``).

An error raised while the config is turned into objects (unknown backbone, missing weights,
missing dataset, ...) is shown as one short message naming the config section; set the
environment variable ``DAT_LIGHTNING_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from dat_lightning.datamodules_import import import_datamodules

datamodules = import_datamodules()  # the project's, also when run from a project with its own

from dat_lightning.callbacks import OffsetGuard, OffsetStatistics, PredictionWriter, TaskCheckpoint  # noqa: E402
from dat_lightning.tasks import BaseTask  # noqa: E402

__all__ = ["ConfigError", "DATLightningCLI", "cli", "find_checkpoint", "main"]

#: Environment variable that makes the CLI show full tracebacks of configuration errors.
DEBUG_ENV = "DAT_LIGHTNING_DEBUG"
#: The recipe keys of the default callbacks and their classes.
DEFAULT_CALLBACKS: dict[str, type[Callback]] = {
    "checkpoint": TaskCheckpoint,
    "offset_statistics": OffsetStatistics,
    "offset_guard": OffsetGuard,
    "prediction_writer": PredictionWriter,
}
#: Modules whose errors are about the ``weights`` setting.
_WEIGHTS_MODULES = ("dat_lightning.models.weights", "dat_lightning.models.checkpoint")


class ConfigError(RuntimeError):
    """The config could not be turned into objects; the message says what, where and what to do
    (the original error is the ``__cause__``)."""


def default_precision() -> str:
    """bf16 mixed precision on GPUs that support it, full precision elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _last_in(directory: Path) -> list[Path]:
    return [p for p in directory.glob("last*.ckpt") if p.is_file()]


def find_checkpoint(which: str, checkpoint_dirs: list[Path]) -> Path:
    """The newest ``last.ckpt`` in ``checkpoint_dirs`` (``which="last"``), or the best checkpoint
    recorded in it by its ``ModelCheckpoint`` (``which="best"``).

    Raises:
        FileNotFoundError: when there is no such checkpoint; the message says where it looked.
    """
    candidates = [p for d in checkpoint_dirs for p in _last_in(d)]
    looked = ", ".join(str(d) for d in checkpoint_dirs) or "(no checkpoint folder configured)"
    if not candidates:
        raise FileNotFoundError(f"--ckpt_path {which}: no last.ckpt under {looked}; run `fit` with "
                                "this recipe first, or pass the path of a .ckpt file")
    last = max(candidates, key=lambda p: p.stat().st_mtime)
    if which == "last":
        return last
    states = torch.load(last, map_location="cpu", mmap=True, weights_only=True).get("callbacks", {})
    recorded = [s["best_model_path"] for s in states.values()
                if isinstance(s, dict) and s.get("best_model_path")]
    if not recorded:
        raise FileNotFoundError(f"--ckpt_path best: {last} records no best checkpoint (the run has not "
                                "validated yet); use --ckpt_path last, or pass a .ckpt path")
    best = Path(recorded[0])
    if not best.is_file():
        raise FileNotFoundError(f"--ckpt_path best: {last} names {best} as the best checkpoint, but "
                                "that file is gone; pass another .ckpt path or --ckpt_path last")
    return best


def _error_source(exc: BaseException, sections: dict[str, type]) -> str | None:
    """The config section (``model``, ``data``, ``checkpoint``...) whose class raised ``exc``: the
    outermost traceback frame that runs a method of one of ``sections``' classes."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        for key, cls in sections.items():
            if isinstance(owner, cls):
                return key
    return None


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception of the chain (``raise ... from`` and implicit chaining)."""
    while True:
        earlier = exc.__cause__ if exc.__suppress_context__ else exc.__cause__ or exc.__context__
        if earlier is None:
            return exc
        exc = earlier


def _is_weights_error(exc: BaseException) -> bool:
    return any(frame.f_globals.get("__name__") in _WEIGHTS_MODULES
               for frame, _ in traceback.walk_tb(exc.__traceback__))


class DATLightningCLI(LightningCLI):
    """LightningCLI with the toolkit's links, default callbacks, per-run folders, ``--ckpt_path
    best``/``last`` from earlier processes, short configuration errors and an end-of-run summary."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes",
                              apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names",
                              apply_on="instantiate")
        for key, callback in DEFAULT_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key)
        parser.set_defaults({"checkpoint.save_last": True})

    # --- where the runs are ------------------------------------------------------------------
    @property
    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def _logger_init_args(self) -> Any:
        """``init_args`` of the configured logger when it has a ``save_dir`` (TensorBoard, CSV)."""
        logger = self._subconfig.trainer.logger
        if isinstance(logger, list):
            logger = logger[0] if logger else None
        init_args = getattr(logger, "init_args", None)
        return init_args if getattr(init_args, "save_dir", None) is not None else None

    def checkpoint_dirs(self) -> list[Path]:
        """Folders whose ``last.ckpt`` ``--ckpt_path last`` considers: a fixed
        ``checkpoint.dirpath``, else ``<save_dir>/<name>/<version>/checkpoints`` of every run."""
        config = self._subconfig
        if config.checkpoint.dirpath:
            return [Path(config.checkpoint.dirpath)]
        init_args = self._logger_init_args()
        if init_args is None:
            return [Path(config.trainer.default_root_dir or ".") / "checkpoints"]
        root = Path(init_args.save_dir) / (init_args.name or "")
        return sorted(p for p in root.glob("*/checkpoints") if p.is_dir())

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path last``/``best`` to a file; a resumed ``fit`` logs into the folder
        of the run it continues, and validate/test/predict keep the checkpoint's folder as
        ``checkpoint.dirpath`` (they write no checkpoint; its restored state stays whole)."""
        config = self._subconfig
        which = config.get("ckpt_path")
        if which in ("last", "best"):
            self._resolve_ckpt_path(which)
        if config.get("ckpt_path") and self.subcommand != "fit" and not config.checkpoint.dirpath:
            config.checkpoint.dirpath = str(Path(config.ckpt_path).parent)

    def _resolve_ckpt_path(self, which: str) -> None:
        config = self._subconfig
        try:
            path = find_checkpoint(which, self.checkpoint_dirs())
        except FileNotFoundError as exc:
            if self.subcommand == "fit" and which == "last":
                print(f"{exc}. Starting a new run.", file=sys.stderr)
                config.ckpt_path = None
                return
            raise ConfigError(f"error: {exc}") from None
        config.ckpt_path = str(path)
        init_args = self._logger_init_args()
        if (self.subcommand == "fit" and which == "last" and init_args is not None
                and not config.checkpoint.dirpath and hasattr(init_args, "version")):
            init_args.version = path.parent.parent.name

    # --- errors ------------------------------------------------------------------------------
    def instantiate_classes(self) -> None:
        """Build the objects; an error becomes a :class:`ConfigError` with the project's message,
        the config section and file, and what to do."""
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except Exception as exc:
            raise self._config_error(exc) from exc

    def _config_error(self, exc: Exception, key: str | None = None,
                      failed: str = "could not be built") -> ConfigError:
        """The :class:`ConfigError` for ``exc``, raised by config section ``key`` (None: found
        from the traceback)."""
        root = _root_cause(exc)
        config = self._subconfig
        sections: dict[str, type] = {"model": LightningModule, "data": LightningDataModule,
                                     "trainer.logger": Logger, **DEFAULT_CALLBACKS,
                                     "trainer.callbacks": Callback, "trainer": Trainer}
        key = key or _error_source(root, sections)
        class_path = getattr(config.get(key), "class_path", None) if key else None
        where = f"`{key}`" + (f" ({class_path})" if class_path else "") if key else "the config"
        files = [str(getattr(p, "relative", p)) for p in (config.get("config") or [])]
        origin = f" of {', '.join(files)}" if files else ""
        lines = [f"error: {where}{origin} {failed}:", f"  {type(root).__name__}: {root}"]
        if _is_weights_error(root):
            lines.append("  To train from scratch instead, set `weights: null` (on the command line: "
                         "--model.init_args.weights null); see the README's \"Training from scratch\".")
        override = f"--{key}.init_args.<name>" if class_path else f"--{key or 'model'}.<name>"
        lines.append(f"  Fix the value in the recipe or override it on the command line ({override} "
                     f"VALUE). For the full traceback set {DEBUG_ENV}=1.")
        return ConfigError("\n".join(lines))

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; an error raised by the datamodule's ``prepare_data`` or ``setup``
        (a missing dataset folder, an unreadable file) is a :class:`ConfigError` of ``data``."""
        try:
            super()._run_subcommand(subcommand)
        except Exception as exc:
            root = _root_cause(exc)
            if not any(isinstance(frame.f_locals.get("self"), LightningDataModule)
                       and frame.f_code.co_name in ("prepare_data", "setup")
                       for frame, _ in traceback.walk_tb(root.__traceback__)):
                raise
            raise self._config_error(exc, "data", failed="could not be set up") from exc

    # --- end-of-run summary ------------------------------------------------------------------
    def _print_summary(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        lines = [f"\n{self.subcommand} finished."]
        if trainer.log_dir:
            lines.append(f"  run folder:   {trainer.log_dir}")
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if loggers:
            lines.append(f"  logs:         tensorboard --logdir {loggers[0].root_dir}")
        ckpt_path = self._subconfig.get("ckpt_path")
        if ckpt_path and self.subcommand != "fit":
            lines.append(f"  weights from: {ckpt_path}")
        checkpoint = trainer.checkpoint_callback
        if self.subcommand == "fit" and isinstance(checkpoint, ModelCheckpoint):
            if checkpoint.best_model_path:
                score = checkpoint.best_model_score
                scored = f" ({checkpoint.monitor} {float(score):.4f})" if score is not None else ""
                lines.append(f"  best:         {checkpoint.best_model_path}{scored}")
            if checkpoint.last_model_path:
                lines.append(f"  last:         {checkpoint.last_model_path}")
        writers = [cb for cb in trainer.callbacks if isinstance(cb, PredictionWriter)]
        if self.subcommand == "predict" and writers:
            folder = Path(writers[0].output_dir or Path(trainer.log_dir or trainer.default_root_dir)
                          / "predictions")
            for path in sorted(folder.glob("*")):
                lines.append(f"  predictions:  {path}")
        print("\n".join(lines))

    def after_fit(self) -> None:
        """Print where the logs and checkpoints are."""
        self._print_summary()

    def after_validate(self) -> None:
        """Print where the logs are."""
        self._print_summary()

    def after_test(self) -> None:
        """Print where the logs are."""
        self._print_summary()

    def after_predict(self) -> None:
        """Print where the predictions are."""
        self._print_summary()


def cli(args: list[str] | None = None, run: bool = True) -> DATLightningCLI:
    """Build (and with ``run``, execute) the CLI; ``args`` defaults to the command line.

    Raises:
        ConfigError: when the config cannot be turned into objects.
    """
    return DATLightningCLI(
        model_class=BaseTask,
        datamodule_class=datamodules.BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults={"precision": default_precision()},
        args=args,
        run=run,
    )


def main() -> None:
    """Entry point of the ``lightning`` and ``dat-lightning`` console scripts: a configuration
    error is printed alone (full traceback with ``DAT_LIGHTNING_DEBUG=1``) and exits with status 1."""
    try:
        cli()
    except ConfigError as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(exc, file=sys.stderr)
        sys.exit(1)

"""The ``lightning`` / ``dat-lightning`` / ``python -m dat_lightning`` command line.

A :class:`~lightning.pytorch.cli.LightningCLI` in subclass mode over the tasks in
:mod:`dat_lightning.tasks` and the datamodules in :mod:`datamodules`::

    lightning fit --config recipes/digits_dat.yaml
    lightning fit --config recipes/cifar_dat.yaml --trainer.devices 4
    lightning fit --config recipes/digits_dat.yaml --ckpt_path last      # resume
    lightning predict --config recipes/digits_dat.yaml --ckpt_path best

``num_classes`` and ``class_names`` are linked from the datamodule into the task. Every run gets
the default callbacks below, each configurable from a recipe under its own key (for example
``checkpoint.monitor``, ``offset_guard.action``):

============================  =================================================================
``checkpoint``                best (by the task's validation metric) and last checkpoints
``lr_monitor``                learning rate of every parameter group
``offset_statistics``         deformable-offset statistics and sampling-point images
``offset_guard``              stability guard on the offsets (warns by default)
``prediction_writer``         ``predict`` outputs to CSV / PNG masks / COCO-style JSON
============================  =================================================================
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dat_lightning.datamodules_import import import_datamodules

datamodules = import_datamodules()  # the project's, also when run from a project with its own

from dat_lightning.callbacks import OffsetGuard, OffsetStatistics, PredictionWriter, TaskCheckpoint  # noqa: E402
from dat_lightning.tasks import BaseTask  # noqa: E402


def default_precision() -> str:
    """bf16 mixed precision on GPUs that support it, full precision elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class DATLightningCLI(LightningCLI):
    """LightningCLI with the toolkit's links and default callbacks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes",
                              apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names",
                              apply_on="instantiate")
        parser.add_lightning_class_args(TaskCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(OffsetStatistics, "offset_statistics")
        parser.add_lightning_class_args(OffsetGuard, "offset_guard")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.set_defaults({"checkpoint.save_last": True, "lr_monitor.logging_interval": "step"})


def cli(args: list[str] | None = None, run: bool = True) -> DATLightningCLI:
    """Build (and with ``run``, execute) the CLI; ``args`` defaults to the command line."""
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
    """Entry point of the ``lightning`` and ``dat-lightning`` console scripts."""
    cli()

"""The callback that logs statistics of the deformable blocks' sampling offsets.

:class:`OffsetStatistics` turns on offset recording (:func:`dat_lightning.offsets.recording`) only
for the training steps it measures (every ``every_n_steps`` optimizer steps) and for the first
validation batch of each validation epoch, so the model runs at full speed otherwise.

Metric names (``<split>`` is ``train`` or ``val``; ``<block>`` is the block key, the module path
from ``stages.`` on, e.g. ``stages.2.attns.1``; stages are numbered from 0 like the modules)::

    offsets/<split>/<block>/<stat>
    offsets/<split>/stage<i>/<stat>     # only for stages with several deformable blocks

``<stat>`` is one of the statistics of :mod:`dat_lightning.offsets` (``mean_abs_cells``,
``saturated``, ``spread``, ...; the ``*_px`` ones are left out when the batch holds no image
tensor), ``attn_entropy`` (with ``attention_entropy=True``) and, for training steps,
``grad_norm`` (L2 norm of the offset network's gradients, before clipping) and ``weight_norm``.

A block whose feature map is a single cell at the run's input size (e.g. the last stage at
32 px) is *inactive*: its offsets change nothing and get no gradient. It is left out of the
metrics and figures, with one log line naming it.

Values go to every logger of the trainer through ``Logger.log_metrics`` at step
``trainer.global_step``, so TensorBoard, CSV, W&B and MLflow all receive them. With
``log_images=True`` the callback also draws the sampling points over a few fixed validation
images at each validation epoch end (see :mod:`dat_lightning.visualization`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from dat_lightning.models.layers.deformable_attention import DeformableAttention, DeformableRecord
from dat_lightning.offsets import (
    batch_images,
    deformable_blocks,
    inactive,
    input_size_from_batch,
    offset_network_norms,
    offset_statistics,
    record_sampling,
    recording,
    stage_of,
)
from dat_lightning.visualization import draw_sampling_points
from datamodules.plotting import denormalize

__all__ = ["OffsetRecorder", "OffsetStatistics"]


class OffsetRecorder(Callback):
    """Base of the offset callbacks: records offsets on every ``every_n_steps``-th training step.

    Recording is turned on in ``on_train_batch_start`` of a measured step and restored at its
    batch end. Subclasses read the records in ``on_before_optimizer_step`` (forward and backward
    are done, the update is not) when :meth:`is_measured_step` says so.
    """

    def __init__(self, every_n_steps: int, record_attention: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"{type(self).__name__}: every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._record_attention = record_attention
        self._blocks: list[tuple[str, DeformableAttention]] | None = None
        self._measured_step = -1
        self._taken_step = -1
        self._recording = ExitStack()
        self._input_size: tuple[int, int] | None = None
        self._warned_inactive: set[str] = set()

    def blocks(self, pl_module: pl.LightningModule) -> list[tuple[str, DeformableAttention]]:
        """The module's deformable blocks (found once); warns once when there are none."""
        if self._blocks is None:
            self._blocks = deformable_blocks(pl_module)
            if not self._blocks:
                warnings.warn(f"{type(self).__name__}: {type(pl_module).__name__} contains no "
                              "DeformableAttention block, so there are no offsets to watch; remove "
                              "the callback or use a model with 'D' blocks", UserWarning, stacklevel=2)
        return self._blocks

    def is_measured_step(self, trainer: pl.Trainer) -> bool:
        """True on the first call for a recorded optimizer step (several optimizers each call the
        hook), False otherwise."""
        step = trainer.global_step
        if step != self._measured_step or step == self._taken_step:
            return False
        self._taken_step = step
        return True

    def records(self) -> list[tuple[str, DeformableRecord]]:
        """``(key, record)`` of the active blocks that recorded since recording was last turned on;
        logs once per inactive block (see the module docstring)."""
        found = [(k, b.last_record) for k, b in self._blocks or () if b.last_record is not None]
        for key, record in found:
            if inactive(record) and key not in self._warned_inactive:
                self._warned_inactive.add(key)
                rank_zero_info(f"{type(self).__name__}: block {key} ({stage_of(key)}) sees a 1x1 feature "
                               "map at this input size, so its offsets change nothing and get no gradient; "
                               "it is left out. Use larger images to train its offsets.")
        return [(k, r) for k, r in found if not inactive(r)]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        # With gradient accumulation only the first micro-batch of a step is recorded.
        if step % self.every_n_steps or step == self._measured_step or not self.blocks(pl_module):
            return
        self._measured_step = step
        self._input_size = input_size_from_batch(batch)
        self._recording.enter_context(recording([b for _, b in self._blocks], self._record_attention))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._recording.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._recording.close()


def _by_stage(items: Sequence[tuple[str, Any]]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for key, item in items:
        groups.setdefault(stage_of(key), []).append(item)
    return groups


class OffsetStatistics(OffsetRecorder):
    """Log offset statistics of every deformable block (names in the module docstring).

    Args:
        every_n_steps: measure every this many optimizer steps (and once per validation epoch).
        attention_entropy: also log the attention entropy; those steps compute the attention
            explicitly, which is slower.
        log_images: at each validation epoch end, draw the sampling points over the first
            ``num_images`` validation images, one figure per stage (TensorBoard ``add_figure``,
            otherwise PNGs in ``<log_dir>/offset_plots``).
        num_images: validation images in each figure.
        num_queries: query points per image whose most-attended keys are drawn.
        top_k: most-attended keys drawn per query.
        mean: per-channel mean the images were normalised with (for display).
        std: per-channel std the images were normalised with (for display).
    """

    def __init__(self, every_n_steps: int = 50, attention_entropy: bool = False,
                 log_images: bool = True, num_images: int = 2, num_queries: int = 3, top_k: int = 8,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        super().__init__(every_n_steps, attention_entropy)
        self.attention_entropy = attention_entropy
        self.log_images = log_images
        self.num_images = num_images
        self.num_queries = num_queries
        self.top_k = top_k
        self.mean, self.std = tuple(mean), tuple(std)
        self._images: torch.Tensor | None = None
        self._val_recording = ExitStack()

    def compute(self, split: str, input_size: tuple[int, int] | None,
                with_norms: bool) -> dict[str, float]:
        """Statistics of the current records (and offset-network norms), keyed by metric name."""
        records = self.records()
        blocks = dict(self._blocks or ())
        active = [(k, blocks[k]) for k, _ in records]
        metrics: dict[str, float] = {}
        stages = {s: items for s, items in _by_stage(records).items() if len(items) > 1}
        for name, items in [*((k, [r]) for k, r in records), *stages.items()]:
            for stat, value in offset_statistics(items, input_size, self.attention_entropy).items():
                metrics[f"offsets/{split}/{name}/{stat}"] = value
        if with_norms:
            stage_blocks = _by_stage(active)
            for name, items in [*((k, [b]) for k, b in active),
                                *((s, stage_blocks[s]) for s in stages)]:
                for stat, value in offset_network_norms(items).items():
                    metrics[f"offsets/{split}/{name}/{stat}"] = value
        return metrics

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.is_measured_step(trainer):
            self._log(trainer, self.compute("train", self._input_size, with_norms=True))

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or batch_idx or dataloader_idx or not self.blocks(pl_module):
            return
        self._val_recording.enter_context(recording([b for _, b in self._blocks], self.attention_entropy))
        if self.log_images and self._images is None:
            images = batch_images(batch)
            if images is not None:
                self._images = torch.stack(list(images[: self.num_images])).detach().cpu()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or batch_idx or dataloader_idx or not self._blocks:
            return
        self._log(trainer, self.compute("val", input_size_from_batch(batch), with_norms=False))
        self._val_recording.close()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._images is None or not trainer.is_global_zero:
            return
        stages = _by_stage(self._blocks)
        chosen = [(stage, items[-1]) for stage, items in stages.items()]  # deepest block per stage
        keys = {id(b): k for k, b in self._blocks}
        images = self._images.to(next(pl_module.parameters()).device)
        records = record_sampling(pl_module, images, [b for _, b in chosen])
        display = denormalize(self._images.cpu(), self.mean, self.std)
        for (stage, block), record in zip(chosen, records):
            if inactive(record):
                continue
            fig = draw_sampling_points(display, record,
                                       title=f"{stage}: block {keys[id(block)]}, step {trainer.global_step}",
                                       num_queries=self.num_queries, top_k=self.top_k)
            self._log_figure(trainer, f"offsets/val/{stage}/sampling_points", fig)

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _log_figure(self, trainer: pl.Trainer, tag: str, fig: Any) -> None:
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for logger in tensorboards:
            logger.experiment.add_figure(tag, fig, global_step=trainer.global_step, close=False)
        if not tensorboards:
            out = Path(trainer.log_dir or trainer.default_root_dir) / "offset_plots"
            out.mkdir(parents=True, exist_ok=True)
            name = tag.removeprefix("offsets/").replace("/", "_")
            fig.savefig(out / f"{name}_step{trainer.global_step:07d}.png", dpi=100)

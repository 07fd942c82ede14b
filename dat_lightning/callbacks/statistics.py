"""Statistics of the deformable blocks' sampling offsets, and the callback that logs them.

:class:`OffsetStatistics` turns on offset recording (``DeformableAttention.record_offsets``) only
for the training steps it measures (every ``every_n_steps`` optimizer steps) and for the first
validation batch of each validation epoch, so the model runs at full speed otherwise.

Metric names (``<split>`` is ``train`` or ``val``; ``<block>`` is the module path from ``stages.``
on, e.g. ``stages.2.attns.1``; ``stage<i>`` aggregates the deformable blocks of stage ``i``)::

    offsets/<split>/<block>/<stat>
    offsets/<split>/stage<i>/<stat>

=====================  ==========================================================================
``<stat>``             meaning
=====================  ==========================================================================
``mean_abs_cells``     mean |pos - ref| (Euclidean, (y, x)) in key-grid cells
``std_abs_cells``      its standard deviation
``max_abs_cells``      its maximum
``mean_abs_px``        mean |pos - ref| in input pixels (a feature cell is ``input / fmap`` px;
                       the ``*_px`` stats are left out when the batch holds no image tensor)
``std_abs_px``         its standard deviation
``max_abs_px``         its maximum
``saturated``          fraction of sampling points whose offset is saturated (tanh > 0.99 or
                       clamped at the border), among the points whose reference lies inside the
                       map (DAT++ places its last reference row/column on or beyond the border,
                       where they are clamped whatever the offset)
``outside``            fraction of sampling points outside the feature map (|coordinate| > 1)
``spread``             std of the sampling points over the key grid / that of the reference points
                       (clamped to the map), averaged over images and groups: 1 = undeformed
                       spread, -> 0 = the points collapse onto one location; 1 for a 1x1 grid
``attn_entropy``       (``attention_entropy=True`` only) attention entropy / log(number of keys)
``grad_norm``          (train only) L2 norm of the offset network's gradients, before clipping
``weight_norm``        (train only) L2 norm of the offset network's weights
=====================  ==========================================================================

Values go to every logger of the trainer through ``Logger.log_metrics`` at step
``trainer.global_step``, so TensorBoard, CSV, W&B and MLflow all receive them. With
``log_images=True`` the callback also draws the sampling points over a few fixed validation
images at each validation epoch end (see :mod:`dat_lightning.visualization`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from dat_lightning.models.layers.deformable_attention import DeformableAttention, DeformableRecord

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OffsetRecorder",
    "OffsetStatistics",
    "batch_images",
    "block_key",
    "deformable_blocks",
    "input_size_from_batch",
    "normalized_to_pixels",
    "offset_network_norms",
    "offset_statistics",
    "set_recording",
    "stage_of",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def block_key(name: str) -> str:
    """Stable metric name of a block: its module path from ``stages.`` on (prefixes dropped)."""
    i = name.rfind("stages.")
    return name[i:] if i >= 0 else name


def stage_of(key: str) -> str:
    """``"stage<i>"`` for a block key ``stages.<i>.…``, else the key itself."""
    parts = key.split(".")
    return f"stage{parts[1]}" if len(parts) > 1 and parts[0] == "stages" else key


def deformable_blocks(module: nn.Module) -> list[tuple[str, DeformableAttention]]:
    """``(key, block)`` of every :class:`DeformableAttention` inside ``module``, in forward order."""
    return [(block_key(n), m) for n, m in module.named_modules() if isinstance(m, DeformableAttention)]


def set_recording(blocks: Sequence[tuple[str, DeformableAttention]], on: bool,
                  attention: bool = False) -> None:
    """Turn recording on (dropping old records; ``attention`` adds, never removes, attention
    recording, so two callbacks measuring the same step do not undo each other) or off."""
    for _, block in blocks:
        block.record_offsets = on
        block.record_attention = on and (attention or block.record_attention)
        if on:
            block.last_record = None


def batch_images(batch: Any) -> torch.Tensor | list[torch.Tensor] | None:
    """The images of a batch: ``batch["image"]`` (tensor or list of tensors), else its first tensor."""
    if isinstance(batch, Mapping):
        if "image" in batch:
            return batch["image"]
        batch = list(batch.values())
    if isinstance(batch, torch.Tensor):
        return batch
    return next((v for v in batch if isinstance(v, torch.Tensor) and v.ndim >= 3), None)


def input_size_from_batch(batch: Any) -> tuple[int, int] | None:
    """(H, W) of the images of a batch (see :func:`batch_images`), ``None`` if there are none.

    For a list of images of different sizes, the largest height and width (the padded batch).
    """
    images = batch_images(batch)
    if isinstance(images, torch.Tensor) and images.ndim >= 3:
        return int(images.shape[-2]), int(images.shape[-1])
    if isinstance(images, (list, tuple)) and images and all(isinstance(t, torch.Tensor) for t in images):
        return max(int(t.shape[-2]) for t in images), max(int(t.shape[-1]) for t in images)
    return None


def normalized_to_pixels(coords: torch.Tensor, fmap_size: tuple[int, int],
                         input_size: tuple[int, int]) -> torch.Tensor:
    """Normalised ``grid_sample(align_corners=True)`` coordinates (y, x) -> input pixels (y, x).

    -1 / +1 are the centres of the first / last feature cell; a feature cell covers
    ``input / fmap`` input pixels; pixel ``i`` has its centre at ``i`` (matplotlib's ``imshow``).
    """
    fmap = coords.new_tensor(fmap_size)
    cell = coords.new_tensor(input_size) / fmap
    return ((coords + 1) / 2 * (fmap - 1) + 0.5) * cell - 0.5


def offset_statistics(records: Sequence[DeformableRecord], input_size: tuple[int, int] | None = None,
                      attention_entropy: bool = False) -> dict[str, float]:
    """Pooled offset statistics of one or more records (see the module docstring for the keys).

    Pixel statistics need ``input_size``; ``attn_entropy`` needs records with attention.
    """
    cells, pixels, spreads, entropies = [], [], [], []
    saturated = interior = outside = points = 0
    for rec in records:
        offset = rec.pos - rec.ref
        cells.append((offset / rec.cell_size().to(offset)).norm(dim=-1).flatten())
        if input_size is not None:
            moved = normalized_to_pixels(rec.pos, rec.fmap_size, input_size)
            pixels.append((moved - normalized_to_pixels(rec.ref, rec.fmap_size, input_size))
                          .norm(dim=-1).flatten())
        inside_ref = rec.ref.abs().amax(-1) < 1
        saturated += int((rec.saturated & inside_ref).sum())
        interior += int(inside_ref.sum())
        outside += int((rec.pos.abs().amax(-1) > 1).sum())
        points += inside_ref.numel()
        pos_spread = rec.pos.flatten(2, 3).var(2, unbiased=False).sum(-1).sqrt()  # [B, groups]
        ref_spread = rec.ref.clamp(-1, 1).flatten(2, 3).var(2, unbiased=False).sum(-1).sqrt()
        single = ref_spread == 0
        spreads.append(torch.where(single, 1.0, pos_spread / ref_spread.masked_fill(single, 1.0))
                       .flatten())
        if attention_entropy:
            if rec.attn is None:
                raise ValueError("attention entropy needs records made with record_attention=True")
            keys = rec.attn.shape[-1]
            ent = -(rec.attn * rec.attn.clamp_min(1e-12).log()).sum(-1)
            entropies.append((ent / math.log(keys) if keys > 1 else torch.zeros_like(ent)).flatten())
    stats = _moments("abs_cells", torch.cat(cells))
    if pixels:
        stats.update(_moments("abs_px", torch.cat(pixels)))
    stats["saturated"] = saturated / interior if interior else 0.0
    stats["outside"] = outside / points
    stats["spread"] = float(torch.cat(spreads).mean())
    if entropies:
        stats["attn_entropy"] = float(torch.cat(entropies).mean())
    return stats


def _moments(name: str, values: torch.Tensor) -> dict[str, float]:
    mean, std, top = torch.stack([values.mean(), values.std(unbiased=False), values.max()]).tolist()
    return {f"mean_{name}": mean, f"std_{name}": std, f"max_{name}": top}


def offset_network_norms(blocks: Sequence[DeformableAttention]) -> dict[str, float]:
    """L2 norms of the offset networks' (``conv_offset``) weights and gradients, together.

    ``grad_norm`` is absent when no parameter has a gradient (e.g. frozen offset networks).
    """
    params = [p for block in blocks for p in block.conv_offset.parameters()]
    norms = {"weight_norm": float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.detach()) for p in params])))}
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if grads:
        norms["grad_norm"] = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    return norms


class OffsetRecorder(Callback):
    """Base of the offset callbacks: records offsets on every ``every_n_steps``-th training step.

    Recording is turned on in ``on_train_batch_start`` of a measured step and off at its batch
    end. Subclasses read the records in ``on_before_optimizer_step`` (forward and backward are
    done, the update is not) when :meth:`take_measurement` says so.
    """

    def __init__(self, every_n_steps: int, record_attention: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"{type(self).__name__}: every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._record_attention = record_attention
        self._blocks: list[tuple[str, DeformableAttention]] | None = None
        self._measured_step = -1
        self._taken_step = -1
        self._recording = False
        self._input_size: tuple[int, int] | None = None

    def blocks(self, pl_module: pl.LightningModule) -> list[tuple[str, DeformableAttention]]:
        """The module's deformable blocks (found once); warns once when there are none."""
        if self._blocks is None:
            self._blocks = deformable_blocks(pl_module)
            if not self._blocks:
                warnings.warn(f"{type(self).__name__}: {type(pl_module).__name__} contains no "
                              "DeformableAttention block, so there are no offsets to watch; remove "
                              "the callback or use a model with 'D' blocks", UserWarning, stacklevel=2)
        return self._blocks

    def take_measurement(self, trainer: pl.Trainer) -> bool:
        """True once per recorded optimizer step (several optimizers each call the hook)."""
        step = trainer.global_step
        if step != self._measured_step or step == self._taken_step:
            return False
        self._taken_step = step
        return True

    def records(self) -> list[tuple[str, DeformableRecord]]:
        """``(key, record)`` of the blocks that recorded since recording was last turned on."""
        return [(k, b.last_record) for k, b in self._blocks or () if b.last_record is not None]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        # With gradient accumulation only the first micro-batch of a step is recorded.
        if step % self.every_n_steps or step == self._measured_step or not self.blocks(pl_module):
            return
        self._measured_step = step
        self._input_size = input_size_from_batch(batch)
        self._recording = True
        set_recording(self._blocks, True, self._record_attention)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._recording:
            self._recording = False
            set_recording(self._blocks, False)


def _by_stage(items: Sequence[tuple[str, Any]]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for key, item in items:
        groups.setdefault(stage_of(key), []).append(item)
    return groups


class OffsetStatistics(OffsetRecorder):
    """Log offset statistics of every deformable block and stage (names in the module docstring).

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
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(every_n_steps, attention_entropy)
        self.attention_entropy = attention_entropy
        self.log_images = log_images
        self.num_images = num_images
        self.num_queries = num_queries
        self.top_k = top_k
        self.mean, self.std = tuple(mean), tuple(std)
        self.metrics: dict[str, float] = {}
        self._images: torch.Tensor | None = None
        self._val_recording = False

    def compute(self, split: str, input_size: tuple[int, int] | None,
                with_norms: bool) -> dict[str, float]:
        """Statistics of the current records (and offset-network norms), keyed by metric name."""
        records = self.records()
        metrics: dict[str, float] = {}
        blocks = dict(self._blocks or ())
        for name, items in [*((k, [r]) for k, r in records), *_by_stage(records).items()]:
            for stat, value in offset_statistics(items, input_size, self.attention_entropy).items():
                metrics[f"offsets/{split}/{name}/{stat}"] = value
        if with_norms:
            for name, items in [*((k, [b]) for k, b in blocks.items()),
                                *_by_stage(list(blocks.items())).items()]:
                for stat, value in offset_network_norms(items).items():
                    metrics[f"offsets/{split}/{name}/{stat}"] = value
        return metrics

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.take_measurement(trainer):
            self._log(trainer, self.compute("train", self._input_size, with_norms=True))

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or batch_idx or dataloader_idx or not self.blocks(pl_module):
            return
        self._val_recording = True
        set_recording(self._blocks, True, self.attention_entropy)
        if self.log_images and self._images is None:
            images = batch_images(batch)
            if images is not None:
                self._images = torch.stack(list(images[: self.num_images])).detach().cpu()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._val_recording:
            return
        self._val_recording = False
        self._log(trainer, self.compute("val", input_size_from_batch(batch), with_norms=False))
        set_recording(self._blocks, False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._images is None or not trainer.is_global_zero:
            return
        from dat_lightning.visualization import denormalize, draw_sampling_points, record_sampling

        stages = _by_stage([(k, (k, b)) for k, b in self._blocks])
        chosen = [items[-1] for items in stages.values()]  # the deepest deformable block per stage
        images = self._images.to(next(pl_module.parameters()).device)
        records = record_sampling(pl_module, images, [b for _, b in chosen])
        display = denormalize(self._images, self.mean, self.std)
        for stage, (key, _), record in zip(stages, chosen, records):
            fig = draw_sampling_points(display, record, title=f"{key} (step {trainer.global_step})",
                                       num_queries=self.num_queries, top_k=self.top_k)
            self._log_figure(trainer, f"offsets/val/{stage}/sampling_points", fig)

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
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


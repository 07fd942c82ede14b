"""Stability guard for the deformable offsets: detects divergence early and warns, slows or stops.

Every ``every_n_steps`` optimizer steps, after the backward pass and before the update,
:class:`OffsetGuard` checks each deformable block for

* ``offsets_non_finite``: NaN/inf sampling points (fires at once);
* ``grad_non_finite``: NaN/inf gradients of the offset network (fires at once);
* ``mean_abs_cells``: a jump of the mean |offset| (key-grid cells) above both
  ``running mean + jump_sigmas * running std`` and ``jump_min_ratio * running mean``, where the
  running statistics are exponential moving averages over the block's previous checks (after
  ``warmup_checks`` checks);
* ``saturated``: saturated fraction (see :mod:`.offset_statistics`) above ``max_saturation`` for
  ``patience`` consecutive checks;
* ``spread``: sampling-point spread below ``min_spread`` for ``patience`` consecutive checks.

A condition fires once and re-arms when it clears. Each firing is kept in :attr:`OffsetGuard.events`.
The action is ``"warn"`` (an :class:`OffsetInstabilityWarning`), ``"reduce_lr"`` (multiply the
offset networks' learning rate by ``lr_factor`` and warn), or ``"stop"`` (raise
:class:`OffsetInstabilityError` out of ``Trainer.fit``). Stopping happens before the optimizer
applies the step and before any checkpoint callback runs for it, and the guard turns off
``ModelCheckpoint(save_on_exception=True)`` for this exception, so the last checkpoint on disk is
the last good one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dat_lightning.models.layers.deformable_attention import DeformableRecord

from .statistics import OffsetRecorder, offset_network_norms, offset_statistics

__all__ = ["GuardEvent", "OffsetGuard", "OffsetInstabilityError", "OffsetInstabilityWarning"]

HINT = ("Try: a lower LR multiplier for the offset networks, a longer LR warm-up, gradient clipping "
        "(Trainer(gradient_clip_val=1.0)), or freezing the offset networks (conv_offset) for the "
        "first steps.")


class OffsetInstabilityWarning(UserWarning):
    """Warned by :class:`OffsetGuard` in ``"warn"`` and ``"reduce_lr"`` modes."""


class OffsetInstabilityError(RuntimeError):
    """Raised by :class:`OffsetGuard` in ``"stop"`` mode; ``events`` lists what fired."""

    def __init__(self, message: str, events: list[GuardEvent]) -> None:
        super().__init__(message)
        self.events = events


@dataclass(frozen=True)
class GuardEvent:
    """One check that fired: at optimizer ``step``, ``statistic`` of ``block`` crossed ``threshold``."""

    step: int
    block: str
    statistic: str
    value: float
    threshold: float
    message: str


@dataclass
class _BlockState:
    mean: float = 0.0
    var: float = 0.0
    checks: int = 0
    saturated_run: int = 0
    collapsed_run: int = 0
    latched: set[str] = field(default_factory=set)


class OffsetGuard(OffsetRecorder):
    """Watch the deformable offsets for divergence (see the module docstring).

    Args:
        action: ``"warn"``, ``"reduce_lr"`` or ``"stop"``.
        every_n_steps: check every this many optimizer steps.
        jump_sigmas: a jump must exceed the running mean by this many running stds ...
        jump_min_ratio: ... and be this many times the running mean.
        warmup_checks: checks of a block before jump detection starts.
        ema_decay: decay of the running mean/variance of mean |offset|.
        max_saturation: saturated fraction above which a block counts as saturated.
        min_spread: spread below which a block's sampling points count as collapsed.
        patience: consecutive saturated / collapsed checks before firing.
        lr_factor: ``"reduce_lr"`` multiplies the offset networks' learning rate by this. Their
            parameters must form their own optimizer param group(s): a group whose ``"name"``
            contains ``"offset"`` or whose parameters are all ``conv_offset`` parameters.
    """

    def __init__(self, action: Literal["warn", "reduce_lr", "stop"] = "warn", every_n_steps: int = 10,
                 jump_sigmas: float = 6.0, jump_min_ratio: float = 2.0, warmup_checks: int = 5,
                 ema_decay: float = 0.9, max_saturation: float = 0.5, min_spread: float = 0.1,
                 patience: int = 3, lr_factor: float = 0.1) -> None:
        super().__init__(every_n_steps)
        if action not in ("warn", "reduce_lr", "stop"):
            raise ValueError(f"OffsetGuard: action must be 'warn', 'reduce_lr' or 'stop', got {action!r}")
        if not 0 < lr_factor < 1:
            raise ValueError(f"OffsetGuard: lr_factor must be in (0, 1), got {lr_factor}")
        self.action = action
        self.jump_sigmas = jump_sigmas
        self.jump_min_ratio = jump_min_ratio
        self.warmup_checks = warmup_checks
        self.ema_decay = ema_decay
        self.max_saturation = max_saturation
        self.min_spread = min_spread
        self.patience = patience
        self.lr_factor = lr_factor
        self.events: list[GuardEvent] = []
        self._state: dict[str, _BlockState] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.action == "reduce_lr" and self.blocks(pl_module) and not self._offset_groups(trainer):
            raise ValueError(
                "OffsetGuard(action='reduce_lr') found no optimizer param group holding only the offset "
                "networks: put the conv_offset parameters in their own group (e.g. "
                "{'params': offset_params, 'name': 'offsets'}), or use action='warn' or 'stop'")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not self.take_measurement(trainer):
            return
        step = trainer.global_step
        records = dict(self.records())
        new: list[GuardEvent] = []
        for key, block in self._blocks:
            state = self._state.setdefault(key, _BlockState())
            grad = offset_network_norms([block]).get("grad_norm", 0.0)
            new += self._fire(state, step, key, "grad_non_finite", not math.isfinite(grad), grad, 0.0,
                              f"the offset network's gradient norm is {grad} (non-finite)")
            if key in records:
                new += self._check_offsets(state, step, key, records[key])
        if trainer.strategy.reduce_boolean_decision(bool(new), all=False):
            self._act(trainer, step, new)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        # Runs before the checkpoint callbacks' on_exception (Lightning orders them last).
        if isinstance(exception, OffsetInstabilityError):
            for cb in trainer.checkpoint_callbacks:
                if isinstance(cb, ModelCheckpoint):
                    cb.save_on_exception = False

    def _check_offsets(self, state: _BlockState, step: int, key: str,
                       record: DeformableRecord) -> list[GuardEvent]:
        bad = float((~torch.isfinite(record.pos)).any(-1).float().mean())
        events = self._fire(state, step, key, "offsets_non_finite", bad > 0, bad, 0.0,
                            f"{bad:.1%} of the sampling points are NaN/inf")
        if bad > 0:
            return events
        stats = offset_statistics([record])
        value = stats["mean_abs_cells"]
        if state.checks >= self.warmup_checks:
            std = math.sqrt(state.var)
            limit = max(state.mean + self.jump_sigmas * std, self.jump_min_ratio * state.mean)
            events += self._fire(state, step, key, "mean_abs_cells", value > limit, value, limit,
                                 f"mean |offset| jumped to {value:.3g} key-grid cells (running mean "
                                 f"{state.mean:.3g}, std {std:.3g})")
        if state.checks == 0:
            state.mean = value
        else:
            delta = value - state.mean
            state.mean += (1 - self.ema_decay) * delta
            state.var = self.ema_decay * (state.var + (1 - self.ema_decay) * delta * delta)
        state.checks += 1
        sat, spread = stats["saturated"], stats["spread"]
        state.saturated_run = state.saturated_run + 1 if sat > self.max_saturation else 0
        events += self._fire(state, step, key, "saturated", state.saturated_run >= self.patience, sat,
                             self.max_saturation, f"{sat:.0%} of the sampling points are saturated "
                             f"(pinned at their range limit, where their gradient vanishes) for "
                             f"{state.saturated_run} consecutive checks")
        state.collapsed_run = state.collapsed_run + 1 if spread < self.min_spread else 0
        events += self._fire(state, step, key, "spread", state.collapsed_run >= self.patience, spread,
                             self.min_spread, f"the sampling points collapsed: spread {spread:.3g} "
                             f"(1 = undeformed grid) for {state.collapsed_run} consecutive checks")
        return events

    @staticmethod
    def _fire(state: _BlockState, step: int, key: str, statistic: str, condition: bool, value: float,
              threshold: float, what: str) -> list[GuardEvent]:
        """An event when ``condition`` becomes true (once until it clears)."""
        if not condition:
            state.latched.discard(statistic)
            return []
        if statistic in state.latched:
            return []
        state.latched.add(statistic)
        message = f"step {step}, block {key}, statistic {statistic}: {what}; threshold {threshold:.3g}."
        return [GuardEvent(step, key, statistic, value, threshold, message)]

    def _act(self, trainer: pl.Trainer, step: int, new: list[GuardEvent]) -> None:
        self.events.extend(new)
        found = "\n".join(f"  {e.message}" for e in new) or "  (detected on another process)"
        if self.action == "stop":
            raise OffsetInstabilityError(
                f"OffsetGuard stopped training at step {step}, before the optimizer update; no "
                f"checkpoint of this state is written:\n{found}\n{HINT}", new)
        done = ""
        if self.action == "reduce_lr":
            changes = [self._scale_lr(trainer, opt, i) for opt, i in self._offset_groups(trainer)]
            done = " Lowered the offset networks' learning rate: " + ", ".join(changes) + "."
        if trainer.is_global_zero:
            warnings.warn(f"OffsetGuard at step {step}:\n{found}\n{HINT}{done}", OffsetInstabilityWarning,
                          stacklevel=2)

    def _offset_groups(self, trainer: pl.Trainer) -> list[tuple[torch.optim.Optimizer, int]]:
        """(optimizer, group index) of the param groups that hold only offset-network parameters."""
        offset_ids = {id(p) for _, b in self._blocks or () for p in b.conv_offset.parameters()}
        return [(opt, i) for opt in trainer.optimizers for i, g in enumerate(opt.param_groups)
                if "offset" in str(g.get("name", "")).lower()
                or (g["params"] and all(id(p) in offset_ids for p in g["params"]))]

    def _scale_lr(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer, index: int) -> str:
        """Scale one group's LR, including its schedulers' base LR so they do not undo it."""
        group = optimizer.param_groups[index]
        before = group["lr"]
        group["lr"] = before * self.lr_factor
        if "initial_lr" in group:
            group["initial_lr"] *= self.lr_factor
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is optimizer and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs[index] *= self.lr_factor
        return f"group {group.get('name', index)!r} {before:.3g} -> {group['lr']:.3g}"

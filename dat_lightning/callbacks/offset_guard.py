"""Stability guard for the deformable offsets: detects divergence early and warns, slows or stops.

After the backward pass and before the update, :class:`OffsetGuard` checks each deformable block for

* ``grad_non_finite``: NaN/inf gradients of the offset network (every step; fires at once);

and, every ``every_n_steps`` optimizer steps, from the offsets of that step's forward pass, for

* ``offsets_non_finite``: NaN/inf sampling points (fires at once);
* ``mean_abs_cells``: a jump of the mean |offset| (key-grid cells) above both
  ``running mean + jump_sigmas * running std`` and ``jump_min_ratio * running mean``, where the
  running statistics are exponential moving averages over the block's previous checks (after
  ``warmup_checks`` checks);
* ``saturated``: saturated fraction (see :mod:`dat_lightning.offsets`) above ``max_saturation``
  for ``patience`` consecutive checks;
* ``spread``: sampling-point spread below ``min_spread`` for ``patience`` consecutive checks.

Blocks on a 1x1 feature map (inactive, see :func:`dat_lightning.offsets.inactive`) are skipped.
A condition fires once and re-arms when it clears. Each firing is kept in :attr:`OffsetGuard.events`.
The running statistics, the latched conditions and the events are saved in the checkpoint and
restored on resume (``--ckpt_path last``).

The action is ``"warn"`` (an :class:`OffsetInstabilityWarning`), ``"reduce_lr"`` (multiply the
``lr_scale`` of the offset networks' param groups by ``lr_factor``, which the LR scheduler of
:func:`dat_lightning.tasks.optim.build_lr_scheduler` reads at every step, and warn), or ``"stop"``
(raise :class:`OffsetInstabilityError` out of ``Trainer.fit``). In ``"stop"`` mode no checkpoint of
a damaged state is written: the guard stops before the optimizer applies the step, and before any
checkpoint is written (``on_save_checkpoint``, and :class:`~dat_lightning.callbacks.TaskCheckpoint`
asks before its bookkeeping) it re-checks the offsets the *current* weights produce on two images
of the latest training batch, so damage done by the last update is caught too. It also turns off
``ModelCheckpoint(save_on_exception=True)`` for its own exception.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dat_lightning.models.layers.deformable_attention import DeformableRecord
from dat_lightning.offsets import (
    batch_images,
    inactive,
    offset_network_norms,
    offset_statistics,
    record_sampling,
)

from .statistics import OffsetRecorder

__all__ = ["GuardEvent", "OffsetGuard", "OffsetInstabilityError", "OffsetInstabilityWarning"]

HINT = ("Try: a lower LR multiplier for the offset networks, a longer LR warm-up, gradient clipping "
        "(Trainer(gradient_clip_val=1.0)), or freezing the offset networks (conv_offset) for the "
        "first steps.")
#: Images of the latest training batch the ``"stop"`` guard re-checks before a checkpoint.
PROBE_IMAGES = 2


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
        every_n_steps: check the offsets every this many optimizer steps (gradients are checked
            for NaN/inf at every step).
        jump_sigmas: a jump must exceed the running mean by this many running stds ...
        jump_min_ratio: ... and be this many times the running mean.
        warmup_checks: checks of a block before jump detection starts.
        ema_decay: decay of the running mean/variance of mean |offset|.
        max_saturation: saturated fraction above which a block counts as saturated. The default
            (with ``patience=5``) is calibrated on healthy and diverging runs of the digits recipe
            (``benchmarks/RESULTS_guard_calibration.md``): converging runs at 5x the recipe's LR
            held up to 0.41 for 3 steps, runs with diverged offset networks 1.00.
        min_spread: spread below which a block's sampling points count as collapsed.
        patience: consecutive saturated / collapsed checks before firing.
        lr_factor: ``"reduce_lr"`` multiplies the ``lr_scale`` of the offset networks' param
            groups by this. Those groups must hold only offset-network parameters (flagged
            ``offset``, named ``*offset*``, or made only of ``conv_offset`` parameters) and carry
            an ``lr_scale``, as the groups of :func:`dat_lightning.tasks.optim.param_groups` do.
    """

    def __init__(self, action: Literal["warn", "reduce_lr", "stop"] = "warn", every_n_steps: int = 10,
                 jump_sigmas: float = 6.0, jump_min_ratio: float = 2.0, warmup_checks: int = 5,
                 ema_decay: float = 0.9, max_saturation: float = 0.8, min_spread: float = 0.1,
                 patience: int = 5, lr_factor: float = 0.1) -> None:
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
        self._probe: torch.Tensor | None = None
        self._approved_step = -1

    # --- checkpoint state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Running statistics, latched conditions and events, for resuming."""
        return {"blocks": {k: {**asdict(s), "latched": sorted(s.latched)} for k, s in self._state.items()},
                "events": [asdict(e) for e in self.events]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = {k: _BlockState(**{**s, "latched": set(s["latched"])})
                       for k, s in state_dict["blocks"].items()}
        self.events = [GuardEvent(**e) for e in state_dict["events"]]

    # --- hooks -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.action != "reduce_lr" or not self.blocks(pl_module):
            return
        groups = [g for opt, i in self._offset_groups(trainer) for g in [opt.param_groups[i]]]
        if not groups:
            raise ValueError(
                "OffsetGuard(action='reduce_lr') found no optimizer param group holding only the offset "
                "networks: put the conv_offset parameters in their own group (e.g. "
                "dat_lightning.tasks.optim.param_groups, or {'params': offset_params, 'name': 'offsets', "
                "'lr_scale': 1.0}), or use action='warn' or 'stop'")
        if unscaled := [g.get("name", "?") for g in groups if "lr_scale" not in g]:
            raise ValueError(
                f"OffsetGuard(action='reduce_lr') lowers the 'lr_scale' of the offset param groups, but "
                f"group(s) {unscaled} have none: build the optimizer from "
                "dat_lightning.tasks.optim.param_groups and the scheduler with build_lr_scheduler (as "
                "every BaseTask does), or use action='warn' or 'stop'")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.action == "stop":
            images = batch_images(batch)
            if isinstance(images, torch.Tensor) and images.ndim == 4:
                self._probe = images[:PROBE_IMAGES]

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not self.blocks(pl_module):
            return
        step = trainer.global_step
        measured = self.is_measured_step(trainer)
        if not measured and step == self._taken_step:
            return  # another optimizer of the same step
        self._taken_step = step
        records = dict(self.records()) if measured else {}
        grads = [p.grad for _, b in self._blocks for p in b.conv_offset.parameters() if p.grad is not None]
        # One device sync per step; the per-block norms only when something is non-finite.
        finite = not grads or bool(torch.stack([torch.linalg.vector_norm(g) for g in grads]).isfinite().all())
        new: list[GuardEvent] = []
        for key, block in self._blocks:
            state = self._state.setdefault(key, _BlockState())
            grad = 0.0 if finite else offset_network_norms([block]).get("grad_norm", 0.0)
            new += self._event_on_rise(state, step, key, "grad_non_finite", not math.isfinite(grad), grad,
                                       0.0, f"the offset network's gradient norm is {grad} (non-finite)")
            if key in records:
                new += self._check_offsets(state, step, key, records[key])
        if trainer.strategy.reduce_boolean_decision(bool(new), all=False):
            self._act(trainer, step, new)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.approve_save(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        # Runs before the checkpoint callbacks' on_exception (Lightning orders them last).
        if isinstance(exception, OffsetInstabilityError):
            for cb in trainer.checkpoint_callbacks:
                if isinstance(cb, ModelCheckpoint):
                    cb.save_on_exception = False

    # --- checks ------------------------------------------------------------------------------
    def approve_save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """In ``"stop"`` mode, re-check the offsets of the current weights before a checkpoint of
        this step is written, and raise :class:`OffsetInstabilityError` when they are damaged
        (non-finite, or a jump of the mean |offset|). Once per step; other modes do nothing."""
        step = trainer.global_step
        if self.action != "stop" or self._probe is None or step == self._approved_step:
            return
        blocks = self.blocks(pl_module)
        records = record_sampling(pl_module, self._probe, [b for _, b in blocks], attention=False)
        new: list[GuardEvent] = []
        for (key, _), record in zip(blocks, records):
            if inactive(record):
                continue
            state = self._state.setdefault(key, _BlockState())
            bad = float((~torch.isfinite(record.pos)).any(-1).float().mean())
            new += self._event_on_rise(state, step, key, "offsets_non_finite", bad > 0, bad, 0.0,
                                       f"{bad:.1%} of the sampling points are NaN/inf before the checkpoint")
            if bad == 0 and state.checks >= self.warmup_checks:
                value = offset_statistics([record])["mean_abs_cells"]
                limit = self._jump_limit(state)
                new += self._event_on_rise(state, step, key, "mean_abs_cells", value > limit, value, limit,
                                           f"before the checkpoint, mean |offset| is {value:.3g} key-grid "
                                           f"cells (running mean {state.mean:.3g})")
        if trainer.strategy.reduce_boolean_decision(bool(new), all=False):
            self._act(trainer, step, new, before="the checkpoint of this step is written")
        self._approved_step = step

    def _jump_limit(self, state: _BlockState) -> float:
        return max(state.mean + self.jump_sigmas * math.sqrt(state.var), self.jump_min_ratio * state.mean)

    def _check_offsets(self, state: _BlockState, step: int, key: str,
                       record: DeformableRecord) -> list[GuardEvent]:
        bad = float((~torch.isfinite(record.pos)).any(-1).float().mean())
        events = self._event_on_rise(state, step, key, "offsets_non_finite", bad > 0, bad, 0.0,
                                     f"{bad:.1%} of the sampling points are NaN/inf")
        if bad > 0:
            return events
        stats = offset_statistics([record])
        value = stats["mean_abs_cells"]
        if state.checks >= self.warmup_checks:
            limit = self._jump_limit(state)
            events += self._event_on_rise(state, step, key, "mean_abs_cells", value > limit, value, limit,
                                          f"mean |offset| jumped to {value:.3g} key-grid cells (running "
                                          f"mean {state.mean:.3g}, std {math.sqrt(state.var):.3g})")
        if state.checks == 0:
            state.mean = value
        else:
            delta = value - state.mean
            state.mean += (1 - self.ema_decay) * delta
            state.var = self.ema_decay * (state.var + (1 - self.ema_decay) * delta * delta)
        state.checks += 1
        sat, spread = stats["saturated"], stats["spread"]
        state.saturated_run = state.saturated_run + 1 if sat > self.max_saturation else 0
        events += self._event_on_rise(state, step, key, "saturated", state.saturated_run >= self.patience,
                                      sat, self.max_saturation, f"{sat:.0%} of the sampling points are "
                                      f"saturated (pinned at their range limit, where their gradient "
                                      f"vanishes) for {state.saturated_run} consecutive checks")
        state.collapsed_run = state.collapsed_run + 1 if spread < self.min_spread else 0
        events += self._event_on_rise(state, step, key, "spread", state.collapsed_run >= self.patience,
                                      spread, self.min_spread, f"the sampling points collapsed: spread "
                                      f"{spread:.3g} (1 = undeformed grid) for {state.collapsed_run} "
                                      "consecutive checks")
        return events

    @staticmethod
    def _event_on_rise(state: _BlockState, step: int, key: str, statistic: str, condition: bool,
                       value: float, threshold: float, what: str) -> list[GuardEvent]:
        """An event when ``condition`` becomes true (once until it clears)."""
        if not condition:
            state.latched.discard(statistic)
            return []
        if statistic in state.latched:
            return []
        state.latched.add(statistic)
        message = f"step {step}, block {key}, statistic {statistic}: {what}; threshold {threshold:.3g}."
        return [GuardEvent(step, key, statistic, value, threshold, message)]

    def _act(self, trainer: pl.Trainer, step: int, new: list[GuardEvent],
             before: str = "the optimizer update") -> None:
        self.events.extend(new)
        found = "\n".join(f"  {e.message}" for e in new) or "  (detected on another process)"
        if self.action == "stop":
            raise OffsetInstabilityError(
                f"OffsetGuard stopped training at step {step}, before {before}; no checkpoint of this "
                f"state is written:\n{found}\n{HINT}", new)
        done = ""
        if self.action == "reduce_lr":
            changes = [self._scale_lr(opt.param_groups[i], i) for opt, i in self._offset_groups(trainer)]
            done = " Lowered the offset networks' learning rate: " + ", ".join(changes) + "."
        if trainer.is_global_zero:
            warnings.warn(f"OffsetGuard at step {step}:\n{found}\n{HINT}{done}", OffsetInstabilityWarning,
                          stacklevel=2)

    def _offset_groups(self, trainer: pl.Trainer) -> list[tuple[torch.optim.Optimizer, int]]:
        """(optimizer, group index) of the param groups that hold only offset-network parameters."""
        offset_ids = {id(p) for _, b in self._blocks or () for p in b.conv_offset.parameters()}
        return [(opt, i) for opt in trainer.optimizers for i, g in enumerate(opt.param_groups)
                if g.get("offset") or "offset" in str(g.get("name", "")).lower()
                or (g["params"] and all(id(p) in offset_ids for p in g["params"]))]

    def _scale_lr(self, group: dict, index: int) -> str:
        """Scale a group's ``lr_scale`` for good (the scheduler reads it at every step) and its
        current LR for the update of this step."""
        before = group["lr"]
        group["lr_scale"] *= self.lr_factor
        group["lr"] = before * self.lr_factor
        return f"group {group.get('name', index)!r} {before:.3g} -> {group['lr']:.3g}"

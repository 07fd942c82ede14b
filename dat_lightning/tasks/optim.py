"""Parameter groups and learning-rate schedules for fine-tuning DAT / DAT++.

Everything here is a plain function of a model or an optimizer, usable without Lightning:

* :func:`param_groups` splits a model's parameters into optimizer groups by weight decay, layer
  depth (layer-wise LR decay) and role (deformable offset networks, backbone vs. head). Each group
  carries its ``"name"``, ``"lr_scale"``, ``"weight_decay"`` (when fixed), ``"layer_id"``,
  ``"backbone"`` and ``"offset"`` flags; optimizers keep such extra keys in their state dict.
* :func:`build_lr_scheduler` returns a :class:`~torch.optim.lr_scheduler.LambdaLR`, stepped once per
  optimizer step, that sets every group's LR to ``base_lr * lr_scale * schedule(step) * ramp(step)``:
  ``schedule`` is linear warmup followed by cosine or polynomial decay, ``ramp`` is 0 while the
  group is frozen and then rises linearly over ``unfreeze_warmup_steps``. ``lr_scale`` is read from
  the group at every step, so a callback that changes a group's ``lr_scale`` changes its LR for good
  (and the change is saved with the optimizer state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import TypedDict

import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..models.dat import NO_DECAY_KEYWORDS, dat_layer_id
from ..offsets import find_dat

__all__ = ["NO_DECAY_KEYWORDS", "SCHEDULES", "ParamGroup", "build_lr_scheduler", "dat_layer_id",
           "find_dat", "param_groups", "schedule_factor"]

#: Learning-rate schedules known to :func:`schedule_factor`.
SCHEDULES = ("cosine", "poly", "constant")


class ParamGroup(TypedDict, total=False):
    """One optimizer parameter group made by :func:`param_groups` (a dict, as optimizers need).

    ``lr_scale`` multiplies the group's LR at every scheduler step (see
    :func:`build_lr_scheduler`); ``backbone``/``offset`` select the groups that freezing and the
    offset guard act on; ``weight_decay`` is present for fixed or zero decay only.
    """

    params: list[nn.Parameter]
    name: str
    lr_scale: float
    layer_id: int
    backbone: bool
    offset: bool
    weight_decay: float




def param_groups(model: nn.Module, weight_decay: float | None = None, layer_decay: float = 1.0,
                 offset_lr_mult: float = 1.0, exclude: Sequence[str] = ()) -> list[ParamGroup]:
    """Optimizer parameter groups of a model that contains a DAT backbone.

    Parameters are grouped by (backbone or head, layer, offset network or not, decay or not);
    empty groups are left out, so the groups depend only on the model and these arguments.

    * No weight decay for 1-D parameters (norms, biases, layer scales) and the DAT's
      ``no_weight_decay()`` (position tables, :data:`NO_DECAY_KEYWORDS`).
    * ``lr_scale = layer_decay ** (num_layers - 1 - layer_id)`` inside the DAT, with the layer
      from the DAT's ``param_layer`` (:func:`dat_layer_id`), the same that timm's
      ``create_optimizer_v2(..., layer_decay=...)`` gets from its ``group_matcher``; everything
      outside it (task heads) has ``lr_scale`` 1.
    * The deformable offset networks (``conv_offset``) get ``lr_scale * offset_lr_mult`` and group
      names containing ``"offset"``.
    * ``backbone`` is true for the DAT's pretrained parts: all but ``cls_head`` and the new
      ``norms`` of :class:`~dat_lightning.models.DATFeatures`.

    Group names: ``backbone_decay``, ``backbone_offset_no_decay``, ``head_decay``...; with
    ``layer_decay != 1`` backbone names carry the layer, e.g. ``backbone_l03_decay``.

    Args:
        model: module to group (a DAT, or a task/model that contains one).
        weight_decay: decay of the decaying groups; ``None`` leaves it to the optimizer's default
            (non-decaying groups always get 0).
        layer_decay: layer-wise LR decay factor in (0, 1]; 1 disables it.
        offset_lr_mult: LR multiplier of the offset networks (0.1 is a common stabiliser).
        exclude: name prefixes of parameters to leave out (e.g. an EMA copy of the model).

    Returns:
        the :class:`ParamGroup` dicts.

    Raises:
        ValueError: for ``layer_decay`` outside (0, 1] or a negative ``offset_lr_mult``, or for
            ``layer_decay != 1`` on a model without a DAT backbone.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1 disables it), got {layer_decay}")
    if offset_lr_mult < 0:
        raise ValueError(f"offset_lr_mult must be >= 0, got {offset_lr_mult}")
    found = find_dat(model)
    if found is None and layer_decay != 1:
        raise ValueError(f"layer_decay={layer_decay} needs a DAT backbone to assign layers, but "
                         f"{type(model).__name__} contains none; set layer_decay=1")
    prefix, dat = found if found is not None else (None, None)
    num_layers = dat.num_layers() if dat is not None else 2
    dat_no_decay = dat.no_weight_decay() if dat is not None else set()

    groups: dict[str, ParamGroup] = {}
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in exclude):
            continue
        local = name[len(prefix):] if prefix is not None and name.startswith(prefix) else None
        no_decay = param.ndim <= 1 or local in dat_no_decay
        if local is None:
            layer_id, backbone, offset = num_layers - 1, False, False
        else:
            layer_id = dat.param_layer(local)
            backbone = not local.startswith(("cls_head.", "norms."))
            offset = ".conv_offset." in local
        scale = layer_decay ** (num_layers - 1 - layer_id) * (offset_lr_mult if offset else 1.0)
        parts = ["backbone" if backbone else "head"]
        if backbone and layer_decay != 1:
            parts.append(f"l{layer_id:02d}")
        parts += ["offset"] * offset + ["no_decay" if no_decay else "decay"]
        key = "_".join(parts)
        if key not in groups:
            groups[key] = ParamGroup(params=[], name=key, lr_scale=scale, layer_id=layer_id,
                                     backbone=backbone, offset=offset)
            if no_decay:
                groups[key]["weight_decay"] = 0.0
            elif weight_decay is not None:
                groups[key]["weight_decay"] = weight_decay
        groups[key]["params"].append(param)
    return list(groups.values())


def schedule_factor(step: int, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0,
                    min_lr_ratio: float = 0.0, poly_power: float = 1.0) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): linear warmup to 1 over
    ``warmup_steps``, then ``cosine`` or ``poly`` decay to ``min_lr_ratio`` at ``total_steps``, or
    ``constant``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        decay = (1.0 - progress) ** poly_power
    else:
        raise ValueError(f"unknown LR schedule {schedule!r}; choose one of {SCHEDULES}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def _ramp(step: int, frozen_steps: int, warmup_steps: int) -> float:
    """0 while frozen (``step < frozen_steps``), then linear to 1 over ``warmup_steps``."""
    if step < frozen_steps:
        return 0.0
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step - frozen_steps + 1) / warmup_steps)


def _group_factor(step: int, optimizer: Optimizer, index: int, schedule_kwargs: dict,
                  backbone_frozen_steps: int, offset_frozen_steps: int,
                  unfreeze_warmup_steps: int) -> float:
    group = optimizer.param_groups[index]
    factor = group.get("lr_scale", 1.0) * schedule_factor(step, **schedule_kwargs)
    if group.get("backbone") and backbone_frozen_steps > 0:
        factor *= _ramp(step, backbone_frozen_steps, unfreeze_warmup_steps)
    if group.get("offset") and offset_frozen_steps > 0:
        factor *= _ramp(step, offset_frozen_steps, unfreeze_warmup_steps)
    return factor


def build_lr_scheduler(optimizer: Optimizer, total_steps: int, schedule: str = "cosine",
                       warmup_steps: int = 0, min_lr_ratio: float = 0.0, poly_power: float = 1.0,
                       backbone_frozen_steps: int = 0, offset_frozen_steps: int = 0,
                       unfreeze_warmup_steps: int = 0) -> LambdaLR:
    """Per-step scheduler: each group's LR is its initial LR x ``lr_scale`` x
    :func:`schedule_factor` x a freeze ramp.

    Groups flagged ``backbone`` are held at 0 for ``backbone_frozen_steps`` steps, groups flagged
    ``offset`` for ``offset_frozen_steps``; afterwards they ramp up linearly over
    ``unfreeze_warmup_steps``. Step it once per optimizer step. The total length is not part of
    its state dict, so a run resumed with more steps follows the longer schedule.

    Args:
        optimizer: optimizer whose groups come from :func:`param_groups` (groups without the
            extra keys get ``lr_scale`` 1 and are never frozen).
        total_steps: optimizer steps of the whole run.
        schedule: ``"cosine"``, ``"poly"`` or ``"constant"`` after the warmup.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final LR as a fraction of the peak LR.
        poly_power: exponent of the ``poly`` schedule.
        backbone_frozen_steps: steps during which backbone groups have LR 0.
        offset_frozen_steps: steps during which offset groups have LR 0.
        unfreeze_warmup_steps: ramp length after a group is unfrozen.

    Raises:
        ValueError: for an unknown schedule or negative step counts.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {schedule!r}; choose one of {SCHEDULES}")
    counts = dict(total_steps=total_steps, warmup_steps=warmup_steps,
                  backbone_frozen_steps=backbone_frozen_steps,
                  offset_frozen_steps=offset_frozen_steps,
                  unfreeze_warmup_steps=unfreeze_warmup_steps)
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"step counts must be >= 0, got {counts}")
    schedule_kwargs = dict(total_steps=total_steps, schedule=schedule, warmup_steps=warmup_steps,
                           min_lr_ratio=min_lr_ratio, poly_power=poly_power)
    lambdas = [partial(_group_factor, optimizer=optimizer, index=i, schedule_kwargs=schedule_kwargs,
                       backbone_frozen_steps=backbone_frozen_steps,
                       offset_frozen_steps=offset_frozen_steps,
                       unfreeze_warmup_steps=unfreeze_warmup_steps)
               for i in range(len(optimizer.param_groups))]
    return LambdaLR(optimizer, lambdas)

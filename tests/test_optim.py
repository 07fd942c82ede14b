"""Parameter groups (every parameter of both DAT generations) and the per-step LR schedules."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import timm
import torch
import torch.nn as nn
from conftest import tiny_dat_kwargs
from timm.optim import create_optimizer_v2

from dat_lightning.models import create_backbone
from dat_lightning.tasks.optim import build_lr_scheduler, param_groups, schedule_factor

LAYER_DECAY, OFFSET_MULT, WD = 0.5, 0.1, 0.05


def _depth_key(name: str) -> tuple:
    """Forward-order position of a DAT parameter, read off its name: stem, then (stage, block)
    (a down-projection sits with the first block of the next stage), then the final norm/head."""
    if name.startswith("patch_proj."):
        return (0,)
    if m := re.match(r"stages\.(\d+)\.(\w+)\.(\d+)\.", name):
        index = int(m[3])
        return (1, int(m[1]), index // 2 if m[2] in ("layer_norms", "layer_scales") else index)
    if m := re.match(r"down_projs\.(\d+)\.", name):
        return (1, int(m[1]) + 1, 0)
    assert name.startswith(("cls_norm.", "cls_head.", "norms.")), name
    return (2,)


def _by_param(groups: list[dict]) -> dict[int, dict]:
    owner = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in owner, "a parameter is in two groups"
            owner[id(p)] = group
    return owner


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_every_dat_parameter_is_grouped_right(tiny_dat, generation):
    model = tiny_dat(generation, layer_scale_values=[1e-5] * 4)
    groups = param_groups(model, weight_decay=WD, layer_decay=LAYER_DECAY,
                          offset_lr_mult=OFFSET_MULT)
    owner = _by_param(groups)
    named = dict(model.named_parameters())
    assert len(owner) == len(named)
    num_layers = sum(stage.depth for stage in model.stages) + 2
    assert any("layer_scales" in n for n in named) and any("conv_offset" in n for n in named)

    seen = []
    for name, param in named.items():
        group = owner[id(param)]
        no_decay = (name.endswith(".bias") or ".norm." in name or "layer_scales" in name
                    or re.search(r"\.(rpe_table|relative_position_bias_table|rpb)$", name))
        assert group["weight_decay"] == (0.0 if no_decay else WD), name
        if not no_decay:
            assert param.ndim >= 2, name
        is_offset = ".conv_offset." in name
        assert group["offset"] == is_offset and ("offset" in group["name"]) == is_offset, name
        assert group["backbone"] == (not name.startswith("cls_head.")), name
        expected = LAYER_DECAY ** (num_layers - 1 - group["layer_id"])
        assert group["lr_scale"] == pytest.approx(expected * (OFFSET_MULT if is_offset else 1)), name
        seen.append((_depth_key(name), group["layer_id"], name))

    seen.sort(key=lambda item: item[0])
    for (key_a, id_a, a), (key_b, id_b, b) in itertools.pairwise(seen):
        assert (id_a < id_b) if key_a != key_b else (id_a == id_b), (a, b)
    assert seen[0][1] == 0 and seen[-1][1] == num_layers - 1
    assert {layer for _, layer, _ in seen} == set(range(num_layers))  # every block is a layer
    assert owner[id(model.cls_head.weight)]["lr_scale"] == 1.0


@pytest.mark.parametrize("features", [None, (0, 1, 2, 3), (0, 1)], ids=["classifier", "features",
                                                                     "features01"])
@pytest.mark.parametrize("preset", ["dat_test", "dat_pp_test"])
def test_timm_layer_decay_agrees_with_param_groups(preset, features):
    """timm's create_optimizer_v2 (via group_matcher/no_weight_decay) and param_groups give every
    parameter the same LR scale and the same decay/no-decay decision."""
    kwargs = dict(features_only=True, out_indices=features) if features else {}
    model = timm.create_model(preset, layer_scale_values=[1e-5] * 4, **kwargs)
    timm_opt = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=WD, layer_decay=0.65)
    ours = param_groups(model, weight_decay=WD, layer_decay=0.65)
    timm_owner, our_owner = _by_param(timm_opt.param_groups), _by_param(ours)
    named = dict(model.named_parameters())
    assert len(timm_owner) == len(our_owner) == len(named)
    for name, param in named.items():
        mine, theirs = our_owner[id(param)], timm_owner[id(param)]
        assert mine["lr_scale"] == pytest.approx(theirs["lr_scale"], rel=1e-12), name
        assert mine["weight_decay"] == theirs["weight_decay"], name
    assert len({g["lr_scale"] for g in ours}) == model.num_layers()


def test_groups_of_a_wrapped_feature_backbone_and_defaults():
    """A DATFeatures inside a bigger module: prefix found, new output norms and the head are not
    backbone, decay falls back to the optimizer default, excluded prefixes are left out."""
    kwargs = {k: v for k, v in tiny_dat_kwargs("v1").items() if k != "num_classes"}
    wrapper = nn.Module()
    wrapper.backbone = create_backbone("dat_tiny", features_only=True, **kwargs)
    wrapper.head = nn.Conv2d(128, 3, 1)
    wrapper.copy = nn.Linear(2, 2)
    groups = param_groups(wrapper, exclude=("copy.",))
    owner = _by_param(groups)
    assert len(owner) == len([n for n, _ in wrapper.named_parameters() if not n.startswith("copy.")])
    assert {g["name"] for g in groups} == {"backbone_decay", "backbone_no_decay",
                                          "backbone_offset_decay", "backbone_offset_no_decay",
                                          "head_decay", "head_no_decay"}
    assert "weight_decay" not in owner[id(wrapper.head.weight)]
    assert owner[id(wrapper.head.bias)]["weight_decay"] == 0.0
    assert not owner[id(wrapper.backbone.norms[0].norm.weight)]["backbone"]
    assert owner[id(wrapper.backbone.patch_proj[0].weight)]["backbone"]
    optimizer = torch.optim.AdamW(groups, lr=1.0, weight_decay=0.3)
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decays["backbone_decay"] == decays["head_decay"] == 0.3
    assert decays["backbone_no_decay"] == 0.0


def test_param_group_errors():
    with pytest.raises(ValueError, match="needs a DAT backbone"):
        param_groups(nn.Linear(2, 2), layer_decay=0.9)
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        param_groups(nn.Linear(2, 2), layer_decay=1.5)
    assert [g["name"] for g in param_groups(nn.Linear(2, 2))] == ["head_decay", "head_no_decay"]


def test_schedule_factor_shapes():
    total, warmup = 20, 4
    assert [schedule_factor(s, total, "cosine", warmup) for s in range(warmup)] == [0.25, 0.5, 0.75, 1]
    assert schedule_factor(warmup, total, "cosine", warmup) == 1.0
    mid = warmup + (total - warmup) // 2
    assert schedule_factor(mid, total, "cosine", warmup, min_lr_ratio=0.2) == pytest.approx(0.6)
    assert schedule_factor(total, total, "cosine", warmup, min_lr_ratio=0.2) == pytest.approx(0.2)
    assert schedule_factor(mid, total, "poly", warmup, poly_power=2.0) == pytest.approx(0.25)
    assert schedule_factor(total, total, "poly", warmup) == 0.0
    assert schedule_factor(total, total, "constant", warmup) == 1.0
    with pytest.raises(ValueError, match="unknown LR schedule 'step'"):
        schedule_factor(10, total, "step")


def _toy_groups() -> list[dict]:
    return [dict(params=[nn.Parameter(torch.zeros(1))], name="backbone_decay", lr_scale=0.5,
                 backbone=True, offset=False),
            dict(params=[nn.Parameter(torch.zeros(1))], name="backbone_offset_decay",
                 lr_scale=0.1, backbone=True, offset=True),
            dict(params=[nn.Parameter(torch.zeros(1))], name="head_decay", lr_scale=1.0,
                 backbone=False, offset=False)]


def test_scheduler_freezes_ramps_and_scales_each_group():
    base, total = 0.1, 12
    optimizer = torch.optim.SGD(_toy_groups(), lr=base)
    scheduler = build_lr_scheduler(optimizer, total, "poly", warmup_steps=2,
                                   backbone_frozen_steps=3, offset_frozen_steps=5,
                                   unfreeze_warmup_steps=2)
    ramp_backbone = [0, 0, 0, 0.5, 1, 1, 1, 1]
    ramp_offset = [0, 0, 0, 0, 0, 0.5, 1, 1]
    for step in range(8):
        expected = base * schedule_factor(step, total, "poly", 2)
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs == pytest.approx([expected * 0.5 * ramp_backbone[step],
                                     expected * 0.1 * ramp_backbone[step] * ramp_offset[step],
                                     expected]), step
        optimizer.step()
        scheduler.step()
    # lr_scale is read live: a callback lowering it changes the LR from the next step on
    optimizer.param_groups[2]["lr_scale"] = 0.25
    scheduler.step()
    expected = 0.25 * base * schedule_factor(9, total, "poly", 2)
    assert optimizer.param_groups[2]["lr"] == pytest.approx(expected)


def test_scheduler_state_resumes_on_a_longer_run():
    """The step count comes from the state dict, the run length from the new scheduler."""
    optimizer = torch.optim.SGD(_toy_groups(), lr=1.0)
    scheduler = build_lr_scheduler(optimizer, 10, "cosine", warmup_steps=2)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    resumed_opt = torch.optim.SGD(_toy_groups(), lr=1.0)
    resumed_opt.load_state_dict(optimizer.state_dict())
    resumed = build_lr_scheduler(resumed_opt, 30, "cosine", warmup_steps=2)
    resumed.load_state_dict(state)
    resumed_opt.step()
    resumed.step()
    assert resumed.last_epoch == 5
    head = resumed_opt.param_groups[2]
    assert head["lr"] == pytest.approx(schedule_factor(5, 30, "cosine", 2))
    assert head["lr"] > schedule_factor(5, 10, "cosine", 2)
    assert not math.isclose(head["lr"], schedule_factor(5, 10, "cosine", 2))


def test_scheduler_rejects_bad_settings():
    optimizer = torch.optim.SGD(_toy_groups(), lr=1.0)
    with pytest.raises(ValueError, match="unknown LR schedule"):
        build_lr_scheduler(optimizer, 10, "linear")
    with pytest.raises(ValueError, match="must be >= 0"):
        build_lr_scheduler(optimizer, 10, warmup_steps=-1)

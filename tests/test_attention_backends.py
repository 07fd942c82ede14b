"""The deformable block's attention paths: the recomputing position-bias function, the FlexAttention
backend and its selection, against straightforward formulations and the official gradients."""

from __future__ import annotations

import json

import pytest
import torch
import torch.fx
import torch.nn.functional as F

from dat_lightning.models import from_official_config
from dat_lightning.models.layers import DeformableAttention, set_attention_backend
from dat_lightning.models.layers.deformable_attention import position_bias, query_grid
from dat_lightning.models.layers.flex_attention import deformable_score_mod


def plain_position_bias(pos, table, query_pos, batch):
    """The bias by autograd through ``grid_sample``, one table copy per image (official layout)."""
    groups = pos.shape[0] // batch
    heads, ht, wt = table.shape
    disp = query_pos.view(1, -1, 1, 2) - pos.flatten(1, 2).unsqueeze(1)  # [B*g, HW, Ns, 2]
    grouped = table.view(groups, heads // groups, ht, wt).repeat(batch, 1, 1, 1)
    bias = F.grid_sample(grouped, disp.flip(-1) * 0.5, mode="bilinear", align_corners=True)
    return bias.reshape(batch, heads, *bias.shape[2:])


def bias_inputs(dtype, batch=2, groups=2, heads=4, hw=(3, 4), keys=(2, 3), table=(5, 7), seed=0):
    """Positions partly outside [-1, 1] (bounded offsets can leave it) to exercise the padding."""
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(batch * groups, *keys, 2, generator=g, dtype=dtype) * 2.4 - 1.2)
    table = torch.randn(heads, *table, generator=g, dtype=dtype)
    query_pos = query_grid(*hw, "pp", dtype, "cpu").view(-1, 2)
    return pos.requires_grad_(), table.requires_grad_(), query_pos


def test_position_bias_gradcheck():
    pos, table, query_pos = bias_inputs(torch.float64)
    assert torch.autograd.gradcheck(lambda p, t: position_bias(p, t, query_pos, 2), (pos, table))


def test_position_bias_matches_autograd_through_grid_sample():
    pos, table, query_pos = bias_inputs(torch.float32)
    weight = torch.randn(2, 4, 12, 6)
    got = position_bias(pos, table, query_pos, 2)
    grads = torch.autograd.grad((got * weight).sum(), (pos, table))
    expected = plain_position_bias(pos, table, query_pos, 2)
    expected_grads = torch.autograd.grad((expected * weight).sum(), (pos, table))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_position_bias_saves_only_positions_and_table():
    pos, table, query_pos = bias_inputs(torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        position_bias(pos, table, query_pos, 2)
    assert sorted(t.numel() for t in saved) == sorted([pos.numel(), table.numel(),
                                                       query_pos.numel()])


def load_grad_fixture(folder):
    """The model of a gradient fixture (train mode, official weights loaded strictly)."""
    model = from_official_config(json.loads((folder / "config.json").read_text())).train()
    state = torch.load(folder / "checkpoint.pth", weights_only=True)["model"]
    model.load_state_dict(state, strict=True)
    return model


def check_official_gradients(model, folder):
    """The fixtures' README rule: |got - exp| <= 1e-4 * scale + 1e-4 * |exp| per tensor (the model
    may be on any device; the comparison runs on the CPU)."""
    device = next(model.parameters()).device
    x = torch.load(folder / "input.pt", weights_only=True).to(device).requires_grad_()
    weight = torch.load(folder / "weight.pt", weights_only=True).to(device)
    expected = torch.load(folder / "grads.pt", weights_only=True)
    (model(x) * weight).sum().backward()
    floor = 1e-4 * max(g.abs().max().item() for g in expected["params"].values())
    got = {"input": x.grad.cpu(), **{n: p.grad.cpu() for n, p in model.named_parameters()}}
    want = {"input": expected["input"], **expected["params"]}
    assert set(got) == set(want)
    for name, exp in want.items():
        scale = exp.abs().max().item() if name == "input" else max(exp.abs().max().item(), floor)
        excess = (got[name] - exp).abs() - (1e-4 * scale + 1e-4 * exp.abs())
        assert excess.max().item() <= 0, f"{name}: max error {(got[name] - exp).abs().max():.3g}"


@pytest.mark.parametrize("name", ["v1_grad_224", "pp_grad_192"])
def test_official_gradients_reproduced(official_dir, name):
    folder = official_dir.parent / "grads" / name
    check_official_gradients(load_grad_fixture(folder), folder)


def test_score_mod_matches_bias_and_its_gradients():
    """Evaluated on broadcast index grids (what FlexAttention's dense reference does), the
    score_mod is the reference bias, and autograd through it gives the same gradients to the table
    and the positions as the reference path."""
    pos, table, query_pos = bias_inputs(torch.float64, seed=1)
    batch, heads = 2, table.shape[0]
    keys = pos.view(batch, -1, pos.shape[1] * pos.shape[2], 2)
    score_mod = deformable_score_mod(table, keys, query_pos, heads // keys.shape[1])
    b, h, q, k = torch.meshgrid(torch.arange(batch), torch.arange(heads),
                                torch.arange(query_pos.shape[0]), torch.arange(keys.shape[2]),
                                indexing="ij")
    got = score_mod(torch.zeros(b.shape, dtype=torch.float64), b, h, q, k)
    expected = position_bias(pos, table, query_pos, batch)
    weight = torch.randn(expected.shape, dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad((got * weight).sum(), (pos, table))
    expected_grads = torch.autograd.grad((expected * weight).sum(), (pos, table))
    for a, e in zip(grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-8)


def tiny_deformable(generation: str) -> DeformableAttention:
    torch.manual_seed(0)
    layer = DeformableAttention(32, 4, 2, (6, 6), offset_range_factor=2.0 if generation == "v1"
                                else -1.0, generation=generation).eval()
    with torch.no_grad():
        layer.rpe_table.normal_()  # a bias large enough to matter in the comparison
    return layer


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_flex_backend_matches_reference(generation):
    """FlexAttention (compiled by inductor on the CPU) equals the reference path within 1e-4."""
    layer = tiny_deformable(generation)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        expected = layer(x)
        set_attention_backend(layer, "flex")
        got = layer(x)
    assert (got - expected).abs().max().item() <= 1e-4


def test_flex_backend_refuses_cpu_training():
    layer = tiny_deformable("pp").train()
    set_attention_backend(layer, "flex")
    with pytest.raises(RuntimeError, match=r"cannot train on the CPU.*'auto'"):
        layer(torch.randn(1, 32, 6, 6))


def test_auto_backend_and_attention_recording_use_the_reference_path():
    layer = tiny_deformable("v1")
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        expected = layer(x)
        set_attention_backend(layer, "flex")
        layer.record_offsets = layer.record_attention = True
        got = layer(x)  # needs the probabilities: the reference path even with "flex"
    assert torch.equal(got, expected)  # "auto" on the CPU: the reference path, bit for bit
    probs = layer.last_record.attn
    assert probs.shape == (1, 4, 36, 36)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 36))


def test_set_attention_backend_errors(tiny_dat):
    model = tiny_dat("v1")
    assert set_attention_backend(model, "reference") == len(model.deformable_blocks())
    assert {b.attention_backend for _, b in model.deformable_blocks()} == {"reference"}
    with pytest.raises(ValueError, match=r"unknown attention backend 'fast'.*'flex'"):
        set_attention_backend(model, "fast")
    with pytest.raises(ValueError, match="Linear has no deformable attention blocks"):
        set_attention_backend(torch.nn.Linear(2, 2), "flex")


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_deformable_layer_is_fx_traceable(generation):
    layer = tiny_deformable(generation)
    graph = torch.fx.symbolic_trace(layer)
    for shape in ((2, 32, 6, 6), (1, 32, 5, 9)):  # sizes stay symbolic in the traced graph
        x = torch.randn(shape)
        assert torch.equal(graph(x), layer(x))

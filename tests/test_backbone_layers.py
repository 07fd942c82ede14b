"""Backbone behaviour beyond the official fixtures: any input size, neighborhood attention
semantics, window padding, introspection, gradient checkpointing and drop path."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from dat_lightning.models import DAT
from dat_lightning.models.layers import (
    DeformableAttention,
    NeighborhoodAttention2d,
    WindowAttention,
    set_attention_recompute,
)
from dat_lightning.models.layers.deformable_attention import (
    _attend,
    _reference_attend,
    query_grid,
    reference_points,
)
from dat_lightning.models.layers.neighborhood_attention import (
    neighborhood_attention,
    recomputed_neighborhood_attention,
)


def loop_neighborhood_attention(q, k, v, rpb, kernel):
    """Direct per-query implementation of natten 0.14 semantics (dilation 1, odd kernel)."""
    B, nh, H, W, hd = q.shape
    out = torch.zeros_like(q)
    for i in range(H):
        r0 = min(max(i - kernel // 2, 0), H - kernel)
        for j in range(W):
            c0 = min(max(j - kernel // 2, 0), W - kernel)
            keys = k[:, :, r0:r0 + kernel, c0:c0 + kernel].reshape(B, nh, -1, hd)
            vals = v[:, :, r0:r0 + kernel, c0:c0 + kernel].reshape(B, nh, -1, hd)
            logits = torch.einsum("bhc,bhnc->bhn", q[:, :, i, j] * hd ** -0.5, keys)
            bias = rpb[:, r0 - i + kernel - 1:r0 - i + 2 * kernel - 1,
                       c0 - j + kernel - 1:c0 - j + 2 * kernel - 1]
            logits = logits + bias.reshape(1, nh, -1)
            out[:, :, i, j] = torch.einsum("bhn,bhnc->bhc", logits.softmax(-1), vals)
    return out


@pytest.mark.parametrize(("size", "kernel", "tile"), [
    ((7, 7), 7, 7), ((9, 11), 3, 4), ((13, 8), 5, 3), ((10, 10), 7, 7), ((6, 15), 5, 16),
])
def test_neighborhood_attention_matches_loop_reference(size, kernel, tile):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, *size, 4, generator=g) for _ in range(3))
    rpb = torch.randn(3, 2 * kernel - 1, 2 * kernel - 1, generator=g)
    got = neighborhood_attention(q, k, v, rpb, kernel, tile=tile)
    torch.testing.assert_close(got, loop_neighborhood_attention(q, k, v, rpb, kernel),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(4, 5), (7, 3), (2, 2)])
def test_neighborhood_module_pads_maps_smaller_than_kernel(size):
    torch.manual_seed(0)
    attn = NeighborhoodAttention2d(dim=8, heads=2, kernel_size=7).eval()
    x = torch.randn(1, 8, *size)
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, 7 - size[1], 0, 7 - size[0]))
    qkv = attn.qkv(padded).view(1, 7, 7, 3, 2, 4).permute(3, 0, 4, 1, 2, 5)
    ref = loop_neighborhood_attention(qkv[0], qkv[1], qkv[2], attn.rpb, 7)
    ref = ref.permute(0, 2, 3, 1, 4).reshape(1, 7, 7, 8)[:, :size[0], :size[1]]
    expected = attn.proj(ref).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_neighborhood_attention_rejects_small_maps():
    q = torch.randn(1, 1, 3, 3, 2)
    with pytest.raises(ValueError, match="pad the input first"):
        neighborhood_attention(q, q, q, None, 5)


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_pads_without_masking_and_crops(shift):
    """Odd sizes behave as the zero-padded map (pad tokens unmasked), cropped back."""
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, heads=2, window_size=4, fmap_size=(8, 8), shift=shift).eval()
    x = torch.randn(2, 8, 10, 7)
    with torch.no_grad():
        got = attn(x)
        expected = attn(F.pad(x, (0, 1, 0, 2)))[:, :, :10, :7]
    torch.testing.assert_close(got, expected)


def small_v1(**overrides) -> DAT:
    """Narrow DAT v1 with the dat_tiny block layout (deformable blocks in stages 3 and 4)."""
    return DAT(**{**dict(
        img_size=224, num_classes=5, generation="v1", dim_stem=16, dims=[16, 32, 64, 128],
        depths=[2, 2, 2, 2], heads=[1, 2, 4, 8],
        stage_spec=[["L", "S"], ["L", "S"], ["L", "D"], ["L", "D"]], groups=[-1, -1, 2, 4],
        use_pes=[False, False, True, True], strides=[-1, -1, 1, 1],
        offset_range_factor=[-1, -1, 2, 2]), **overrides})


def small_pp(**overrides) -> DAT:
    """Narrow DAT++ with the official strides 8/4/2/1 and kernels."""
    return DAT(**{**dict(
        img_size=224, num_classes=5, generation="pp", dim_stem=16, dims=[16, 32, 64, 128],
        depths=[2, 2, 2, 2], heads=[1, 2, 4, 8],
        stage_spec=[["N", "D"], ["N", "D"], ["N", "D"], ["D", "D"]], groups=[1, 1, 2, 4],
        use_pes=[True] * 4, strides=[8, 4, 2, 1], offset_range_factor=[-1] * 4,
        use_dwc_mlps=[True] * 4, use_lpus=[True] * 4, use_conv_patches=True,
        ksizes=[9, 7, 5, 3], nat_ksizes=[7] * 4), **overrides})


@pytest.mark.parametrize("build", [small_v1, small_pp], ids=["v1", "pp"])
@pytest.mark.parametrize("size", [(32, 32), (230, 250), (512, 683), (800, 1216)])
def test_any_input_size_is_finite(build, size):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(1, 3, *size, requires_grad=True)
    logits = model(x)
    logits.square().sum().backward()
    assert logits.shape == (1, 5)
    assert torch.isfinite(logits).all()
    assert torch.isfinite(x.grad).all()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_pp_single_cell_key_grid_is_centred():
    """DAT++ divides by (size - 1); a 1x1 key grid or map is defined to sit at the centre."""
    assert reference_points(1, 1, "pp", torch.float32, "cpu").abs().max() == 0
    assert query_grid(1, 1, "pp", torch.float32, "cpu").abs().max() == 0
    torch.manual_seed(0)
    model = small_pp().eval()
    for _, block in model.deformable_blocks():
        block.record_offsets = True
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out).all()
    stage0 = model.stages[0].attns[1].last_record
    assert stage0.key_grid == (1, 1)
    assert torch.isfinite(stage0.pos).all()


def test_records_and_saturation_flags():
    torch.manual_seed(0)
    attn = DeformableAttention(dim=16, heads=4, groups=2, fmap_size=(8, 8), stride=2, ksize=3,
                               offset_range_factor=-1, generation="pp")
    with torch.no_grad():
        attn.conv_offset[-1].weight.mul_(50)  # push many points against the border
    attn.record_offsets = True
    attn(torch.randn(2, 16, 8, 8))
    rec = attn.last_record
    assert rec.pos.shape == (2, 2, 4, 4, 2) and rec.ref.shape == rec.pos.shape
    assert rec.pos.abs().max() <= 1.0
    clamped = rec.pos.abs().amax(-1) >= 1.0
    assert clamped.any()
    assert torch.equal(rec.saturated, clamped)
    assert rec.attn is None
    attn.record_attention = True
    attn(torch.randn(2, 16, 8, 8))
    probs = attn.last_record.attn
    assert probs.shape == (2, 4, 64, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 64))


def test_attention_recording_does_not_change_outputs():
    torch.manual_seed(0)
    model = small_v1().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        for _, block in model.deformable_blocks():
            block.record_offsets = block.record_attention = True
        recorded = model(x)
    torch.testing.assert_close(plain, recorded, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = small_pp(drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-4, atol=1e-5, msg=name)


def test_drop_path_is_stochastic_in_training_only():
    torch.manual_seed(0)
    model = small_v1(drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_no_weight_decay_names_position_tables():
    model = small_v1()
    names = model.no_weight_decay()
    tables = {n for n, _ in model.named_parameters()
              if n.endswith(("relative_position_bias_table", "rpe_table"))}
    assert tables and names == tables
    assert {"relative_position_bias_table", "rpe_table"} <= model.no_weight_decay_keywords()


def test_bad_configs_explain_themselves():
    with pytest.raises(ValueError, match="depths"):
        small_v1(depths=[2, 2, 3, 2])
    with pytest.raises(ValueError, match="generation"):
        small_v1(generation="v3")
    with pytest.raises(ValueError, match="DAT\\+\\+ features"):
        small_v1(use_conv_patches=True)
    with pytest.raises(ValueError, match="unknown block type"):
        small_v1(stage_spec=[["L", "S"], ["L", "S"], ["L", "X"], ["L", "D"]])


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_neighborhood_attention_recomputes_its_tiles_in_backward(dropout_p):
    """In training the tiles (gathered keys and values, mask, probabilities) are recomputed in
    backward instead of saved: the same outputs and gradients as the stored computation, the
    dropout mask replayed, and only the inputs kept between forward and backward."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 11, 8, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 9, 9, requires_grad=True)
    results = []
    for attend in (neighborhood_attention, recomputed_neighborhood_attention):
        torch.manual_seed(1)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t) or t,
                                                      lambda t: t):
            out = attend(q, k, v, rpb, 5, tile=4, dropout_p=dropout_p)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v, rpb))
        results.append((out, grads, sum(t.numel() for t in saved)))
    (ref, ref_grads, ref_saved), (out, grads, recomputed_saved) = results
    assert torch.equal(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    assert ref_saved > 4 * q.numel()  # the stored computation keeps the tiles
    assert recomputed_saved == 3 * q.numel() + rpb.numel()  # the inputs, nothing else


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_deformable_attention_recomputes_bias_and_probabilities_in_backward(dropout_p):
    """The reference path in training keeps only its inputs and recomputes the sampled bias,
    logits and probabilities in backward: the same outputs and gradients as storing them."""
    torch.manual_seed(0)
    batch, heads, groups, hw, hk = 2, 4, 2, 12, 3
    q = torch.randn(batch, heads, hw, 8, requires_grad=True)
    k, v = (torch.randn(batch, heads, hk * hk, 8, requires_grad=True) for _ in range(2))
    pos = (torch.rand(batch * groups, hk, hk, 2) * 2 - 1).requires_grad_()
    table = torch.randn(heads, 7, 9, requires_grad=True)
    query_pos = query_grid(3, 4, "v1", torch.float32, "cpu").view(hw, 2)
    inputs = (q, k, v, pos, table)
    results = []
    for attend in (_reference_attend, partial(_attend, backend="reference", recompute=True)):
        torch.manual_seed(1)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t) or t,
                                                      lambda t: t):
            out, _ = attend(q, k, v, pos, table, query_pos, 0.35, dropout_p=dropout_p,
                            need_probs=False)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        results.append((out, grads, {t.data_ptr() for t in saved}))
    (ref, ref_grads, ref_saved), (out, grads, recomputed_saved) = results
    assert torch.equal(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    kept = {t.data_ptr() for t in (*inputs, query_pos)}
    assert recomputed_saved <= kept  # the inputs only
    assert not ref_saved <= kept  # storing keeps the logits' probabilities


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_recompute_attention_option_saves_less_with_the_same_gradients(generation, tiny_dat):
    """``recompute_attention=True`` (the constructor or ``set_attention_recompute``) changes only
    what a train step keeps between forward and backward."""
    x = torch.randn(2, 3, 64, 64)
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = tiny_dat(generation, recompute_attention=recompute).train()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t) or t,
                                                      lambda t: t):
            out = model(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        results.append((out, grads, sum(t.numel() for t in saved)))
    (ref, ref_grads, ref_saved), (out, grads, saved) = results
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    assert saved < ref_saved
    torch.manual_seed(0)
    model = tiny_dat(generation)
    expected = sum(isinstance(m, (DeformableAttention, NeighborhoodAttention2d))
                   for m in model.modules())
    assert set_attention_recompute(model) == expected > 0
    with pytest.raises(ValueError, match="no deformable or neighborhood attention"):
        set_attention_recompute(WindowAttention(16, 2, 4, (8, 8)))

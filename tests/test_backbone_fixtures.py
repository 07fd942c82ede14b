"""The DAT/DAT++ backbones against reference data produced by the official code."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_close, position_scale

from dat_lightning.models import OFFICIAL_CONFIGS, from_official_config
from dat_lightning.models.layers.window_attention import shift_window_mask

STRICT_FIXTURES = ["v1_main", "pp_main", "pp_run96", "pp_run384_built224"]
MANIFESTS = {
    "dat_tiny": "v1_dat_tiny", "dat_small": "v1_dat_small", "dat_base": "v1_dat_base",
    "dat_base_384": "v1_dat_base_384", "dat_pp_tiny": "pp_dat_tiny",
    "dat_pp_small": "pp_dat_small", "dat_pp_base": "pp_dat_base",
    "dat_pp_base_384": "pp_dat_base_384",
}


def load_fixture(official_dir, name: str):
    folder = official_dir / name
    config = json.loads((folder / "config.json").read_text())
    meta = json.loads((folder / "meta.json").read_text())
    model = from_official_config(config).eval()
    state = torch.load(folder / meta["checkpoint"], map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"], strict=True)
    inputs = torch.load(folder / "input.pt", weights_only=True)
    expected = torch.load(folder / "expected.pt", weights_only=True)
    return model, inputs, expected


@pytest.mark.parametrize("name", STRICT_FIXTURES)
def test_official_outputs_reproduced(official_dir, name):
    model, inputs, expected = load_fixture(official_dir, name)
    blocks = dict(model.deformable_blocks())
    assert set(blocks) == set(expected["attn_pos_ref"])
    for block in blocks.values():
        block.record_offsets = True
    with torch.no_grad():
        logits = model(inputs)
    assert_close(logits, expected["logits"])
    for block_name, block in blocks.items():
        ref = expected["attn_pos_ref"][block_name]
        for got, exp in ((block.last_record.pos, ref["pos"]), (block.last_record.ref, ref["ref"])):
            assert_close(got, exp, position_scale(exp))


def test_v1_positions_per_stage(official_dir):
    """v1's top-level outputs list positions/references per stage and block (None for L/S)."""
    model, inputs, expected = load_fixture(official_dir, "v1_main")
    for _, block in model.deformable_blocks():
        block.record_offsets = True
    with torch.no_grad():
        model(inputs)
    for i, stage in enumerate(model.stages):
        for d, attn in enumerate(stage.attns):
            exp_pos, exp_ref = expected["positions"][i][d], expected["references"][i][d]
            if stage.spec[d] != "D":
                assert exp_pos is None and exp_ref is None
                continue
            assert_close(attn.last_record.pos, exp_pos, position_scale(exp_pos))
            assert_close(attn.last_record.ref, exp_ref, position_scale(exp_ref))


@pytest.mark.parametrize("name", ["v1_main", "pp_main"])
def test_intermediate_feature_maps(official_dir, name):
    model, inputs, expected = load_fixture(official_dir, name)
    inter = expected["intermediates"]
    with torch.no_grad():
        stem = model.patch_proj(inputs)
        _, maps = model.forward_intermediates(inputs)
    assert_close(stem, inter["patch_proj"])
    for i, fmap in enumerate(maps):
        assert_close(fmap, inter[f"stages.{i}"])


def test_recording_is_off_by_default(official_dir):
    model, inputs, _ = load_fixture(official_dir, "pp_run96")
    with torch.no_grad():
        model(inputs)
    assert all(block.last_record is None for _, block in model.deformable_blocks())


@pytest.mark.parametrize("preset", sorted(MANIFESTS))
def test_presets_match_official_manifests(official_dir, preset):
    manifest = json.loads((official_dir / "manifests" / f"{MANIFESTS[preset]}.json").read_text())
    assert OFFICIAL_CONFIGS[preset] == manifest["model_kwargs"]
    model = from_official_config(OFFICIAL_CONFIGS[preset])
    entries = manifest["entries"]
    state = model.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e[0], e[1]) for e in entries]
    assert [str(v.dtype).replace("torch.", "") for v in state.values()] == [e[3] for e in entries]
    buffers = {n for n, _ in model.named_buffers()}
    assert {e[0] for e in entries if e[2] == "buffer"} == buffers
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    zeros = {e[0]: torch.zeros(e[1], dtype=getattr(torch, e[3])) for e in entries}
    model.load_state_dict(zeros, strict=True)


def test_shift_mask_matches_official_buffer(official_dir):
    state = torch.load(official_dir / "v1_main" / "checkpoint.pth", weights_only=True)["model"]
    expected = state["stages.0.attns.1.attn_mask"]  # 56x56 map, window 7, shift 4
    assert torch.equal(shift_window_mask(56, 56, 7, 4), expected)

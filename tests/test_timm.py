"""timm integration: presets vs official manifests, pretrained loading, features_only, protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import tiny_dat_kwargs
from timm.optim import create_optimizer_v2

from dat_lightning.models import DAT, DATFeatures, create_backbone

PRESETS = ["dat_tiny", "dat_small", "dat_base", "dat_base_384", "dat_pp_tiny", "dat_pp_small",
           "dat_pp_base", "dat_pp_base_384"]


def _manifest(official_dir: Path, preset: str) -> dict:
    family = "pp" if preset.startswith("dat_pp_") else "v1"
    name = preset.removeprefix("dat_pp_" if family == "pp" else "dat_")
    return json.loads((official_dir / "manifests" / f"{family}_dat_{name}.json").read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_matches_official_manifest(official_dir: Path, preset: str) -> None:
    manifest = _manifest(official_dir, preset)
    model = timm.create_model(preset)
    state = model.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == [e[:2] for e in manifest["entries"]]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    zeros = {k: torch.zeros(shape, dtype=getattr(torch, dtype))
             for k, shape, _, dtype in manifest["entries"]}
    model.load_state_dict(zeros, strict=True)
    cfg = model.pretrained_cfg
    assert cfg["input_size"][-1] == manifest["yaml_DATA_IMG_SIZE"]
    assert (cfg["architecture"], cfg["tag"]) == (preset, "in1k")


@pytest.mark.parametrize("preset", ["dat_tiny", "dat_pp_tiny"])
def test_features_only_maps(official_dir: Path, preset: str) -> None:
    dims = _manifest(official_dir, preset)["model_kwargs"]["dims"]
    model = timm.create_model(preset, features_only=True)
    assert isinstance(model, DATFeatures)
    assert model.feature_info.channels() == dims
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, c, 32 // s, 32 // s)
                                              for c, s in zip(dims, (4, 8, 16, 32))]
    subset = timm.create_model(preset, features_only=True, out_indices=(1, 2, 3))
    assert subset.feature_info.channels() == dims[1:]


@pytest.fixture
def tiny_checkpoint(tmp_path: Path):
    """A tiny v1 DAT (1000 classes) saved like an official checkpoint."""
    torch.manual_seed(0)
    source = DAT(**tiny_dat_kwargs("v1", num_classes=1000)).eval()
    path = tmp_path / "dat_tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    return source, path


def test_pretrained_through_timm(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    source, path = tiny_checkpoint
    tiny = tiny_dat_kwargs("v1")
    tiny.pop("num_classes")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_logits = source(x)
        ref_maps = source.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)

    overlay = dict(file=str(path))
    same = timm.create_model("dat_tiny", pretrained=True, pretrained_cfg_overlay=overlay,
                             **tiny).eval()
    with torch.no_grad():
        assert torch.equal(same(x), ref_logits)

    ten = timm.create_model("dat_tiny", pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=overlay, **tiny).eval()
    assert ten.cls_head.out_features == 10
    with torch.no_grad():
        assert torch.equal(ten.forward_features(x), source.forward_features(x))

    feats = timm.create_model("dat_tiny", pretrained=True, features_only=True, out_indices=(1, 2, 3),
                              pretrained_cfg_overlay=overlay, **tiny).eval()
    with torch.no_grad():
        for got, exp in zip(feats(x), ref_maps, strict=True):
            exp = F.layer_norm(exp.permute(0, 2, 3, 1), exp.shape[1:2]).permute(0, 3, 1, 2)
            assert torch.allclose(got, exp, atol=1e-5)

    # the registered name, already in the hub cache: no network needed
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "dat_tiny_in1k_224.pth").write_bytes(path.read_bytes())
    cached = timm.create_model("dat_tiny", pretrained=True, **tiny).eval()
    with torch.no_grad():
        assert torch.equal(cached(x), ref_logits)
    backbone = create_backbone("dat_tiny", "dat_tiny.in1k", features_only=True, **tiny).eval()
    assert len(backbone(x)) == 4


def test_create_backbone(tiny_checkpoint) -> None:
    source, path = tiny_checkpoint
    tiny = tiny_dat_kwargs("v1")
    tiny.pop("num_classes")
    model = create_backbone("dat_tiny", str(path), drop_path_rate=0.1, **tiny).eval()
    assert isinstance(model, DAT) and model.num_classes == 0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source.forward_head(source.forward_features(x),
                                                         pre_logits=True))
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    feats = create_backbone("dat_tiny", None, features_only=True, out_indices=(2, 3), **tiny)
    assert feats.feature_info.reduction() == [16, 32]


def test_timm_model_protocol(tiny_dat) -> None:
    model = tiny_dat("pp")
    x = torch.randn(1, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (1, 128, 1, 1)
    assert model.forward_head(feats, pre_logits=True).shape == (1, 128)
    assert model.forward_head(feats).shape == (1, 10)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(x).shape == (1, 5)
    model.reset_classifier(0)
    assert model(x).shape == (1, 128)

    no_decay = model.no_weight_decay()
    assert no_decay and all(n.endswith(("rpe_table", "rpb")) for n in no_decay)
    assert {n for n, _ in model.named_parameters() if n.endswith(("rpe_table", "rpb"))} == no_decay

    model.reset_classifier(10)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    owner = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert len(owner) == len(list(model.parameters()))  # every parameter in exactly one group
    scale = {n: owner[id(p)]["lr_scale"] for n, p in model.named_parameters()}
    assert scale["cls_head.weight"] == 1.0
    assert scale["patch_proj.0.weight"] == min(scale.values())
    first = scale["stages.0.attns.0.qkv.weight"]
    assert scale["patch_proj.0.weight"] < first < scale["stages.3.attns.1.proj_q.weight"] < 1.0
    assert scale["stages.0.attns.0.qkv.weight"] == scale["stages.0.mlps.0.linear1.0.weight"]
    assert owner[id(model.get_parameter("stages.0.attns.1.rpe_table"))]["weight_decay"] == 0.0

    torch.manual_seed(0)
    model.train()
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():  # recomputation reorders float sums: not bitwise
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5, msg=n)

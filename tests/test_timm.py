"""The presets as timm runs its own families: forward/backward, default cfgs, pooling, features,
forward_intermediates, FX, pretrained loading (in_chans, num_classes, every entry point), names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import _fx as timm_fx
from timm.models import adapt_input_conv, get_pretrained_cfg

from dat_lightning.models import DAT, PRESETS, TEST_CONFIGS, DATFeatures, create_backbone

TEST_PRESETS = list(TEST_CONFIGS)
OFFICIAL_PRESETS = [p for p in PRESETS if p not in TEST_CONFIGS]


def _input(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def test_architecture_module_imports_neither_downloader_nor_lightning() -> None:
    code = ("import sys, dat_lightning.models.dat; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'lightning' or m in "
            "('dat_lightning.models.weights', 'dat_lightning.models.checkpoint')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("preset", OFFICIAL_PRESETS)
def test_official_default_cfg(official_dir: Path, preset: str) -> None:
    """Without building the model: the registered cfg names real keys and the official sizes."""
    family, name = ("pp", preset.removeprefix("dat_pp_")) if preset.startswith("dat_pp_") else \
        ("v1", preset.removeprefix("dat_"))
    manifest = json.loads((official_dir / "manifests" / f"{family}_dat_{name}.json").read_text())
    keys = {entry[0] for entry in manifest["entries"]}
    cfg = get_pretrained_cfg(f"{preset}.in1k").to_dict()
    assert cfg["input_size"][-1] == manifest["yaml_DATA_IMG_SIZE"]
    assert cfg["pool_size"] == (cfg["input_size"][-1] // 32,) * 2
    assert f"{cfg['first_conv']}.weight" in keys and f"{cfg['classifier']}.weight" in keys


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_forward_backward_default_cfg(preset: str) -> None:
    model = timm.create_model(preset, num_classes=42).train()
    x = _input(model)
    out = model(x)
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

    model.eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-2:] == cfg["pool_size"]
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), features)
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state
    assert cfg["classifier"] == "cls_head"  # reset to Identity above; its weight exists when built


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", ""])
def test_global_pool(pool: str) -> None:
    model = timm.create_model("dat_test", num_classes=3, global_pool=pool).eval()
    x = _input(model, seed=1)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(x)
    expected = {"avg": features.mean((2, 3)), "max": features.amax((2, 3)),
                "avgmax": (features.mean((2, 3)) + features.amax((2, 3))) / 2, "": features}[pool]
    torch.testing.assert_close(pooled, expected)
    head = model.get_classifier()
    if pool:
        torch.testing.assert_close(logits, head(expected))
    else:  # the classifier runs at every position
        torch.testing.assert_close(logits, head(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_invalid_global_pool_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match=r"global_pool='token'.*'avg', 'max', 'avgmax', ''"):
        timm.create_model("dat_test", global_pool="token")
    model = timm.create_model("dat_test")
    with pytest.raises(ValueError, match="global_pool='catavgmax'"):
        model.reset_classifier(5, "catavgmax")


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_forward_intermediates_and_pruning(preset: str) -> None:
    model = timm.create_model(preset).eval()
    x = _input(model, batch=1)
    h = x.shape[-1]
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape[1] for m in maps] == [f["num_chs"] for f in model.feature_info]
        assert [h // m.shape[-1] for m in maps] == [f["reduction"] for f in model.feature_info]
        torch.testing.assert_close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        negative = model.forward_intermediates(x, indices=[-2, -1], intermediates_only=True)
        for a, b, c in zip(last_two, negative, maps[2:], strict=True):
            torch.testing.assert_close(a, c)
            torch.testing.assert_close(b, c)
        for bad in ([5], [-5], 0, 5):
            with pytest.raises(ValueError, match=r"out of range|last"):
                model.forward_intermediates(x, indices=bad)

        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(model.stages) == 2 and model.num_classes == 0
        pruned = model.forward_intermediates(x, intermediates_only=True)
    assert len(pruned) == 2
    for got, expected in zip(pruned, maps[:2], strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_features_only(preset: str) -> None:
    dims = TEST_CONFIGS[preset]["dims"]
    model = timm.create_model(preset, features_only=True).eval()
    assert isinstance(model, DATFeatures)
    assert model.feature_info.channels() == dims
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    x = _input(model, batch=1)
    with torch.no_grad():
        maps = model(x)
    assert [tuple(m.shape) for m in maps] == [(1, c, 32 // s, 32 // s)
                                              for c, s in zip(dims, (4, 8, 16, 32))]
    subset = timm.create_model(preset, features_only=True, out_indices=(1, -1))
    assert subset.feature_info.channels() == [dims[1], dims[3]]
    with pytest.raises(ValueError, match="out of range"):
        timm.create_model(preset, features_only=True, out_indices=(4,))


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_fx_graph_matches_eager(preset: str) -> None:
    """Traced once, the graph runs at any size (the size-dependent steps are FX leaves)."""
    torch.manual_seed(0)
    model = timm.create_model(preset, num_classes=7).eval()
    graph = timm_fx.create_feature_extractor(model, return_nodes={"cls_head": "logits"})
    plain = torch.fx.symbolic_trace(model)
    torch.manual_seed(0)  # the same backbone weights (the classifier is built last)
    fx_features = timm.create_model(preset, features_only=True, feature_cls="fx").eval()
    for size in (32, 40, 64):  # 40: window and tile padding, odd down-sampled sizes
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = model(x)
            torch.testing.assert_close(graph(x)["logits"], expected, rtol=0, atol=0)
            torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
            maps = model.forward_intermediates(x, intermediates_only=True)
            for got, exp in zip(fx_features(x), maps, strict=True):
                torch.testing.assert_close(got, exp, rtol=0, atol=0)

    graph.train()
    graph(torch.randn(2, 3, 32, 32))["logits"].mean().backward()
    assert [n for n, p in graph.named_parameters() if p.grad is None] == []


@pytest.fixture
def checkpoint_file(tmp_path: Path):
    """A random dat_test (1000 classes) saved like an official checkpoint."""
    torch.manual_seed(0)
    source = timm.create_model("dat_test").eval()
    path = tmp_path / "dat_test.pth"
    torch.save({"model": source.state_dict()}, path)
    return source, path


def test_pretrained_in_chans_and_num_classes(checkpoint_file) -> None:
    source, path = checkpoint_file
    overlay = dict(file=str(path))
    conv = source.state_dict()["patch_proj.0.weight"]
    x = torch.randn(2, 3, 32, 32)

    same = timm.create_model("dat_test", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    with torch.no_grad():
        assert torch.equal(same(x), source(x))
    for in_chans in (1, 4):
        model = timm.create_model("dat_test", pretrained=True, in_chans=in_chans, num_classes=5,
                                  pretrained_cfg_overlay=overlay)
        torch.testing.assert_close(model.patch_proj[0].weight, adapt_input_conv(in_chans, conv))
        assert model.cls_head.out_features == 5
        assert not torch.equal(model.cls_head.weight, source.cls_head.weight[:5])
        assert torch.equal(model.stages[3].attns[1].proj_q.weight,
                           source.stages[3].attns[1].proj_q.weight)
    torch.testing.assert_close(adapt_input_conv(1, conv), conv.sum(1, keepdim=True))

    feats = timm.create_model("dat_test", pretrained=True, features_only=True,
                              pretrained_cfg_overlay=overlay)
    assert torch.equal(feats.patch_proj[0].weight, conv)


def test_every_entry_point_loads_the_same(checkpoint_file, tmp_path: Path, monkeypatch) -> None:
    from dat_lightning.tasks import ClassificationTask

    source, path = checkpoint_file
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("cls_head.")}

    def backbone_state(model) -> dict:
        return {k: v for k, v in model.state_dict().items() if not k.startswith("cls_head.")}

    loaded = [
        create_backbone("dat_test", str(path), num_classes=3),
        timm.create_model("dat_test", pretrained=True, num_classes=3,
                          pretrained_cfg_overlay=dict(file=str(path))),
        ClassificationTask(num_classes=3, backbone="dat_test", weights=str(path)).model,
    ]
    for model in loaded:
        state = backbone_state(model)
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)

    # a registered weight name found in the hub cache: no network
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "dat_tiny_in1k_224.pth").write_bytes(path.read_bytes())
    tiny = {k: v for k, v in TEST_CONFIGS["dat_test"].items()}
    cached = timm.create_model("dat_tiny", pretrained=True, **tiny).eval()
    assert torch.equal(cached.cls_head.weight, source.cls_head.weight)


def test_create_backbone_options(checkpoint_file) -> None:
    source, path = checkpoint_file
    model = create_backbone("dat_test", str(path), drop_path_rate=0.1).eval()
    assert isinstance(model, DAT) and model.num_classes == 0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source.forward_head(source.forward_features(x), pre_logits=True))
    assert any(type(m).__name__ == "DropPath" for m in model.modules())
    feats = create_backbone("dat_pp_test", None, features_only=True, out_indices=(2, 3))
    assert feats.feature_info.reduction() == [16, 32]


def test_unknown_names_list_the_presets() -> None:
    from dat_lightning.tasks import ClassificationTask

    with pytest.raises(ValueError, match=r"unknown backbone 'dat_tinyy'; the DAT presets are "
                                         r"\[.*'dat_pp_test'\]; did you mean 'dat_tiny'\?"):
        create_backbone("dat_tinyy")
    with pytest.raises(ValueError, match=r"did you mean 'dat_pp_small'"):
        ClassificationTask(num_classes=2, backbone="dat_pp_smal")


def test_parameter_layout_is_the_models() -> None:
    """group_matcher and no_weight_decay answer from param_layer / NO_DECAY_KEYWORDS."""
    model = timm.create_model("dat_pp_test", layer_scale_values=[1e-5] * 4)
    depths = TEST_CONFIGS["dat_pp_test"]["depths"]
    layer = model.group_matcher()
    assert layer("patch_proj.0.weight") == 0
    assert layer("stages.0.layer_norms.0.norm.weight") == layer("stages.0.attns.0.qkv.weight") == 1
    assert layer("stages.0.layer_norms.1.norm.weight") == layer("stages.0.mlps.0.dwc.weight") == 1
    assert layer("stages.0.layer_norms.2.norm.weight") == layer("stages.0.layer_scales.3.weight") == 2
    assert layer("down_projs.0.0.weight") == layer("stages.1.attns.0.qkv.weight") == 3
    assert layer("cls_head.weight") == layer("cls_norm.norm.weight") == sum(depths) + 1
    assert model.num_layers() == sum(depths) + 2
    coarse = model.group_matcher(coarse=True)
    assert [coarse(n) for n in ("patch_proj.0.weight", "stages.0.mlps.0.dwc.weight",
                                "down_projs.0.0.weight", "stages.3.attns.1.rpe_table",
                                "cls_head.weight")] == [0, 1, 2, 4, 5]
    no_decay = model.no_weight_decay()
    assert no_decay == {n for n, _ in model.named_parameters()
                        if n.endswith(("rpe_table", "rpb")) or ".layer_scales." in n}
    with pytest.raises(ValueError, match="not part of the DAT layout"):
        model.param_layer("extra.weight")

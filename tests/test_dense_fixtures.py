"""The dense-prediction backbone against the official DAT-Detection / DAT-Segmentation code:
official mmdet/mmseg checkpoints through the public loader, the official dense constructor
settings through :func:`from_official_dense_config` (tests/fixtures/dense/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_close, position_scale

from dat_lightning.models import (
    DATFeatures,
    from_official_config,
    from_official_dense_config,
    load_checkpoint,
)
from dat_lightning.models.checkpoint import CheckpointError, describe_state_dict
from dat_lightning.models.official_configs import NO_EFFECT_OFFICIAL

DENSE_FIXTURES = ["det_v1style_192x320", "det_v1style_shift_200x264_patched",
                  "seg_ppstyle_184x264", "seg_ppstyle_layerscale_256x352"]


def _read(dense_dir: Path, name: str) -> tuple[dict, dict, dict]:
    root = dense_dir / name
    config = json.loads((root / "config.json").read_text())
    meta = json.loads((root / "meta.json").read_text())
    ckpt = torch.load(root / meta["checkpoint"], map_location="cpu", weights_only=True)
    return config, meta, ckpt["state_dict"]


@pytest.mark.parametrize("name", DENSE_FIXTURES)
def test_official_dense_backbone_reproduced(dense_dir: Path, name: str, one_thread) -> None:
    config, meta, state = _read(dense_dir, name)
    model = from_official_dense_config(config).eval()
    assert isinstance(model, DATFeatures) and model.out_indices == tuple(config["out_indices"])
    report = load_checkpoint(model, dense_dir / name / meta["checkpoint"])

    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    model_keys = set(model.state_dict())
    assert report.prefix == "backbone." and not report.ema
    assert set(report.unexpected) == set(state) - {f"backbone.{k}" for k in backbone}
    assert set(meta["non_backbone_keys"]) <= set(report.unexpected)
    assert all("outside the backbone prefix" in r for r in report.unexpected.values())
    gammas = {k for k in backbone if k.endswith(".gamma")}
    assert set(report.renamed) == {k.removesuffix(".gamma") + ".weight" for k in gammas}
    assert bool(gammas) == ("layerscale" in name)
    # the dense code stores no shift masks: the model's own are kept, nothing else is missing
    assert set(report.missing) == model_keys - set(backbone) - set(report.renamed)
    assert all(k.endswith(".attn_mask") for k in report.missing)
    assert bool(report.missing) == any("S" in spec for spec in config["stage_spec"])
    assert set(report.loaded) == model_keys - set(report.missing)
    assert not (report.interpolated or report.reinitialised)

    blocks = {n: m for n, m in model.named_modules() if hasattr(m, "record_offsets")}
    for block in blocks.values():
        block.record_offsets = True
    expected = torch.load(dense_dir / name / "expected.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        maps = model(torch.load(dense_dir / name / "input.pt", map_location="cpu",
                                weights_only=True))
    assert len(maps) == len(expected["features"]) == 4
    for got, exp in zip(maps, expected["features"], strict=True):
        assert_close(got, exp)
    assert sorted(blocks) == sorted(expected["attn_pos_ref"])
    for block_name, ref in expected["attn_pos_ref"].items():
        record = blocks[block_name].last_record
        assert_close(record.pos, ref["pos"], position_scale(ref["pos"]))
        assert_close(record.ref, ref["ref"], position_scale(ref["ref"]))


def test_gamma_and_weight_checkpoints_load_alike(dense_dir: Path) -> None:
    """The same LayerScale values under the dense (`gamma`) and classification (`weight`) names."""
    name = "seg_ppstyle_layerscale_256x352"
    config, _, state = _read(dense_dir, name)
    dense = from_official_dense_config(config)
    load_checkpoint(dense, state)
    renamed = {k.replace(".gamma", ".weight"): v for k, v in state.items()}
    classic = from_official_dense_config(config)
    report = load_checkpoint(classic, renamed)
    assert not report.renamed
    for (key, a), b in zip(dense.state_dict().items(), classic.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    scales = [v for k, v in dense.state_dict().items() if ".layer_scales." in k]
    assert scales and not any(torch.equal(s, torch.full_like(s, 1e-5)) for s in scales)


def test_prefixed_checkpoint_is_described(dense_dir: Path) -> None:
    _, _, det = _read(dense_dir, "det_v1style_192x320")
    config, _, seg = _read(dense_dir, "seg_ppstyle_184x264")
    assert describe_state_dict(seg) == (
        f"an mmdet/mmseg checkpoint whose backbone ('backbone.') is DAT++ with depths "
        f"{config['depths']}, dims {config['dims']}, output norms of stages [0, 1, 2, 3], "
        "with auxiliary_head/decode_head entries")
    assert "with neck/rpn_head entries" in describe_state_dict(det)
    # loaded into a model of another width, the error says what the file is
    other = from_official_dense_config({**config, "dim_stem": 8, "dims": [8, 16, 32, 64]})
    with pytest.raises(CheckpointError, match=r"looks like an mmdet/mmseg checkpoint whose backbone "
                                              r"\('backbone\.'\) is DAT\+\+") as err:
        load_checkpoint(other, seg)
    assert "unknown architecture" not in str(err.value)
    # other prefixes: a task checkpoint
    task = {f"model.{k.removeprefix('backbone.')}": v for k, v in seg.items()
            if k.startswith("backbone.")}
    assert describe_state_dict({**task, "head.weight": torch.zeros(1)}).endswith(
        "under the key prefix 'model.', with head entries")


def _small_config(dense_dir: Path) -> dict:
    config, _, _ = _read(dense_dir, "seg_ppstyle_184x264")
    return config


def test_dense_builder_honours_out_indices_and_checkpointing(dense_dir: Path, one_thread) -> None:
    config = _small_config(dense_dir)
    model = from_official_dense_config({**config, "out_indices": [1, 3], "use_checkpoint": True})
    assert model.out_indices == (1, 3) and model.grad_checkpointing
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    maps = model(x)
    assert [m.shape[1] for m in maps] == [config["dims"][1], config["dims"][3]]
    sum(m.sum() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not from_official_dense_config(config).grad_checkpointing
    with pytest.raises(ValueError, match=r"use_checkpoint=.*differs per stage"):
        from_official_dense_config({**config, "use_checkpoint": [True, False, False, False]})


def test_dense_builder_loads_init_cfg(dense_dir: Path, tmp_path: Path) -> None:
    """init_cfg=dict(type='Pretrained', checkpoint=...) loads a classification checkpoint."""
    config = _small_config(dense_dir)
    classifier = from_official_config({k: v for k, v in config.items()
                                       if k not in ("out_indices", "use_checkpoint", "init_cfg")})
    path = tmp_path / "cls.pth"
    torch.save({"model": classifier.state_dict()}, path)
    model = from_official_dense_config({**config, "init_cfg": {"type": "Pretrained",
                                                               "checkpoint": str(path)}})
    for key, value in model.state_dict().items():
        if not key.startswith("norms."):
            assert torch.equal(value, classifier.state_dict()[key]), key
    with pytest.raises(ValueError, match=r"init_cfg=.*Kaiming.*not supported"):
        from_official_dense_config({**config, "init_cfg": {"type": "Kaiming"}})


def test_dense_builder_no_ops_and_refusals(dense_dir: Path) -> None:
    config = _small_config(dense_dir)
    assert set(NO_EFFECT_OFFICIAL) <= set(config)  # the official dense key set
    torch.manual_seed(0)
    reference = from_official_dense_config(config).state_dict()
    changed = {**config, "type": "DAT", "num_classes": 3, "heads_q": [1, 1, 1, 1],
               "ns_per_pts": [8] * 4, "local_orf": [3] * 4, "offset_pes": [True] * 4,
               "deform_groups": [2] * 4, "sr_ratios": [1] * 4, "lower_lr_kvs": {"x": 0.1}}
    torch.manual_seed(0)
    other = from_official_dense_config(changed).state_dict()
    assert list(other) == list(reference)
    assert all(torch.equal(other[k], v) for k, v in reference.items())
    with pytest.raises(ValueError, match="'ResNet' is not a DAT backbone"):
        from_official_dense_config({**config, "type": "ResNet"})
    with pytest.raises(ValueError, match=r"use_cmt_mlps=\[True.*not supported"):
        from_official_dense_config({**config, "use_cmt_mlps": [True] * 4})
    with pytest.raises(ValueError, match=r"unknown DAT option\(s\) \['out_indicse'\]"):
        from_official_dense_config({**config, "out_indicse": [0]})
    with pytest.raises(ValueError, match="unknown block type 'P'"):
        from_official_dense_config({**config, "stage_spec": [["N", "D"], ["N", "D"], ["N", "D"],
                                                              ["P", "D"]]})
    # the classification builder points dense settings at the dense one
    with pytest.raises(ValueError, match=r"\['out_indices', 'use_checkpoint', 'init_cfg'\].*"
                                         r"from_official_dense_config"):
        from_official_config(config)

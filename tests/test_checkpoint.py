"""load_checkpoint: every checkpoint shape, resolution change, head reset, features models, EMA
copies of task checkpoints, errors (hostile pickles included)."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from conftest import assert_close, position_scale, tiny_dat_kwargs
from lightning.pytorch import Trainer, seed_everything
from toy_data import NUM_CLASSES, toy_loader

from dat_lightning.models import (
    DAT,
    DATFeatures,
    LoadReport,
    from_official_config,
    load_checkpoint,
)
from dat_lightning.models.checkpoint import CheckpointError
from dat_lightning.tasks import ClassificationTask


# --- official resolution-change fixtures ---------------------------------------------------------
@pytest.mark.parametrize("fixture", ["v1_ft384_win12", "v1_ft448_win7", "pp_ft384"])
def test_pretrained_load_fixtures(official_dir: Path, fixture: str) -> None:
    root = official_dir / fixture
    meta = json.loads((root / "meta.json").read_text())
    model = from_official_config(json.loads((root / "config.json").read_text())).eval()
    report = load_checkpoint(model, root / meta["source_checkpoint"])

    diff = torch.load(root / "loaded_state_diff.pt", map_location="cpu", weights_only=True)
    assert sorted(report.interpolated) == sorted(diff)
    state = model.state_dict()
    for key, exp in diff.items():
        assert state[key].shape == exp.shape
        assert torch.allclose(state[key], exp, rtol=1e-4, atol=1e-4 * exp.abs().max().item()), key
    kept = meta["load_result"]["target_buffers_kept_summary"]
    for key, summary in kept.items():
        assert list(state[key].shape) == summary["shape"]
        assert state[key].double().sum().item() == pytest.approx(summary["sum"], rel=1e-6)
        assert int(state[key].count_nonzero()) == summary["num_nonzero"]
    assert set(kept) <= set(report.reinitialised)
    assert len(report.loaded) + len(report.interpolated) + len(report.reinitialised) == len(state)
    assert not report.missing and not report.unexpected

    for _, block in model.deformable_blocks():
        block.record_offsets = True
    expected = torch.load(root / "expected.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        logits = model(torch.load(root / "input.pt", map_location="cpu", weights_only=True))
    assert_close(logits, expected["logits"])
    blocks = dict(model.deformable_blocks())
    assert sorted(blocks) == sorted(expected["attn_pos_ref"])
    for name, exp in expected["attn_pos_ref"].items():
        record = blocks[name].last_record
        for field in ("pos", "ref"):
            assert_close(getattr(record, field), exp[field], position_scale(exp[field]))


@pytest.mark.parametrize("fixture", ["v1_main", "pp_main"])
def test_official_checkpoint_loads_strictly(official_dir: Path, fixture: str) -> None:
    root = official_dir / fixture
    model = from_official_config(json.loads((root / "config.json").read_text())).eval()
    report = load_checkpoint(model, root / "checkpoint.pth")
    ckpt = torch.load(root / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    assert report.loaded == list(ckpt)
    assert not (report.interpolated or report.reinitialised or report.missing or report.unexpected)
    with torch.no_grad():
        logits = model(torch.load(root / "input.pt", map_location="cpu", weights_only=True))
    expected = torch.load(root / "expected.pt", map_location="cpu", weights_only=True)
    assert_close(logits, expected["logits"])


# --- checkpoint shapes ---------------------------------------------------------------------------
def _write(form: str, state: dict, directory: Path) -> Path:
    """Write ``state`` the way a user's checkpoint of kind ``form`` stores it."""
    head = {"weight": torch.randn(5, 16), "bias": torch.randn(5)}
    if form == "safetensors":
        path = directory / "weights.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
        return path
    if form == "official":
        obj = {"model": state, "optimizer": {"state": {}}, "epoch": 3}
    elif form == "bare":
        obj = state
    elif form == "state_dict":
        obj = {"state_dict": state}
    elif form == "ddp":
        obj = {"model": {f"module.{k}": v for k, v in state.items()}}
    elif form == "mmseg":
        obj = {"meta": {"epoch": 1}, "state_dict": {
            **{f"backbone.{k}": v for k, v in state.items()},
            **{f"decode_head.conv_seg.{k}": v for k, v in head.items()},
            **{f"auxiliary_head.conv_seg.{k}": v for k, v in head.items()}}}
    elif form == "lightning":
        obj = {"epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.6.6",
               "hyper_parameters": {"lr": 1e-3, "backbone": "dat_tiny"},
               "optimizer_states": [], "lr_schedulers": [],
               "state_dict": {**{f"model.backbone.{k}": v for k, v in state.items()},
                              **{f"model.head.{k}": v for k, v in head.items()},
                              "train_acc.tp": torch.zeros(5)}}
    else:
        raise AssertionError(form)
    path = directory / ("model.ckpt" if form == "lightning" else f"{form}.pth")
    torch.save(obj, path)
    return path


FORMS = ["official", "bare", "state_dict", "ddp", "mmseg", "lightning", "safetensors"]
PREFIXES = {"ddp": "module.", "mmseg": "backbone.", "lightning": "model.backbone."}


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_every_checkpoint_form_loads_identically(tiny_dat, tmp_path: Path, generation: str) -> None:
    torch.manual_seed(0)
    source = tiny_dat(generation).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(x)
    for form in FORMS:
        path = _write(form, source.state_dict(), tmp_path)
        torch.manual_seed(1)
        model = tiny_dat(generation).eval()
        report = load_checkpoint(model, path)
        assert report.prefix == PREFIXES.get(form, ""), form
        assert report.loaded == list(source.state_dict()), form
        assert not (report.interpolated or report.reinitialised or report.missing), form
        if form in ("mmseg", "lightning"):
            assert report.unexpected, form
            assert all("outside the backbone prefix" in r for r in report.unexpected.values())
        else:
            assert not report.unexpected, form
        with torch.no_grad():
            assert torch.equal(model(x), expected), form


def test_load_report_summary(tiny_dat, tmp_path: Path) -> None:
    path = _write("mmseg", tiny_dat().state_dict(), tmp_path)
    report = load_checkpoint(tiny_dat(num_classes=3), path)
    text = str(report)
    assert isinstance(report, LoadReport)
    assert text.startswith(f"loaded {len(report.loaded)} entries from {path} (under prefix 'backbone.')")
    assert "cls_head re-initialised: checkpoint has 10 classes, model 3" in text
    assert "decode_head.conv_seg.weight" in text and "auxiliary_head.conv_seg.weight" in text


def test_head_reset_when_classes_differ(tiny_dat, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_dat(num_classes=1000).eval()
    path = _write("official", source.state_dict(), tmp_path)
    model = tiny_dat(num_classes=10).eval()
    with torch.no_grad():
        model.cls_head.weight.fill_(0.0)
    report = load_checkpoint(model, path)
    reason = "cls_head re-initialised: checkpoint has 1000 classes, model 10"
    assert report.reinitialised == {"cls_head.weight": reason, "cls_head.bias": reason}
    assert model.cls_head.weight.abs().sum() > 0  # really re-initialised, not left as it was
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), source.forward_features(x))
    # num_classes=0: the source's classifier is reported as unused
    headless = tiny_dat(num_classes=0)
    report = load_checkpoint(headless, path)
    assert set(report.unexpected) == {"cls_head.weight", "cls_head.bias"}


def _features(model, out_indices=(1, 2, 3)) -> DATFeatures:
    return DATFeatures(model, out_indices=out_indices).eval()


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_classification_checkpoint_into_features_model(tiny_dat, tmp_path: Path,
                                                       generation: str) -> None:
    torch.manual_seed(0)
    source = tiny_dat(generation).eval()
    path = _write("official", source.state_dict(), tmp_path)
    features = _features(tiny_dat(generation), out_indices=(1, 2))
    report = load_checkpoint(features, path)
    assert set(report.missing) == {f"norms.{i}.norm.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert {k.split(".")[0] for k in report.unexpected} == {"cls_norm", "cls_head", "stages",
                                                            "down_projs"}
    assert all(k.startswith(("stages.3.", "down_projs.2.", "cls_")) for k in report.unexpected)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = features(x)
        ref = source.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for got, exp in zip(maps, ref, strict=True):
        exp = F.layer_norm(exp.permute(0, 2, 3, 1), exp.shape[1:2]).permute(0, 3, 1, 2)
        assert torch.allclose(got, exp, atol=1e-5)


def test_dense_prediction_checkpoint_roundtrip(tiny_dat, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _features(tiny_dat(), out_indices=(0, 1, 2, 3))
    for norm in source.norms:
        torch.nn.init.normal_(norm.norm.weight)
    path = _write("mmseg", source.state_dict(), tmp_path)
    target = _features(tiny_dat(), out_indices=(0, 1, 2, 3))
    report = load_checkpoint(target, path)
    assert report.prefix == "backbone." and not report.missing
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for got, exp in zip(target(x), source(x), strict=True):
            assert torch.equal(got, exp)
    # the same backbone into a classifier: norms unused, classifier new
    classifier = tiny_dat()
    report = load_checkpoint(classifier, path)
    assert {k.split(".")[0] for k, r in report.unexpected.items()
            if "outside" not in r} == {"norms"}
    assert set(report.missing) == {"cls_norm.norm.weight", "cls_norm.norm.bias", "cls_head.weight",
                                   "cls_head.bias"}


def test_state_dict_in_memory_and_non_strict(tiny_dat, caplog) -> None:
    source = tiny_dat()
    state = {**source.state_dict(), "extra.weight": torch.zeros(3)}
    model = tiny_dat()
    with pytest.raises(CheckpointError, match=r"1 checkpoint entries the model does not have: "
                                              r"extra\.weight.*strict=False"):
        load_checkpoint(model, state)
    with pytest.warns(UserWarning, match=r"strict=False.*extra\.weight"):
        report = load_checkpoint(model, state, strict=False)
    assert report.unexpected == {"extra.weight": "not in the model (strict=False): ignored"}
    assert report.source == "<state dict>"


# --- bad inputs ----------------------------------------------------------------------------------
def test_not_a_checkpoint(tiny_dat, tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth is not a checkpoint: it looks like a text"):
        load_checkpoint(tiny_dat(), text)
    jpeg = tmp_path / "photo.pth"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100))
    with pytest.raises(CheckpointError, match="it looks like a JPEG image"):
        load_checkpoint(tiny_dat(), jpeg)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(tiny_dat(), empty)
    with pytest.raises(FileNotFoundError, match="no such file, and not a registered weight name"):
        load_checkpoint(tiny_dat(), tmp_path / "missing.pth")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a checkpoint file"):
        load_checkpoint(tiny_dat(), tmp_path)
    with pytest.raises(TypeError, match="expects a DAT or DATFeatures"):
        load_checkpoint(torch.nn.Linear(2, 2), text)


def test_truncated_files(tiny_dat, tmp_path: Path) -> None:
    for form in ("official", "safetensors"):
        path = _write(form, tiny_dat().state_dict(), tmp_path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(tiny_dat(), path)


def test_other_architectures(tiny_dat, tmp_path: Path) -> None:
    import torchvision

    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    n = len(torchvision.models.resnet18().state_dict())
    with pytest.raises(CheckpointError, match=rf"has {n} entries of which 0 match the keys of DAT "
                                              r".*it looks like a ResNet \(conv1\.weight"):
        load_checkpoint(tiny_dat(), resnet)
    # a DAT++ checkpoint into a DAT v1 model
    pp = _write("official", tiny_dat("pp").state_dict(), tmp_path)
    with pytest.raises(CheckpointError, match=r"looks like DAT\+\+ with depths \[2, 2, 2, 2\]"):
        load_checkpoint(tiny_dat("v1"), pp)
    # another DAT configuration (a deeper stage 2, like dat_small vs dat_tiny)
    deeper = tiny_dat("v1", depths=[2, 2, 4, 2],
                      stage_spec=[["L", "S"], ["L", "D"], ["L", "D", "L", "D"], ["L", "D"]])
    path = _write("official", deeper.state_dict(), tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint entries the model does not have: "
                                              r"stages\.2\.attns\.2.*looks like DAT with depths "
                                              r"\[2, 2, 4, 2\]"):
        load_checkpoint(tiny_dat("v1"), path)
    # same layout, other widths
    wider = tiny_dat("v1", dim_stem=32, dims=[32, 64, 128, 256])
    path = _write("official", wider.state_dict(), tmp_path)
    with pytest.raises(CheckpointError, match=r"\d+ entries with a different shape: cls_head\.weight: "
                                              r"checkpoint \(10, 256\), model \(10, 128\).*dims "
                                              r"\[32, 64, 128, 256\]"):
        load_checkpoint(tiny_dat("v1"), path)


def test_pickle_needs_opt_in(tiny_dat, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = tiny_dat().eval()
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": source.state_dict(),
                "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"objects besides tensors \(argparse\.Namespace\).*"
                                              r"allow_pickle=True.*execute arbitrary code"):
        load_checkpoint(tiny_dat(), path)
    model = tiny_dat().eval()
    load_checkpoint(model, path, allow_pickle=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


class _Hostile:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint runs when unpickled."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_hostile_pickle_is_named_and_warned_about(tiny_dat, tmp_path: Path) -> None:
    """Never loaded with allow_pickle: the refusal must name what the file would run."""
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    torch.save({"state_dict": tiny_dat().state_dict(),
                "payload": _Hostile(os.system, f"touch {marker}"),
                "extra": _Hostile(eval, "1 + 1")}, path)
    system = f"{os.system.__module__}.system"  # posix.system / nt.system
    with pytest.warns(UserWarning, match=r"DANGER: .*hostile\.pth would call builtins\.eval, "
                                         rf"{re.escape(system)} when unpickled.*Do not load it"):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(tiny_dat(), path)
    message = str(err.value)
    assert system in message and "builtins.eval" in message
    assert "Do not load it (allow_pickle=True refuses it too)" in message
    assert "If you trust" not in message and "docs.pytorch.org" not in message
    assert not marker.exists()


def test_allow_pickle_still_refuses_code_execution(tiny_dat, tmp_path: Path) -> None:
    """The pickle is scanned before full unpickling (the payload here is harmless if it ran)."""
    path = tmp_path / "calls_getcwd.pth"
    torch.save({"state_dict": tiny_dat().state_dict(), "payload": _Hostile(os.getcwd)}, path)
    with pytest.warns(UserWarning, match=rf"DANGER: .*would call {os.getcwd.__module__}\.getcwd"):
        with pytest.raises(CheckpointError, match="allow_pickle=True refuses it too"):
            load_checkpoint(tiny_dat(), path, allow_pickle=True)


def test_ema_weights_of_a_task_checkpoint(tmp_path: Path, one_thread) -> None:
    """A ClassificationTask trained with ema_decay stores model.* and model_ema.module.*."""
    seed_everything(0)
    task = ClassificationTask(num_classes=NUM_CLASSES, backbone="dat_tiny", ema_decay=0.5,
                              backbone_kwargs=tiny_dat_kwargs("v1", NUM_CLASSES, img_size=32))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, max_steps=2,
                      default_root_dir=tmp_path)
    trainer.fit(task, toy_loader(8))
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    ema, raw = task.model_ema.module.state_dict(), task.model.state_dict()
    assert not torch.equal(ema["cls_head.weight"], raw["cls_head.weight"])

    for prefer_ema, expected, prefix in ((True, ema, "model_ema.module."), (False, raw, "model.")):
        model = DAT(**tiny_dat_kwargs("v1", NUM_CLASSES, img_size=32))
        report = load_checkpoint(model, path, prefer_ema=prefer_ema)
        assert report.prefix == prefix and report.ema == prefer_ema
        assert report.loaded == list(expected) and not report.missing
        for key, value in model.state_dict().items():
            assert torch.equal(value, expected[key]), key
        other = "model." if prefer_ema else "model_ema.module."
        assert {k for k in report.unexpected} == {other + k for k in expected}
        reason = "raw (non-EMA) weights" if prefer_ema else "EMA copy of the weights"
        assert all(r.startswith(reason) for r in report.unexpected.values())
    assert "the EMA weights" in str(load_checkpoint(DAT(**tiny_dat_kwargs("v1", NUM_CLASSES,
                                                                        img_size=32)), path))

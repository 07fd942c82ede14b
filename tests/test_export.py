"""Sharing models: timm hub folders (local-dir round trips, from a .ckpt), ONNX export
(onnxruntime parity, atomic writes) and torch.export of DAT / DAT++."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import timm
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.export import Dim
from toy_data import NUM_CLASSES, toy_loader

from dat_lightning.export import export_onnx, main, save_for_timm
from dat_lightning.models import create_backbone
from dat_lightning.tasks import ClassificationTask

LABELS = [f"cell{i}" for i in range(NUM_CLASSES)]


def _trained_task(tmp_path: Path) -> tuple[ClassificationTask, Path]:
    """A ClassificationTask on dat_test after two optimizer steps, and its Lightning checkpoint."""
    seed_everything(0)
    task = ClassificationTask(num_classes=NUM_CLASSES, backbone="dat_test", class_names=LABELS,
                              backbone_kwargs=dict(global_pool="avgmax"))
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=tmp_path)
    trainer.fit(task, toy_loader(8, batch_size=4))
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    return task.eval(), path


def test_timm_folder_round_trip(tmp_path: Path) -> None:
    task, ckpt = _trained_task(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = task.model(x)

    folder = save_for_timm(task, tmp_path / "shared")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "dat_test" and config["num_classes"] == NUM_CLASSES
    assert config["label_names"] == LABELS
    assert config["pretrained_cfg"]["classifier"] == "cls_head"
    assert config["model_args"]["global_pool"] == "avgmax"

    reloaded = [timm.create_model(f"local-dir:{folder}", pretrained=True),
                create_backbone(f"local-dir:{folder}")]
    for model in reloaded:
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), expected, rtol=0, atol=0)
    untrained = timm.create_model(f"local-dir:{folder}")  # timm's rule: weights need pretrained
    with torch.no_grad():
        assert not torch.allclose(untrained.eval()(x), expected)

    main(["timm", str(ckpt), str(tmp_path / "from_ckpt")])
    from_ckpt = timm.create_model(f"local-dir:{tmp_path / 'from_ckpt'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(x), expected, rtol=0, atol=0)


def test_save_for_timm_refuses_what_it_cannot_describe(tiny_dat, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="built by timm"):
        save_for_timm(tiny_dat(), tmp_path / "plain")
    with pytest.raises(ValueError, match="3 label_names for a model with 10 classes"):
        save_for_timm(timm.create_model("dat_test", num_classes=10), tmp_path / "x",
                      label_names=["a", "b", "c"])


@pytest.mark.parametrize(("generation", "size"), [("v1", 56), ("pp", 56), ("pp", 32)])
def test_onnx_matches_pytorch(tiny_dat, tmp_path: Path, generation: str, size: int) -> None:
    """56 px: DAT++ stage-0 map of two whole neighborhood-attention tiles; 32 px: a partial one."""
    torch.manual_seed(0)
    model = tiny_dat(generation).train()
    path = export_onnx(model, tmp_path / "model.onnx", image_size=(size, size))
    assert model.training  # mode restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, size, size)  # traced with batch 1: the batch axis is dynamic
    (got,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x)
    assert got.shape == (3, 10)
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4 * expected.abs().max().item())


def test_failed_export_leaves_no_file(tiny_dat, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match=r"opset 13 is too old.*GridSample"):
        export_onnx(tiny_dat(), target, image_size=(32, 32), opset=13)
    with pytest.raises(RuntimeError):
        export_onnx(tiny_dat(in_chans=3), target, image_size=(32, 32), in_chans=4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("preset", ["dat_test", "dat_pp_test"])
def test_torch_export(preset: str) -> None:
    model = timm.create_model(preset, num_classes=10).eval()
    x = torch.randn(2, 3, 40, 40)  # padded windows and tiles
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-6)
    # plain aten ops only: a program loads without dat_lightning (the bias sampling op that
    # torch.compile keeps opaque is not exported)
    namespaces = {node.target.namespace for node in program.graph.nodes
                  if node.op == "call_function" and hasattr(node.target, "namespace")}
    assert namespaces <= {"aten"}, namespaces


@pytest.mark.slow
def test_torch_export_dynamic_size() -> None:
    """One program for every side of 32 * k px, k = 2..16 (at 32 px the last stage is a single
    pixel, which takes other branches): dat_test's windows (4/4/2/1) divide every such map."""
    model = timm.create_model("dat_test", num_classes=10).eval()
    k_h, k_w = Dim("k_h", min=2, max=16), Dim("k_w", min=2, max=16)
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64),),
                                  dynamic_shapes=({2: 32 * k_h, 3: 32 * k_w},))
    for size in ((64, 64), (96, 160)):
        x = torch.randn(2, 3, *size)  # the batch is static
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-6)

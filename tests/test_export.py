"""ONNX export (onnxruntime parity, atomic writes) and torch.export of DAT / DAT++."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from dat_lightning.export import export_onnx


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


def test_torch_export(tiny_dat) -> None:
    model = tiny_dat("v1").eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-6)

"""ONNX export of a (fine-tuned) DAT / DAT++ model, written atomically."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["DEFAULT_OPSET", "export_onnx"]

# grid_sample (deformable attention) is an ONNX operator from opset 16 on.
DEFAULT_OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: tuple[int, int] = (224, 224),
                opset: int = DEFAULT_OPSET, *, batch_size: int = 1, dynamic_batch: bool = True,
                in_chans: int = 3) -> Path:
    """Export ``model`` (in eval mode, on CPU) to ONNX with input ``images`` and output ``logits``.

    The graph is traced at ``image_size`` and only valid for that size (window partitions and
    tilings are fixed at trace time, hence the tracer warnings this function silences); the batch
    axis is dynamic unless ``dynamic_batch`` is False. Uses the TorchScript-based exporter
    (``dynamo=False``; the dynamo exporter needs ``onnxscript``). The file is written to a
    temporary name beside ``path`` and renamed, so a failed export leaves nothing behind.

    Args:
        model: a DAT classifier (or any module mapping images to one tensor).
        path: output ``.onnx`` file.
        image_size: ``(height, width)`` of the traced input.
        opset: ONNX opset; at least 16 (``GridSample``).
        batch_size: batch of the traced example input.
        dynamic_batch: make the batch axis dynamic.
        in_chans: input channels.

    Returns:
        The written path.
    """
    if opset < 16:
        raise ValueError(f"opset {opset} is too old: DAT's deformable attention needs GridSample, "
                         "an ONNX operator since opset 16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = torch.randn(batch_size, in_chans, *image_size,
                          device=next(model.parameters()).device)
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            torch.onnx.export(model, (example,), tmp, input_names=["images"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                              dynamo=False)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path

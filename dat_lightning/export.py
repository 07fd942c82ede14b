"""Sharing a fine-tuned DAT / DAT++ model: timm's hub layout and ONNX.

* :func:`save_for_timm` writes a classifier (or a classification task's backbone and head) as
  ``config.json`` + ``model.safetensors``, the layout of timm's Hugging Face hub models; the folder
  loads offline with ``timm.create_model("local-dir:/path", pretrained=True)`` or
  ``create_backbone("local-dir:/path")``.
* :func:`export_checkpoint` does the same from a Lightning ``.ckpt`` of a
  :class:`~dat_lightning.tasks.ClassificationTask`; on the command line::

      python -m dat_lightning.export timm runs/digits_dat/checkpoints/best.ckpt shared/digits_dat

* :func:`export_onnx` writes an ONNX graph, atomically.

TorchScript is not supported (``torch.jit.script`` is deprecated upstream); use ``torch.export``,
``torch.fx`` or ONNX.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from timm.models import save_for_hf

from .models.dat import DAT

__all__ = ["DEFAULT_OPSET", "export_checkpoint", "export_onnx", "main", "save_for_timm"]

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


def save_for_timm(model: nn.Module, folder: str | os.PathLike,
                  label_names: Sequence[str] | None = None) -> Path:
    """Save a DAT classifier in timm's hub layout: ``config.json`` (``architecture``,
    ``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg``) and ``model.safetensors``.

    Args:
        model: a DAT built by timm (``create_backbone``/``timm.create_model``), or a task whose
            ``model`` is one (a :class:`~dat_lightning.tasks.ClassificationTask`); a task's
            ``class_names`` are the default ``label_names``.
        folder: output folder (created).
        label_names: one name per class.

    Returns:
        The folder.

    Raises:
        ValueError: for a model that is not a timm-built DAT classifier, or label names that do
            not match its classes.
    """
    if not isinstance(model, DAT) and isinstance(getattr(model, "model", None), DAT):
        hparams = getattr(model, "hparams", {})
        label_names = hparams.get("class_names") if label_names is None else label_names
        model = model.model
    if not isinstance(model, DAT) or not getattr(model, "pretrained_cfg", None):
        raise ValueError(f"save_for_timm needs a DAT classifier built by timm (create_backbone or "
                         f"timm.create_model) or a ClassificationTask, got {type(model).__name__}")
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f"{len(label_names)} label_names for a model with {model.num_classes} "
                         "classes; give one name per class")
    folder = Path(folder)
    config = dict(label_names=list(label_names)) if label_names else None
    save_for_hf(model, folder, model_config=config, safe_serialization=True)
    return folder


def export_checkpoint(checkpoint: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """:func:`save_for_timm` of the :class:`~dat_lightning.tasks.ClassificationTask` saved in a
    Lightning ``.ckpt`` (its ``weights`` setting is ignored: nothing is downloaded)."""
    from .tasks import ClassificationTask

    task = ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu", weights=None)
    return save_for_timm(task, folder)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m dat_lightning.export timm CKPT FOLDER``."""
    parser = argparse.ArgumentParser(prog="python -m dat_lightning.export",
                                     description="Export a trained DAT classifier.")
    commands = parser.add_subparsers(dest="command", required=True)
    to_timm = commands.add_parser("timm", help="a ClassificationTask .ckpt -> timm hub folder "
                                  "(config.json + model.safetensors)")
    to_timm.add_argument("checkpoint", help="Lightning .ckpt of a ClassificationTask")
    to_timm.add_argument("folder", help="output folder")
    args = parser.parse_args(argv)
    folder = export_checkpoint(args.checkpoint, args.folder)
    print(f"saved {folder}; load it with timm.create_model('local-dir:{folder}', pretrained=True)")


if __name__ == "__main__":
    main()

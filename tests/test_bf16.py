"""bf16 autocast on the CPU: the official fixtures within the bf16 tolerance, and a detection fit
with ``precision="bf16-mixed"`` (classification and segmentation: ``test_multi_label_bf16_mixed_dat_pp``
and ``test_bf16_mixed_precision_and_trainer_options``)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from conftest import tiny_dat_kwargs
from lightning.pytorch import Trainer, seed_everything
from test_backbone_fixtures import STRICT_FIXTURES, load_fixture
from test_detection import SMALL_DETECTOR, collate, rectangle_samples
from torch.utils.data import DataLoader

from dat_lightning.models.layers.deformable_attention import (
    DeformableAttention,
    _offset_depthwise_conv,
)
from dat_lightning.tasks.detection import ObjectDetectionTask

#: bf16 tolerance on the logits: |got - exp| <= BF16_TOL * (max|exp| + |exp|). bf16 keeps 8
#: significant bits (relative step 2**-8 = 0.4 %); the fixtures' largest error is 0.5-0.9 % of
#: max|exp| (v1_main 0.48 %, pp_main 0.58 %, pp_run96 0.88 %, pp_run384_built224 0.53 %).
BF16_TOL = 2e-2


@pytest.mark.parametrize("name", STRICT_FIXTURES)
def test_official_outputs_within_bf16_tolerance(official_dir, name):
    model, inputs, expected = load_fixture(official_dir, name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(inputs)
    assert logits.dtype == torch.bfloat16  # autocast really ran the matmuls in bf16
    exp = expected["logits"]
    error = (logits.float() - exp).abs()
    assert (error - BF16_TOL * (exp.abs().max() + exp.abs())).max().item() <= 0
    assert error.max().item() > 1e-4 * exp.abs().max().item()  # not the fp32 path


@pytest.mark.parametrize("detector", ["retinanet", "faster_rcnn"])
def test_detection_fit_bf16_mixed(detector):
    seed_everything(0)
    task = ObjectDetectionTask(detector=detector, num_classes=1, backbone="dat_tiny",
                               backbone_kwargs=tiny_dat_kwargs("v1"), fpn_channels=32, min_size=64,
                               max_size=64, detector_kwargs=SMALL_DETECTOR[detector],
                               warmup_steps=0, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    start = [p.detach().clone() for p in task.parameters()]
    samples = rectangle_samples([(64, 64), (64, 80)])
    loader = DataLoader(samples, batch_size=2, collate_fn=collate)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, max_steps=2,
                      precision="bf16-mixed", limit_val_batches=1)
    trainer.fit(task, loader, loader)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    assert "val_map" in trainer.callback_metrics
    assert all(p.dtype == torch.float32 for p in task.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(start, task.parameters()))


def test_offset_conv_runs_in_fp32_under_cpu_autocast():
    """The offset network's depthwise conv leaves bf16 under CPU autocast (oneDNN's bf16
    depthwise kernels are several times slower there) and computes exactly the fp32 conv of the
    bf16 queries; gradients reach the bf16 queries and the fp32 weights."""
    block = DeformableAttention(dim=32, heads=4, groups=2, fmap_size=(8, 8), stride=2, ksize=5,
                                generation="pp")
    dwc = block.conv_offset[0]
    weight, bias = dwc.weight.repeat(2, 1, 1, 1), dwc.bias.repeat(2)
    q = torch.randn(2, 32, 8, 8).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _offset_depthwise_conv(q, weight, bias, dwc.stride, dwc.padding)
        plain = torch.nn.functional.conv2d(q, weight, bias, dwc.stride, dwc.padding, groups=32)
    assert plain.dtype == torch.bfloat16  # what autocast alone would run
    assert out.dtype == torch.float32
    exact = torch.nn.functional.conv2d(q.detach().float(), weight, bias, dwc.stride, dwc.padding,
                                       groups=32)
    assert torch.equal(out.detach(), exact)
    out.square().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad).all()
    assert dwc.weight.grad.dtype == torch.float32 and dwc.weight.grad.abs().sum() > 0
    without = _offset_depthwise_conv(q.detach(), weight.to(torch.bfloat16),
                                     bias.to(torch.bfloat16), dwc.stride, dwc.padding)
    assert without.dtype == torch.bfloat16  # outside autocast the input's dtype is kept

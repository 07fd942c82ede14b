"""ClassificationTask: learning a toy problem, metrics, prediction, Mixup/CutMix, multi-label,
mixed precision, EMA and argument errors."""

from __future__ import annotations

from functools import partial

import pytest
import task_helpers
import torch
import torch.nn.functional as F
from conftest import tiny_dat_kwargs
from lightning.pytorch import Callback, Trainer
from task_helpers import make_trainer
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from toy_data import NUM_CLASSES, toy_loader

from dat_lightning.tasks import ClassificationTask

make_task = partial(task_helpers.make_task, ClassificationTask, NUM_CLASSES, seed=0)


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit_toy(seed: int) -> tuple[ClassificationTask, Trainer, list[float]]:
    """Three epochs on 32 toy images; the task, its trainer and the training losses."""
    task, recorder = make_task(warmup_steps=2, seed=seed), LossRecorder()
    trainer = make_trainer(max_epochs=3, callbacks=[recorder])
    trainer.fit(task, toy_loader(32, batch_size=8, shuffle=True, seed=seed),
                toy_loader(8, 8, seed=seed + 1))
    return task, trainer, recorder.losses


#: Bound on (mean of the last 3 training losses) / (mean of the first 3). Seeds 0-5 of
#: :func:`fit_toy` gave 0.024-0.079 (one and two BLAS threads), so 0.5 holds with a wide margin.
LOSS_RATIO = 0.5


def test_learns_toy_problem_logs_metrics_and_predicts():
    """Learns (loss ratio below :data:`LOSS_RATIO`), logs the metrics and LRs, tests and predicts."""
    task, trainer, losses = fit_toy(seed=0)
    k = 3
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert len(losses) == 12 and last < LOSS_RATIO * first, losses

    expected = {f"{split}_{name}" for split in ("train", "val") for name in ("acc1", "acc5", "f1")}
    expected |= {"train_loss", "val_loss"} | {f"lr_{g['name']}" for g in trainer.optimizers[0].param_groups}
    assert expected <= set(trainer.callback_metrics)
    assert not any("/" in key for key in trainer.callback_metrics)
    assert 0 <= float(trainer.callback_metrics["val_acc1"]) <= float(trainer.callback_metrics["val_acc5"])

    test_metrics = make_trainer().test(task, toy_loader(8, 8, seed=1), verbose=False)[0]
    assert {"test_loss", "test_acc1", "test_acc5", "test_f1"} <= set(test_metrics)

    batches = make_trainer().predict(task, toy_loader(6, batch_size=4, seed=2))
    samples = toy_loader(6, batch_size=4, seed=2).dataset
    assert [b["probs"].shape for b in batches] == [(4, NUM_CLASSES), (2, NUM_CLASSES)]
    probs = torch.cat([b["probs"] for b in batches])
    torch.testing.assert_close(probs.sum(1), torch.ones(6))
    assert torch.equal(torch.cat([b["pred"] for b in batches]), probs.argmax(1))
    assert [i for b in batches for i in b["id"]] == [s["id"] for s in samples]


def test_mixup_cutmix_use_soft_targets_and_metrics_use_hard_labels():
    task = make_task(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, label_smoothing=0.1)
    assert isinstance(task.criterion, SoftTargetCrossEntropy)
    seen = {"targets": [], "metric_targets": [], "labels": []}
    criterion, update = task.criterion.forward, task.train_metrics.update

    def spy_criterion(logits, target):
        seen["targets"].append(target.detach().clone())
        return criterion(logits, target)

    def spy_update(preds, target):
        seen["metric_targets"].append(target.clone())
        return update(preds, target)

    class Labels(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["labels"].append(batch["label"].clone())

    task.criterion.forward, task.train_metrics.update = spy_criterion, spy_update
    trainer = make_trainer(max_epochs=1, callbacks=[Labels()])
    trainer.fit(task, toy_loader(7, batch_size=4))  # an even batch, then an odd one

    assert len(seen["targets"]) == len(seen["labels"]) == len(seen["metric_targets"]) == 2
    for target, label, metric_target in zip(seen["targets"], seen["labels"], seen["metric_targets"]):
        assert target.shape == (len(label), NUM_CLASSES) and target.dtype == torch.float32
        torch.testing.assert_close(target.sum(1), torch.ones(len(label)))
        assert torch.equal(metric_target, label)  # metrics see the original hard labels
    smoothed = [mixup_target(label, NUM_CLASSES, 1.0, 0.1) for label in seen["labels"]]
    assert seen["targets"][0].min() >= smoothed[0].min() > 0
    assert not torch.allclose(seen["targets"][0], smoothed[0])  # mixed and smoothed
    torch.testing.assert_close(seen["targets"][1], smoothed[1])  # odd batch: smoothed only
    assert {"train_acc1", "train_f1"} <= set(trainer.callback_metrics)


def test_multi_label_bf16_mixed_dat_pp():
    task = make_task(generation="pp", multi_label=True, class_weights=[1.0] * NUM_CLASSES)
    assert isinstance(task.criterion, torch.nn.BCEWithLogitsLoss)
    trainer = make_trainer(max_steps=2, precision="bf16-mixed", limit_val_batches=1)
    trainer.fit(task, toy_loader(8, multi_label=True), toy_loader(4, multi_label=True, seed=1))
    metrics = trainer.callback_metrics
    assert {"train_map", "train_f1", "val_map", "val_f1", "val_loss"} <= set(metrics)
    assert "val_acc1" not in metrics
    assert torch.isfinite(metrics["train_loss"]) and torch.isfinite(metrics["val_loss"])
    assert all(p.dtype == torch.float32 for p in task.parameters())

    batch = make_trainer(precision="bf16-mixed").predict(task, toy_loader(4, multi_label=True))[0]
    assert batch["probs"].shape == batch["pred"].shape == (4, NUM_CLASSES)
    assert torch.equal(batch["pred"], (batch["probs"] > 0.5).long())


def test_ema_weights_are_used_for_validation_and_checkpointed():
    task = make_task(ema_decay=0.5)
    assert not any(p.requires_grad for p in task.model_ema.parameters())
    trainer = make_trainer(max_steps=2)
    trainer.fit(task, toy_loader(8))
    ema, model = task.model_ema.module, task.model
    assert not torch.equal(ema.cls_head.weight, model.cls_head.weight)
    batch = next(iter(toy_loader(4)))
    with torch.no_grad():
        expected = F.cross_entropy(ema.eval()(batch["image"]), batch["label"])
    metrics = make_trainer().validate(task, toy_loader(4), verbose=False)[0]
    assert metrics["val_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert any(key.startswith("model_ema.") for key in task.state_dict())
    # the EMA never reaches the optimizer
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters()}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(class_weights=[1.0, 2.0]), "class_weights has 2 values but num_classes is 8"),
    (dict(multi_label=True, mixup_alpha=0.2), "Mixup/CutMix needs multi-class labels"),
    (dict(multi_label=True, label_smoothing=0.1), "label_smoothing applies to multi-class"),
    (dict(ema_decay=1.5), r"ema_decay must be in \(0, 1\)"),
])
def test_classification_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task(**kwargs)


def test_backbone_kwargs_cannot_resize_the_classifier():
    with pytest.raises(ValueError, match="backbone_kwargs sets num_classes=10 but the task has "
                                         "num_classes=8"):
        ClassificationTask(num_classes=NUM_CLASSES, backbone="dat_tiny",
                           backbone_kwargs=tiny_dat_kwargs("v1", num_classes=10))

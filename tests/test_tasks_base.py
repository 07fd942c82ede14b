"""BaseTask optimisation through a real Trainer: staged unfreezing that survives a resume, offset
freezing, per-step scheduling under gradient accumulation, and argument errors."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import task_helpers
import torch
from conftest import tiny_dat_kwargs
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from task_helpers import make_trainer
from toy_data import NUM_CLASSES, toy_loader

from dat_lightning.tasks import ClassificationTask
from dat_lightning.tasks.optim import schedule_factor

LR = 1e-3


make_task = partial(task_helpers.make_task, ClassificationTask, NUM_CLASSES, lr=LR, seed=0)


class Recorder(Callback):
    """Per optimizer step: each group's LR, whether the stem is frozen, the stem weights after it."""

    def __init__(self) -> None:
        self.lrs, self.frozen, self.stem, self.offset = {}, {}, {}, {}

    def on_train_start(self, trainer, module) -> None:
        self.start_step = trainer.global_step
        self.start_state = copy.deepcopy(trainer.optimizers[0].state_dict())

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.lrs.setdefault(trainer.global_step, []).append({g["name"]: g["lr"] for g in groups})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1
        self.frozen[step] = not module.model.patch_proj[0].weight.requires_grad
        self.stem[step] = module.model.patch_proj[0].weight.detach().clone()
        self.offset[step] = module.model.stages[1].attns[1].conv_offset[0].weight.detach().clone()


def assert_same(a, b, path: str = "") -> None:
    """Recursive equality of (optimizer) state dicts."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, msg=lambda m: f"{path}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.filterwarnings("ignore:the LR warm-ups")  # deliberately long: 3 of the 4 steps
def test_resume_before_unfreeze_continues_like_an_uninterrupted_run(tmp_path):
    """Freeze the backbone for the first epoch; stop when that epoch ends (max_epochs=1), resume
    to 2 epochs and compare with a run that never stopped: same groups, restored optimizer state,
    LRs, freezing, global step, weights and EMA."""
    settings = dict(freeze_backbone_epochs=1, unfreeze_warmup_steps=2, warmup_steps=1,
                    lr_schedule="constant", ema_decay=0.5)
    steps_per_epoch, epochs = 2, 2
    unfreeze_step = settings["freeze_backbone_epochs"] * steps_per_epoch

    def fit(max_epochs: int, ckpt_path=None, checkpoint: bool = False):
        task, recorder = make_task(**settings), Recorder()
        callbacks = [recorder]
        if checkpoint:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0))
        trainer = make_trainer(max_epochs=max_epochs, callbacks=callbacks,
                               enable_checkpointing=checkpoint)
        trainer.fit(task, toy_loader(4 * steps_per_epoch), ckpt_path=ckpt_path)
        return task, trainer, recorder

    full, full_trainer, full_rec = fit(epochs)
    _, first_trainer, first_rec = fit(1, checkpoint=True)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    resumed, resumed_trainer, resumed_rec = fit(epochs, ckpt_path=tmp_path / "last.ckpt")

    # the optimizer state is restored as saved, into the same groups as the uninterrupted run
    assert resumed_rec.start_step == first_trainer.global_step == unfreeze_step
    assert_same(resumed_rec.start_state, saved["optimizer_states"][0])
    names = [g["name"] for g in full_trainer.optimizers[0].param_groups]
    assert [g["name"] for g in resumed_trainer.optimizers[0].param_groups] == names
    assert [g["name"] for g in saved["optimizer_states"][0]["param_groups"]] == names
    assert any(n.startswith("backbone") for n in names) and any(n.startswith("head") for n in names)
    # before the unfreeze only head parameters have optimizer state; afterwards all of them
    groups = full_trainer.optimizers[0].param_groups
    num_params = sum(len(g["params"]) for g in groups)
    head_params = sum(len(g["params"]) for g in groups if not g["backbone"])
    assert len(saved["optimizer_states"][0]["state"]) == head_params < num_params
    assert len(resumed_trainer.optimizers[0].state_dict()["state"]) == num_params

    # the global step continues; LRs and freezing follow the uninterrupted run step by step
    assert resumed_trainer.global_step == full_trainer.global_step == epochs * steps_per_epoch
    assert sorted(resumed_rec.lrs) == list(range(unfreeze_step, epochs * steps_per_epoch))
    for step, lrs in {**first_rec.lrs, **resumed_rec.lrs}.items():
        assert lrs[0] == pytest.approx(full_rec.lrs[step][0]), step
    for step, (lrs,) in full_rec.lrs.items():
        ramp = min(1.0, max(0, step - unfreeze_step + 1) / settings["unfreeze_warmup_steps"])
        assert lrs["head_decay"] == pytest.approx(LR * schedule_factor(step, 4, "constant", 1))
        assert lrs["backbone_decay"] == pytest.approx(lrs["head_decay"] * ramp), step
        frozen = {**first_rec.frozen, **resumed_rec.frozen}[step]
        assert frozen == full_rec.frozen[step] == (step < unfreeze_step), step
    initial_stem = full_rec.stem[0]
    assert all(torch.equal(full_rec.stem[s], initial_stem) for s in range(unfreeze_step))
    assert not torch.equal(resumed_rec.stem[unfreeze_step], initial_stem)

    # and the weights and their EMA end up where the uninterrupted run's did
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")
    assert all(p.requires_grad for p in resumed.model.parameters())


def test_freeze_offsets_for_the_first_steps():
    task, recorder = make_task(freeze_offsets_steps=2, lr_schedule="constant"), Recorder()
    offset_before = task.model.stages[1].attns[1].conv_offset[0].weight.detach().clone()
    stem_before = task.model.patch_proj[0].weight.detach().clone()
    make_trainer(max_steps=3, callbacks=[recorder]).fit(task, toy_loader(12))
    assert torch.equal(recorder.offset[1], offset_before)
    assert not torch.equal(recorder.offset[2], offset_before)
    assert not torch.equal(recorder.stem[0], stem_before)
    for step in range(3):
        lrs = recorder.lrs[step][0]
        assert (lrs["backbone_offset_decay"] == 0.0) == (step < 2)
        assert lrs["backbone_decay"] == pytest.approx(LR)


@pytest.mark.filterwarnings("ignore:the LR warm-ups")  # the whole 2-step run warms up
def test_scheduler_steps_once_per_optimizer_step_under_accumulation():
    warmup = 2
    task, recorder = make_task(warmup_steps=warmup, lr_schedule="cosine"), Recorder()
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[recorder])
    trainer.fit(task, toy_loader(16))  # 4 batches -> 2 optimizer steps
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == scheduler.last_epoch == trainer.estimated_stepping_batches == 2
    assert trainer.lr_scheduler_configs[0].interval == "step"
    for step in range(2):
        expected = LR * schedule_factor(step, 2, "cosine", warmup)
        assert [lrs["head_decay"] for lrs in recorder.lrs[step]] == pytest.approx([expected] * 2)


def test_freezing_options_need_something_to_freeze():
    no_offsets = dict(tiny_dat_kwargs("v1", NUM_CLASSES), stage_spec=[["L", "L"]] * 4)
    task = ClassificationTask(num_classes=NUM_CLASSES, backbone="dat_tiny",
                              backbone_kwargs=no_offsets, freeze_offsets_steps=5)
    with pytest.raises(ValueError, match="no deformable offset networks"):
        make_trainer(max_steps=1).fit(task, toy_loader(4))
    task = ClassificationTask(num_classes=NUM_CLASSES, backbone="test_resnet",
                              freeze_backbone_epochs=1)
    with pytest.raises(ValueError, match="no DAT backbone parameters to freeze"):
        make_trainer(max_steps=1).fit(task, toy_loader(4))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(backbone="dat_tinny"), r"unknown backbone 'dat_tinny'; the DAT presets are \[.*'dat_tiny'"),
    (dict(class_names=["a", "b"]), "class_names has 2 names but num_classes is 8"),
    (dict(warmup_steps=-1), "must be >= 0"),
    (dict(lr_schedule="step"), "unknown lr_schedule 'step'"),
    (dict(num_classes=0), "num_classes must be >= 1"),
])
def test_base_argument_errors(kwargs, message):
    kwargs = {"num_classes": NUM_CLASSES, "backbone": "dat_tiny", **kwargs}
    with pytest.raises(ValueError, match=message):
        ClassificationTask(**kwargs)


def test_warmup_as_a_share_of_the_run_and_warning_for_long_warmups():
    """``warmup_steps`` below 1 is a share of the run's optimizer steps; warm-ups longer than a
    third of a run over the whole training set are warned about."""
    task, recorder = make_task(warmup_steps=0.25, lr_schedule="constant"), Recorder()
    make_trainer(max_epochs=2, callbacks=[recorder]).fit(task, toy_loader(16))  # 8 steps
    got = [lrs[0]["head_decay"] for _, lrs in sorted(recorder.lrs.items())]
    assert got == pytest.approx([LR * schedule_factor(s, 8, "constant", 2) for s in range(8)])
    assert got[0] < got[1] == got[-1] == LR
    with pytest.warns(UserWarning, match=r"warm-ups \(warmup_steps=10, .* take 10 of this run's 4 "
                                         r"optimizer steps"):
        make_trainer(max_epochs=1).fit(make_task(warmup_steps=10), toy_loader(16))
    make_trainer(max_steps=4).fit(make_task(warmup_steps=10), toy_loader(16))  # cut short: no warning

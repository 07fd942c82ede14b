"""TaskCheckpoint: last.ckpt is always the latest state, best checkpoints follow the task's metric,
and no truncated or non-finite checkpoint is ever written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser
from offset_runs import NaNInput, TinyTask, all_finite, fit, load

from dat_lightning.callbacks import (
    AtomicCheckpointIO,
    OffsetGuard,
    OffsetInstabilityError,
    OffsetInstabilityWarning,
    SkippedCheckpointWarning,
    TaskCheckpoint,
)
from dat_lightning.callbacks import checkpoint as checkpoint_module

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(RuntimeError):
    pass


class Kill(Callback):
    """Raise at the start of optimizer step ``step``, as a kill would stop the run there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


class CountSteps(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1


def callback_state(checkpoint: dict) -> dict:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("TaskCheckpoint")]
    return state


def test_defaults_say_the_task_metric_is_monitored():
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(TaskCheckpoint, "checkpoint")
    defaults = parser.get_defaults().checkpoint
    assert (defaults.monitor, defaults.mode) == ("auto", "auto")


def test_last_ckpt_is_written_at_step_triggers_before_the_first_validation(tmp_path, tiny_dat):
    """16 steps per epoch, validation at the epoch end, a save every 5 steps, killed at step 12."""
    torch.manual_seed(0)
    ckpt = TaskCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_last=True)
    with pytest.raises(Killed):
        fit(tmp_path, TinyTask(tiny_dat("v1")), [Kill(12), ckpt], max_steps=40, n=128)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"last.ckpt"}  # no val_loss yet: no best
    assert load(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 10
    # --ckpt_path last resumes at its global step.
    steps = CountSteps()
    resumed = TaskCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_last=True)
    trainer = fit(tmp_path, TinyTask(tiny_dat("v1")), [steps, resumed], max_steps=12, n=128,
                  ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert (trainer.global_step, steps.steps) == (12, 2)


def test_last_ckpt_follows_every_epoch_while_the_best_stays(tmp_path, tiny_dat):
    """val_loss gets worse every epoch: the best checkpoint stays epoch 0, last.ckpt moves on."""
    torch.manual_seed(0)
    ckpt = TaskCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, TinyTask(tiny_dat("v1"), val_metric=lambda epoch: epoch), [ckpt], max_steps=12)
    best = "epoch=0-step=4-val_loss=0.0000.ckpt"
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"last.ckpt", best}
    assert (ckpt.monitor, ckpt.mode) == ("val_loss", "min")
    last = load(tmp_path / "ckpt" / "last.ckpt")
    assert last["global_step"] == 12
    state = callback_state(last)
    assert Path(state["best_model_path"]).name == best and float(state["best_model_score"]) == 0.0


@pytest.mark.parametrize("guard", [None, "warn", "stop"])
def test_a_nan_on_the_last_batch_of_an_epoch_never_reaches_disk(tmp_path, tiny_dat, guard):
    """4 steps per epoch; NaN images at step 7, the last batch of epoch 1 (the guard's offset
    checks run every 10 steps, its gradient check every step)."""
    torch.manual_seed(0)
    ckpt = TaskCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    callbacks = [NaNInput(7), ckpt] + ([OffsetGuard(action=guard)] if guard else [])
    if guard == "stop":
        with pytest.raises(OffsetInstabilityError, match=r"step 7, block .* grad_non_finite"):
            fit(tmp_path, TinyTask(tiny_dat("v1")), callbacks, max_steps=12)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OffsetInstabilityWarning)
            skipped = r"checkpoint of step 8: .* is NaN/inf; the previous checkpoint '.*last\.ckpt' stays"
            with pytest.warns(SkippedCheckpointWarning, match=skipped):
                fit(tmp_path, TinyTask(tiny_dat("v1")), callbacks, max_steps=12)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["epoch=0-step=4-val_loss=" + files[0].split("val_loss=")[1], "last.ckpt"]
    last = load(tmp_path / "ckpt" / "last.ckpt")
    assert last["global_step"] == 4 and all_finite(last)


def test_unusable_checkpoint_folder_fails_before_training(tmp_path, tiny_dat):
    (tmp_path / "file").write_text("not a folder")
    steps = CountSteps()
    folder = tmp_path / "file" / "ckpt"
    with pytest.raises(OSError, match=f"cannot write checkpoints to '{folder}'.*checkpoint.dirpath"):
        fit(tmp_path, TinyTask(tiny_dat("v1")), [steps, TaskCheckpoint(dirpath=folder)], max_steps=4)
    assert steps.steps == 0


def test_a_failing_write_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert int(load(path)["step"]) == 1


KILLED_WRITER = """
import os, sys, time, torch
from dat_lightning.callbacks import AtomicCheckpointIO
checkpoint = torch.load(sys.argv[1], weights_only=False)
checkpoint["global_step"] += 1

def stall(fd):
    print("written, not yet renamed", flush=True)
    time.sleep(600)

os.fsync = stall
AtomicCheckpointIO().save_checkpoint(checkpoint, sys.argv[1])
"""


def test_a_kill_during_a_checkpoint_write_keeps_last_ckpt_loadable(tmp_path, tiny_dat):
    torch.manual_seed(0)
    folder = tmp_path / "ckpt"
    fit(tmp_path, TinyTask(tiny_dat("v1")), [TaskCheckpoint(dirpath=folder, every_n_train_steps=2,
                                                            save_last=True)], max_steps=4, val=False)
    last = folder / "last.ckpt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(last)], stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert writer.stdout.readline().strip() == "written, not yet renamed"
    finally:
        writer.kill()
        writer.wait()
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before
    assert (folder / "last.ckpt.partial").is_file()
    assert load(last)["global_step"] == 4
    # The next run removes the stale temp file and resumes from last.ckpt at its step.
    steps = CountSteps()
    trainer = fit(tmp_path, TinyTask(tiny_dat("v1")), [steps, TaskCheckpoint(dirpath=folder, save_last=True)],
                  max_steps=6, val=False, ckpt_path=str(last))
    assert (trainer.global_step, steps.steps) == (6, 2)
    assert not list(folder.glob("*.partial"))

"""OffsetStatistics and OffsetGuard on short CPU fine-tunes of a tiny DAT."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from dat_lightning.callbacks import (
    OffsetGuard,
    OffsetInstabilityError,
    OffsetInstabilityWarning,
    OffsetStatistics,
    offset_statistics,
)
from dat_lightning.callbacks.statistics import normalized_to_pixels, stage_of
from dat_lightning.models.layers.deformable_attention import DeformableRecord, reference_points

STATS = ["mean_abs_cells", "std_abs_cells", "max_abs_cells", "mean_abs_px", "std_abs_px", "max_abs_px",
         "saturated", "outside", "spread", "attn_entropy"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Images(Dataset):
    """Fixed random 32x32 images with fixed random labels (learnable by memorising)."""

    def __init__(self, n: int = 32, classes: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


class TinyTask(pl.LightningModule):
    """Classifier around a DAT; the offset networks get their own AdamW group (LR x 0.1)."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-3, offset_lr_mult: float = 0.1,
                 offset_group_name: str = "offsets") -> None:
        super().__init__()
        self.model = model
        self.lr, self.offset_lr_mult, self.offset_group_name = lr, offset_lr_mult, offset_group_name

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.model(batch["image"]), batch["label"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self.model(batch["image"]), batch["label"]))

    def configure_optimizers(self):
        offsets = [p for n, p in self.named_parameters() if ".conv_offset." in n]
        rest = [p for n, p in self.named_parameters() if ".conv_offset." not in n]
        opt = torch.optim.AdamW([{"params": rest, "name": "base"},
                                 {"params": offsets, "lr": self.lr * self.offset_lr_mult,
                                  "name": self.offset_group_name}], lr=self.lr)
        # A scheduler that recomputes the LR from base_lrs every step: a LR cut must survive it.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def offset_group(task: TinyTask) -> dict:
    return next(g for g in task.trainer.optimizers[0].param_groups if g["name"] == task.offset_group_name)


def fit(tmp_path: Path, task: TinyTask, callbacks: list[Callback], max_steps: int, val: bool = True,
        **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=max_steps, callbacks=callbacks,
                         logger=CSVLogger(tmp_path, name="csv"), accelerator="cpu", devices=1,
                         limit_val_batches=1 if val else 0, num_sanity_val_steps=0,
                         enable_progress_bar=False, enable_model_summary=False, **kwargs)
    loader = DataLoader(Images(), batch_size=8, shuffle=False)
    trainer.fit(task, loader, DataLoader(Images(8), batch_size=8) if val else None)
    return trainer


def make_record(generation: str, offset: torch.Tensor, saturated: torch.Tensor) -> DeformableRecord:
    ref = reference_points(2, 2, generation, torch.float32, "cpu").expand(1, 1, 2, 2, 2)
    return DeformableRecord(pos=ref + offset, ref=ref, saturated=saturated, fmap_size=(4, 4),
                            generation=generation, offset_range_factor=2.0)


def test_offset_statistics_of_a_known_record():
    # v1 2x2 key grid on a 4x4 map: references at +-0.5, one cell = 1.0 normalised unit.
    offset = torch.zeros(1, 1, 2, 2, 2)
    offset[0, 0, 0, 0] = torch.tensor([0.5, 0.0])
    offset[0, 0, 1, 1] = torch.tensor([0.0, 1.0])  # x: 0.5 -> 1.5, outside the map
    saturated = torch.tensor([[[[True, False], [False, False]]]])
    stats = offset_statistics([make_record("v1", offset, saturated)], input_size=(32, 32))
    cells = torch.tensor([0.5, 0.0, 0.0, 1.0])
    # align_corners=True: 2 normalised units span fmap - 1 = 3 cells of 32 / 4 = 8 px.
    pixels = cells * 3 / 2 * 8
    for name, values in (("cells", cells), ("px", pixels)):
        assert stats[f"mean_abs_{name}"] == pytest.approx(values.mean().item())
        assert stats[f"std_abs_{name}"] == pytest.approx(values.std(unbiased=False).item())
        assert stats[f"max_abs_{name}"] == pytest.approx(values.max().item())
    assert stats["saturated"] == 0.25 and stats["outside"] == 0.25
    pos = (make_record("v1", offset, saturated).pos).reshape(4, 2)
    expected_spread = pos.var(0, unbiased=False).sum().sqrt() / math.sqrt(2 * 0.25)
    assert stats["spread"] == pytest.approx(expected_spread.item())
    # Pixel conversion: -1 and +1 are the centres of the first and last feature cells.
    corners = normalized_to_pixels(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), (4, 4), (32, 32))
    assert corners.tolist() == [[3.5, 3.5], [27.5, 27.5]]


def test_saturation_ignores_reference_points_beyond_the_border():
    # DAT++ 2x2 key grid: references at 0 and 2, so only the (0, 0) point lies inside the map.
    everywhere_but_inside = torch.tensor([[[[False, True], [True, True]]]])
    stats = offset_statistics([make_record("pp", torch.zeros(1, 1, 2, 2, 2), everywhere_but_inside)])
    assert stats["saturated"] == 0.0
    stats = offset_statistics([make_record("pp", torch.zeros(1, 1, 2, 2, 2), ~everywhere_but_inside)])
    assert stats["saturated"] == 1.0


def read_metrics(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("generation", ["v1", "pp"])
def test_healthy_finetune_logs_every_statistic_and_guard_stays_quiet(tmp_path, tiny_dat, generation):
    torch.manual_seed(0)
    task = TinyTask(tiny_dat(generation))
    stats = OffsetStatistics(every_n_steps=5, attention_entropy=True, num_images=1)
    guard = OffsetGuard(every_n_steps=1)
    trainer = fit(tmp_path, task, [stats, guard], max_steps=16, check_val_every_n_epoch=2)

    assert guard.events == []
    blocks = [k for k, _ in task.model.deformable_blocks()]
    stages = sorted({stage_of(k) for k in blocks})
    assert blocks and len(stages) >= 2
    rows = read_metrics(trainer)
    expected = {f"offsets/{split}/{name}/{stat}" for split in ("train", "val") for name in blocks + stages
                for stat in STATS}
    expected |= {f"offsets/train/{name}/{stat}" for name in blocks + stages
                 for stat in ("grad_norm", "weight_norm")}
    assert expected <= set(rows[0])
    for key in expected:
        values = [float(r[key]) for r in rows if r[key]]
        assert values and all(math.isfinite(v) for v in values), key
    train_key = f"offsets/train/{blocks[0]}/mean_abs_cells"
    assert [int(r["step"]) for r in rows if r[train_key]] == [0, 5, 10, 15]
    val_key = f"offsets/val/{stages[0]}/spread"
    assert [int(r["step"]) for r in rows if r[val_key]] == [8, 16]
    # Recording is off again after the measured steps.
    assert not any(m.record_offsets or m.record_attention for _, m in task.model.deformable_blocks())
    # CSVLogger has no add_figure: one PNG per stage and validation epoch in the log dir.
    pngs = sorted(p.name for p in (Path(trainer.log_dir) / "offset_plots").glob("*.png"))
    assert pngs == sorted(f"val_{s}_sampling_points_step{step:07d}.png" for s in stages for step in (8, 16))


def ours(caught: list) -> list[Warning]:
    return [w.message for w in caught if issubclass(w.category, OffsetInstabilityWarning)]


class LRSpike(Callback):
    """Multiply the offset networks' LR by ``factor`` for the update of optimizer step ``step``."""

    def __init__(self, step: int, factor: float) -> None:
        self.step, self.factor = step, factor

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            offset_group(pl_module)["lr"] *= self.factor


@pytest.mark.parametrize("action", ["warn", "reduce_lr"])
def test_guard_fires_after_an_offset_lr_spike(tmp_path, tiny_dat, action):
    torch.manual_seed(0)
    task = TinyTask(tiny_dat("v1"))
    guard = OffsetGuard(action=action, every_n_steps=1)
    spike = 7
    with pytest.warns(OffsetInstabilityWarning, match="^OffsetGuard at step") as caught:
        fit(tmp_path, task, [LRSpike(spike, 1e4), guard], max_steps=12, val=False)
    assert f"step {spike + 1}, block stages." in str(ours(caught)[0])
    assert guard.events and guard.events[0].step == spike + 1
    fired_at = {e.step for e in guard.events}  # reduce_lr lowers the LR once per check that fired
    blocks = {k for k, _ in task.model.deformable_blocks()}
    assert {e.block for e in guard.events} <= blocks
    assert all(e.value > e.threshold for e in guard.events if e.statistic == "mean_abs_cells")
    group = offset_group(task)
    base = next(g for g in task.trainer.optimizers[0].param_groups if g["name"] == "base")
    assert base["lr"] == pytest.approx(task.lr)
    # The spike is not undone (the scheduler recomputes from its base LR); reduce_lr cuts it once.
    cut = guard.lr_factor ** len(fired_at) if action == "reduce_lr" else 1.0
    expected = task.lr * task.offset_lr_mult * cut
    assert group["lr"] == pytest.approx(expected)


class Corrupt(Callback):
    """Before optimizer step ``step``, blow up the last offset conv of ``block``.

    ``history[s]`` is that weight after ``s`` optimizer steps (what a checkpoint at ``s`` holds).
    """

    def __init__(self, step: int, block: str, value: float, multiply: bool = True) -> None:
        self.step, self.block, self.value, self.multiply = step, block, value, multiply
        self.history: dict[int, torch.Tensor] = {}

    def weight(self, pl_module: pl.LightningModule) -> torch.Tensor:
        return dict(pl_module.model.deformable_blocks())[self.block].conv_offset[-1].weight

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                weight = self.weight(pl_module)
                weight.mul_(self.value) if self.multiply else weight.fill_(self.value)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history[trainer.global_step] = self.weight(pl_module).detach().clone()


def test_guard_stop_keeps_the_last_good_checkpoint(tmp_path, tiny_dat):
    torch.manual_seed(0)
    task = TinyTask(tiny_dat("v1"))
    target, step, every = "stages.2.attns.1", 8, 3
    corrupt = Corrupt(step, target, 1e3)
    # save_on_exception=True would save the corrupted state at step 8 if the guard let it.
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1,
                           save_last=True, save_on_exception=True)
    guard = OffsetGuard(action="stop", every_n_steps=1)
    with pytest.raises(OffsetInstabilityError, match=rf"step {step}, block stages\.2\.attns\.1") as err:
        fit(tmp_path, task, [corrupt, guard, ckpt], max_steps=20, val=False)
    assert "gradient clipping" in str(err.value)
    first = err.value.events[0]
    assert (first.step, first.block, first.statistic) == (step, target, "mean_abs_cells")
    assert guard.events == err.value.events

    saved = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert "last.ckpt" in saved
    steps = {int(n.split("step=")[1].removesuffix(".ckpt")) for n in saved - {"last.ckpt"}}
    assert steps == set(range(every, step, every))  # nothing from the corrupted step on
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == max(steps)
    state = last["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    torch.testing.assert_close(state[f"model.{target}.conv_offset.3.weight"], corrupt.history[max(steps)])
    restored = TinyTask(tiny_dat("v1"))
    restored.load_state_dict(state)
    assert torch.isfinite(restored.model(torch.randn(2, 3, 32, 32))).all()


def test_guard_reports_non_finite_offsets_and_gradients(tmp_path, tiny_dat):
    torch.manual_seed(0)
    task = TinyTask(tiny_dat("pp"))
    guard = OffsetGuard(every_n_steps=2)
    with pytest.warns(OffsetInstabilityWarning, match="^OffsetGuard at step") as caught:
        fit(tmp_path, task, [Corrupt(4, "stages.1.attns.1", float("nan"), multiply=False), guard],
            max_steps=5, val=False)
    assert "NaN/inf" in str(ours(caught)[0])
    fired = {(e.step, e.block, e.statistic) for e in guard.events}
    assert {(4, "stages.1.attns.1", s) for s in ("offsets_non_finite", "grad_non_finite")} <= fired
    assert all(e.step == 4 for e in guard.events)


def test_reduce_lr_needs_an_offset_param_group(tmp_path, tiny_dat):
    task = TinyTask(tiny_dat("v1"), offset_lr_mult=1.0, offset_group_name="mixed")
    task.configure_optimizers = lambda: torch.optim.AdamW(task.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="conv_offset parameters in their own group"):
        fit(tmp_path, task, [OffsetGuard(action="reduce_lr")], max_steps=1, val=False)


def test_callbacks_build_from_defaults():
    stats, guard = OffsetStatistics(), OffsetGuard()
    assert (stats.every_n_steps, guard.every_n_steps, guard.action) == (50, 10, "warn")
    with pytest.raises(ValueError, match="action must be"):
        OffsetGuard(action="explode")

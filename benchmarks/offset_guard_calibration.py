"""Calibrate OffsetGuard's saturation rule on healthy and diverging tiny runs over several seeds.

Trains a narrow DAT (v1 with ``offset_range_factor=[-1, -1, 2, 2]`` as in the digits recipe, and
DAT++ with ``-1`` everywhere) on a learnable toy problem (which cell of a 2 x 4 grid is bright) at
32 px, once per seed and setting:

* ``healthy``: AdamW at ``--lr`` (the recipe's peak LR scale), offset networks at 1x;
* ``healthy5x``: the same at 5x the LR (runs that still converge);
* ``diverging``: offset networks at 1000x the LR after a few frozen steps (they blow up).

Every step it records, for each block with ``offset_range_factor=-1`` (unbounded offsets whose
points saturate at the map border), the saturated fraction, and reports per run the final training
accuracy, the largest saturated fraction held for ``patience`` consecutive checks (the statistic
the rule thresholds), and whether the default rule would fire.

    python benchmarks/offset_guard_calibration.py --seeds 0 1 2 3 4 --steps 60
"""

from __future__ import annotations

import argparse
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from dat_lightning.models import DAT
from dat_lightning.offsets import deformable_blocks, inactive, offset_statistics, recording
from dat_lightning.tasks.optim import build_lr_scheduler, param_groups


def tiny_dat(generation: str) -> DAT:
    common = dict(img_size=32, num_classes=8, dim_stem=16, dims=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                  heads=[1, 2, 4, 8], generation=generation)
    if generation == "v1":
        return DAT(**common, stage_spec=[["L", "S"], ["L", "D"], ["L", "D"], ["L", "D"]],
                   window_sizes=[4, 4, 2, 1], groups=[-1, 1, 2, 4], use_pes=[False, True, True, True],
                   strides=[-1, 1, 1, 1], offset_range_factor=[-1, -1, 2, 2])
    return DAT(**common, stage_spec=[["N", "D"], ["N", "D"], ["N", "D"], ["D", "D"]], groups=[1, 1, 2, 4],
               use_pes=[True] * 4, strides=[4, 2, 1, 1], offset_range_factor=[-1] * 4,
               use_dwc_mlps=[True] * 4, use_lpus=[True] * 4, use_conv_patches=True, ksizes=[5, 3, 3, 3],
               nat_ksizes=[3, 3, 3, 3])


def toy_loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g) * 0.1
    labels = torch.randint(0, 8, (n,), generator=g)
    for i, cell in enumerate(labels.tolist()):
        row, col = divmod(cell, 4)
        images[i, :, row * 16:(row + 1) * 16, col * 8:(col + 1) * 8] += 1.0
    return DataLoader(list(zip(images, labels)), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


class Task(pl.LightningModule):
    def __init__(self, generation: str, lr: float, offset_lr_mult: float, frozen: int, steps: int) -> None:
        super().__init__()
        self.model = tiny_dat(generation)
        self.lr, self.offset_lr_mult, self.frozen, self.steps = lr, offset_lr_mult, frozen, steps
        self.correct: list[float] = []

    def training_step(self, batch, batch_idx):
        logits = self.model(batch[0])
        self.correct.append(float((logits.argmax(1) == batch[1]).float().mean()))
        return F.cross_entropy(logits, batch[1])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(param_groups(self, offset_lr_mult=self.offset_lr_mult), lr=self.lr)
        sched = build_lr_scheduler(opt, self.steps, warmup_steps=5, offset_frozen_steps=self.frozen)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Saturation(Callback):
    """Saturated fraction of every active block with offset_range_factor=-1, every step."""

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = {}
        self._blocks = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._blocks = [(k, b) for k, b in deformable_blocks(pl_module) if b.offset_range_factor < 0]
        self._rec = recording([b for _, b in self._blocks])
        self._rec.__enter__()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for key, block in self._blocks:
            if block.last_record is not None and not inactive(block.last_record):
                self.series.setdefault(key, []).append(offset_statistics([block.last_record])["saturated"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._rec.__exit__(None, None, None)


def held(values: list[float], patience: int) -> float:
    """Largest v such that ``patience`` consecutive values are all >= v."""
    return max((min(values[i:i + patience]) for i in range(len(values) - patience + 1)), default=0.0)


SETTINGS = {"healthy": (1.0, 1.0, 0), "healthy5x": (5.0, 1.0, 0), "diverging": (1.0, 1000.0, 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--generations", nargs="+", default=["v1", "pp"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print("| generation | setting | seed | final train acc (last 10 steps) | block | max saturated | "
          f"held {args.patience} checks |")
    print("|---|---|---|---|---|---|---|")
    for generation in args.generations:
        for setting, (lr_mult, offset_mult, frozen) in SETTINGS.items():
            for seed in args.seeds:
                pl.seed_everything(seed, verbose=False)
                task = Task(generation, args.lr * lr_mult, offset_mult, frozen, args.steps)
                sat = Saturation()
                trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                                     enable_checkpointing=False, enable_progress_bar=False,
                                     enable_model_summary=False, callbacks=[sat], gradient_clip_val=5.0)
                trainer.fit(task, toy_loader(256, seed))
                acc = sum(task.correct[-10:]) / 10
                for key, values in sat.series.items():
                    print(f"| {generation} | {setting} | {seed} | {acc:.2f} | {key} | {max(values):.2f} | "
                          f"{held(values, args.patience):.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Calibrate OffsetGuard's saturation rule on healthy and diverging runs over several seeds.

Fine-tunes the narrow DAT v1 of ``recipes/digits_dat.yaml`` (``offset_range_factor=[-1, -1, 2, 2]``,
so the deformable block of stage 1 has unbounded offsets that saturate at the map border) on the
digits at 32 px, with the recipe's optimizer, once per seed and setting:

* ``healthy``: the recipe's LR (2e-3);
* ``healthy2x`` / ``healthy5x``: 2x / 5x the recipe's LR (high-LR runs; whether they converge is
  in the reported validation accuracy);
* ``diverging``: the recipe's LR with the offset networks at 1000x, unfrozen after 6 steps.

Every step it records, for each active deformable block with ``offset_range_factor=-1``, the
saturated fraction, and reports per run the validation accuracy, the largest saturated fraction and
the largest fraction held for 3 and for 5 consecutive checks (what the rule thresholds).

    python benchmarks/offset_guard_calibration.py --seeds 0 1 2 3 4 --epochs 3
"""

from __future__ import annotations

import argparse
import warnings
from contextlib import ExitStack

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from dat_lightning.offsets import deformable_blocks, inactive, offset_statistics, recording
from dat_lightning.tasks import ClassificationTask
from datamodules import DigitsDataModule

RECIPE_DAT = dict(img_size=32, dim_stem=32, dims=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                  heads=[1, 2, 4, 8], stage_spec=[["L"], ["D"], ["L", "D"], ["D"]], window_sizes=[4, 4, 2, 1],
                  groups=[-1, 1, 2, 4], use_pes=[False, True, True, True], strides=[-1, 1, 1, 1],
                  offset_range_factor=[-1, -1, 2, 2], ksizes=[5, 3, 3, 3], drop_path_rate=0.0)
#: setting -> (LR, offset LR multiplier, offset-frozen steps)
SETTINGS = {"healthy": (2e-3, 1.0, 0), "healthy2x": (4e-3, 1.0, 0), "healthy5x": (1e-2, 1.0, 0),
            "diverging": (2e-3, 1000.0, 6)}


class Saturation(Callback):
    """Saturated fraction of every active block with offset_range_factor=-1, every step."""

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = {}
        self._blocks = []
        self._rec = ExitStack()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._blocks = [(k, b) for k, b in deformable_blocks(pl_module) if b.offset_range_factor < 0]
        self._rec.enter_context(recording([b for _, b in self._blocks]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for key, block in self._blocks:
            if block.last_record is not None and not inactive(block.last_record):
                self.series.setdefault(key, []).append(offset_statistics([block.last_record])["saturated"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._rec.close()


def held(values: list[float], patience: int) -> float:
    """Largest v such that ``patience`` consecutive values are all >= v."""
    return max((min(values[i:i + patience]) for i in range(len(values) - patience + 1)), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print("| setting | seed | val acc | block | max saturated | held 3 checks | held 5 checks |")
    print("|---|---|---|---|---|---|---|")
    for setting in args.settings:
        lr, offset_mult, frozen = SETTINGS[setting]
        for seed in args.seeds:
            pl.seed_everything(seed, verbose=False)
            task = ClassificationTask(
                num_classes=10, backbone="dat_tiny", backbone_kwargs=RECIPE_DAT, label_smoothing=0.1,
                warmup_steps=40, offset_lr_mult=offset_mult, freeze_offsets_steps=frozen,
                optimizer=lambda params, lr=lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.05))
            data = DigitsDataModule(batch_size=64, image_size=32, val_fraction=0.2, num_workers=0, seed=seed)
            sat = Saturation()
            trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, callbacks=[sat], gradient_clip_val=5.0)
            trainer.fit(task, datamodule=data)
            acc = float(trainer.callback_metrics["val_acc1"])
            for key, values in sat.series.items():
                print(f"| {setting} | {seed} | {acc:.3f} | {key} | {max(values):.2f} | "
                      f"{held(values, 3):.2f} | {held(values, 5):.2f} |", flush=True)


if __name__ == "__main__":
    main()

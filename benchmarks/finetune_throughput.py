"""End-to-end fine-tuning throughput through Lightning, and what bounds it.

Trains ``ClassificationTask`` (default backbone ``dat_tiny``) with the real datamodules: the shipped
``DigitsDataModule`` and a CIFAR-sized ``CustomDataModule`` over random 32x32 ``uint8`` images. For
each datamodule it reports, side by side:

* ``data only``: batches/s of the training dataloader alone (workers, augmentation, collation);
* ``train``: optimizer steps/s of ``Trainer.fit``, ``OffsetStatistics`` off;
* ``train + offsets@N``: the same with ``OffsetStatistics(every_n_steps=N)`` (``N=1``: every step).

Step rates come from the time between consecutive ``on_train_batch_start`` calls (the whole step:
data, forward, backward, optimizer, callbacks), median over the measured steps, in wall time and in
process CPU time (steadier when other jobs share the machine). If ``data only`` is several times
``train`` and the offsets rows match ``train``, neither loading nor monitoring is the bottleneck.

    python benchmarks/finetune_throughput.py --steps 30 --batch 32
    python benchmarks/finetune_throughput.py --backbone dat_pp_tiny --datamodules digits
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from dat_lightning.callbacks import OffsetStatistics
from dat_lightning.tasks import ClassificationTask
from datamodules import CustomDataModule, DigitsDataModule


class RandomImages:
    """``n`` random ``size x size x 3`` uint8 images with labels in ``0..9`` (CIFAR-sized)."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.targets = (np.arange(n) % 10).tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], self.targets[index]


class StepTimer(Callback):
    """Wall and process-CPU time between consecutive training-batch starts."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._last: tuple[float, float] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = (time.perf_counter(), time.process_time())
        if self._last is not None:
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
        self._last = now


def make_datamodule(name: str, args: argparse.Namespace) -> pl.LightningDataModule:
    common = dict(batch_size=args.batch, num_workers=args.workers, image_size=args.size, seed=0)
    if name == "digits":
        return DigitsDataModule(**common)
    return CustomDataModule(RandomImages(args.batch * (args.steps + args.warmup + 2) * 2),
                            num_classes=10, **common)


def data_rate(name: str, args: argparse.Namespace) -> float:
    """Training batches/s of the dataloader alone (after one warm-up batch)."""
    dm = make_datamodule(name, args)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(args.steps):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    return n / (time.perf_counter() - start)


def train_rate(name: str, offsets_every: int | None, args: argparse.Namespace) -> tuple[float, float]:
    """Median steps/s (wall, CPU-time based) of ``Trainer.fit`` over the measured steps."""
    torch.manual_seed(0)
    task = ClassificationTask(num_classes=10, backbone=args.backbone,
                              backbone_kwargs=dict(img_size=args.size))
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if offsets_every:
        callbacks.append(OffsetStatistics(every_n_steps=offsets_every, log_images=False))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(max_steps=args.steps + args.warmup, limit_val_batches=0,
                             num_sanity_val_steps=0, callbacks=callbacks, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp, accelerator="cpu")
        trainer.fit(task, datamodule=make_datamodule(name, args))
    wall = statistics.median(timer.wall[args.warmup:])
    cpu = statistics.median(timer.cpu[args.warmup:])
    return 1 / wall, args.threads / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="dat_tiny")
    parser.add_argument("--datamodules", nargs="+", choices=["digits", "cifar"],
                        default=["digits", "cifar"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--offsets-every", type=int, nargs="+", default=[10, 1])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LightningModule.*has parameters that were not used.*")

    print(f"backbone {args.backbone}, batch {args.batch}, {args.size}px, {args.threads} threads, "
          f"{args.workers} loader worker(s), {args.steps} measured steps\n")
    print("| datamodule | configuration | steps/s (wall) | steps/s (CPU-time based) | x train |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.datamodules:
        print(f"| {name} | data only | {data_rate(name, args):.2f} | | |", flush=True)
        base_wall, base_cpu = train_rate(name, None, args)
        print(f"| {name} | train | {base_wall:.2f} | {base_cpu:.2f} | 1.00 |", flush=True)
        for every in args.offsets_every:
            wall, cpu = train_rate(name, every, args)
            print(f"| {name} | train + offsets@{every} | {wall:.2f} | {cpu:.2f} | "
                  f"{cpu / base_cpu:.2f} |", flush=True)


if __name__ == "__main__":
    main()

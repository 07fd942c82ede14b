"""Training-step overhead of OffsetStatistics / OffsetGuard with their default settings.

Trains a small DAT on random data with Lightning (CSVLogger) once per configuration, several
rounds interleaved, and reports the time between consecutive ``on_train_batch_start`` calls (the
whole step: data, forward, backward, optimizer, callbacks). The overhead is computed from the
process CPU time, which other jobs on a shared machine disturb far less than the wall time
(also reported); with one intra-op thread both measure the same work. ``hooks ms`` is the CPU
time spent inside the offset callbacks' own hooks per step (the part of the overhead that is not
the recording in the forward pass). The ``@1`` configurations measure on every step: the worst case.

    python benchmarks/offset_statistics_overhead.py --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from dat_lightning.callbacks import OffsetGuard, OffsetStatistics
from dat_lightning.models import DAT, create_backbone


def small_dat(generation: str, img_size: int) -> DAT:
    """The dat_test (v1) / dat_pp_test preset at twice its width, as in the recorded runs."""
    name, extra = ("dat_test", dict(window_sizes=[4, 4, 4, 2])) if generation == "v1" else ("dat_pp_test", {})
    return create_backbone(name, img_size=img_size, num_classes=10, dim_stem=32,
                           dims=[32, 64, 128, 256], **extra)


class Task(pl.LightningModule):
    def __init__(self, model: DAT) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.model(images), labels)

    def configure_optimizers(self):
        offsets = [p for n, p in self.named_parameters() if ".conv_offset." in n]
        rest = [p for n, p in self.named_parameters() if ".conv_offset." not in n]
        return torch.optim.AdamW([{"params": rest, "name": "base"},
                                  {"params": offsets, "lr": 1e-4, "name": "offsets"}], lr=1e-3)


CONFIGS = {
    "none": list,
    "statistics": lambda: [OffsetStatistics()],
    "guard": lambda: [OffsetGuard()],
    "both": lambda: [OffsetStatistics(), OffsetGuard()],
    "statistics@1": lambda: [OffsetStatistics(every_n_steps=1)],
    "guard@1": lambda: [OffsetGuard(every_n_steps=1)],
}
HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")


def time_hooks(callback: Callback, spent: list[float]) -> Callback:
    """Add the CPU time of the callback's training hooks to ``spent[0]``."""
    for name in HOOKS:
        hook = getattr(callback, name)

        def timed(*args, _hook=hook, **kwargs):
            start = time.process_time()
            try:
                return _hook(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - start

        setattr(callback, name, timed)
    return callback


class StepTimer(Callback):
    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append((time.process_time(), time.perf_counter()))


def run(config: str, args: argparse.Namespace) -> tuple[list[tuple[float, float]], float]:
    """(CPU, wall) seconds of each timed step, and the CPU seconds spent in the callbacks' hooks."""
    torch.manual_seed(0)
    spent = [0.0]
    callbacks = [time_hooks(cb, spent) for cb in CONFIGS[config]()]
    timer = StepTimer()
    data = TensorDataset(torch.randn(64, 3, args.img_size, args.img_size), torch.randint(0, 10, (64,)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(max_steps=args.steps + 1, accelerator="cpu", devices=1,
                             callbacks=[timer, *callbacks], logger=CSVLogger(Path(tmp)),
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(Task(small_dat(args.generation, args.img_size)),
                    DataLoader(data, batch_size=args.batch_size, shuffle=True))
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(timer.starts, timer.starts[1:])]
    return steps[args.warmup:], spent[0] / len(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", choices=["v1", "pp"], default="v1")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions per config")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    times: dict[str, list[tuple[float, float]]] = {c: [] for c in CONFIGS}
    hooks: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for _ in range(args.rounds):
        for config in CONFIGS:
            steps, hook_time = run(config, args)
            times[config] += steps
            hooks[config].append(hook_time)
    print(f"DAT {args.generation}, {args.img_size}px, batch {args.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds, {args.threads} thread(s), torch {torch.__version__}, "
          f"lightning {pl.__version__}")
    print(f"{'config':<14}{'CPU ms/step':>12}{'overhead':>10}{'hooks ms':>10}{'hooks %':>9}"
          f"{'wall ms/step':>14}{'wall median':>13}")
    base = statistics.fmean(t[0] for t in times["none"])
    for config in CONFIGS:
        cpu = statistics.fmean(t[0] for t in times[config])
        hook = statistics.fmean(hooks[config])
        wall = [t[1] for t in times[config]]
        print(f"{config:<14}{cpu * 1e3:>12.1f}{cpu / base - 1:>10.1%}{hook * 1e3:>10.2f}{hook / base:>9.2%}"
              f"{statistics.fmean(wall) * 1e3:>14.1f}{statistics.median(wall) * 1e3:>13.1f}")


if __name__ == "__main__":
    main()

"""Short CPU fine-tunes of a tiny DAT for the callback tests: the task, data and trainer they share."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from dat_lightning.tasks.optim import build_lr_scheduler, param_groups


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
    """Classifier around a DAT with the project's param groups (offset networks at LR x
    ``offset_lr_mult``) and constant per-step scheduler; validation logs ``val_loss``, or with
    ``val_metric=lambda epoch: ...`` that value, and picks checkpoints by it (``min``)."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-3, offset_lr_mult: float = 0.1,
                 val_metric=None) -> None:
        super().__init__()
        self.model = model
        self.lr, self.offset_lr_mult, self.val_metric = lr, offset_lr_mult, val_metric

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        return ("val_loss", "min")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.model(batch["image"]), batch["label"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = F.cross_entropy(self.model(batch["image"]), batch["label"])
        self.log("val_loss", loss if self.val_metric is None else float(self.val_metric(self.current_epoch)))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(param_groups(self, offset_lr_mult=self.offset_lr_mult), lr=self.lr)
        sched = build_lr_scheduler(opt, total_steps=1000, schedule="constant")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def offset_groups(task: TinyTask) -> list[dict]:
    return [g for g in task.trainer.optimizers[0].param_groups if g["offset"]]


def fit(tmp_path: Path, task: pl.LightningModule, callbacks: list[Callback], max_steps: int,
        val: bool = True, ckpt_path: str | None = None, n: int = 32, **kwargs) -> pl.Trainer:
    """Fit on ``n`` images in batches of 8 (no shuffling), validating on 8 after each epoch."""
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=max_steps, callbacks=callbacks,
                         logger=CSVLogger(tmp_path, name="csv"), accelerator="cpu", devices=1,
                         limit_val_batches=1 if val else 0, num_sanity_val_steps=0,
                         enable_progress_bar=False, enable_model_summary=False, **kwargs)
    loader = DataLoader(Images(n), batch_size=8, shuffle=False)
    trainer.fit(task, loader, DataLoader(Images(8), batch_size=8) if val else None, ckpt_path=ckpt_path)
    return trainer


class Corrupt(Callback):
    """Blow up the last offset conv of ``block`` at optimizer step ``step``: before its forward pass
    (``when="before_forward"``) or after its update (``"after_update"``), so the checkpoint of
    step ``step + 1`` would hold it. ``history[s]`` is that weight after ``s`` optimizer steps."""

    def __init__(self, step: int, block: str, value: float, multiply: bool = True,
                 when: str = "before_forward") -> None:
        self.step, self.block, self.value, self.multiply, self.when = step, block, value, multiply, when
        self.history: dict[int, torch.Tensor] = {}

    def weight(self, pl_module: pl.LightningModule) -> torch.Tensor:
        return dict(pl_module.model.deformable_blocks())[self.block].conv_offset[-1].weight

    def _damage(self, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            weight = self.weight(pl_module)
            weight.mul_(self.value) if self.multiply else weight.fill_(self.value)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and self.when == "before_forward":
            self._damage(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step + 1 and self.when == "after_update":
            self._damage(pl_module)
        self.history[trainer.global_step] = self.weight(pl_module).detach().clone()


class NaNInput(Callback):
    """Replace the images of the batch of optimizer step ``step`` with NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch["image"].fill_(float("nan"))


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False, map_location="cpu")


def all_finite(checkpoint: dict) -> bool:
    tensors = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
    for opt in checkpoint.get("optimizer_states", []):
        tensors += [v for s in opt["state"].values() for v in s.values()
                    if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)

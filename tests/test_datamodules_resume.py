"""Reproducible data: the same seed gives the same batches, and a resume continues the same stream."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import CustomDataModule, EpochSampler


def images(count: int = 40) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), i % 2) for i in range(count)]


def datamodule(**options) -> CustomDataModule:
    # every augmentation of the preset is random (crop, flip, jitter), so any unseeded draw shows
    return CustomDataModule(images(), num_classes=2, image_size=16, batch_size=4, val_fraction=0.1,
                            **{"num_workers": 0, **options})


def batches(dm: CustomDataModule, epoch: int) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [batch["image"] for batch in loader]


def test_same_seed_same_batches_with_any_worker_count():
    first, second = datamodule(), datamodule(num_workers=2, persistent_workers=False)
    first.setup("fit"), second.setup("fit")
    for epoch in (0, 1):
        a, b = batches(first, epoch), batches(second, epoch)
        assert len(a) == 9 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(batches(first, 0)[0], batches(first, 1)[0])  # a new order and new crops
    other = datamodule(seed=1)
    other.setup("fit")
    assert not torch.equal(batches(other, 0)[0], batches(first, 0)[0])


def test_sampler_splits_ranks_and_skips_seen_samples():
    data = range(10)
    ranks = [list(EpochSampler(data, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    indices = [i for rank in ranks for i, _ in rank]
    assert all(len(rank) == 3 for rank in ranks) and len(set(indices)) == 9  # disjoint, remainder dropped
    full = list(EpochSampler(data, seed=3, start_epoch=2))
    resumed = EpochSampler(data, seed=3, start_epoch=2, skip=4)
    assert list(resumed) == full[4:]
    assert list(resumed) == full  # the skip applies to the resumed epoch only


class Recorder(L.LightningModule):
    """Records a fingerprint of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["image"].sum(dim=(1, 2, 3)))
        return torch.nn.functional.cross_entropy(self.layer(batch["image"].mean(dim=(2, 3))), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(root, ckpt_path=None, **limits) -> Recorder:
    model = Recorder()
    trainer = L.Trainer(default_root_dir=root, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_last=True)],
                        **limits)
    trainer.fit(model, datamodule=datamodule(), ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("stop", [9 + 3, 9], ids=["step-3-of-epoch-1", "end-of-epoch-0"])
def test_resume_continues_the_uninterrupted_stream(tmp_path, stop):
    """Stopped mid-epoch (or at an epoch's end) and resumed from ``last.ckpt``: the same batches."""
    full = fit(tmp_path / "full", max_epochs=3).seen
    cut = fit(tmp_path / "cut", max_steps=stop).seen
    resumed = fit(tmp_path / "cut", ckpt_path=tmp_path / "cut" / "last.ckpt", max_epochs=3).seen
    assert len(full) == 27 and len(cut) == stop and len(resumed) == 27 - stop
    assert all(torch.equal(a, b) for a, b in zip(full, cut + resumed, strict=True))
    assert not torch.equal(full[0], full[9])  # epochs differ, so a replayed epoch 0 would show

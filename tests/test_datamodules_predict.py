"""Prediction on unlabelled images: a folder (recursive), a .txt list or a .csv of paths."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from datamodules_fakes import save_rect_image

from dat_lightning.callbacks import PredictionWriter
from datamodules import DatasetNotFoundError, DigitsDataModule


def unlabelled(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = [tmp_path / "shots" / "a.png", tmp_path / "shots" / "day2" / "b.jpg",
             tmp_path / "shots" / "day2" / "deeper" / "c.png"]
    for path in paths:
        save_rect_image(path, rng, 20)
    (tmp_path / "shots" / "notes.txt").write_text("not an image")
    return sorted(str(p) for p in paths)


class Guess(L.LightningModule):
    """Predicts from the mean colour, as a task's predict_step returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 10)

    def predict_step(self, batch, batch_idx):
        return {"probs": self.layer(batch["image"].mean(dim=(2, 3))).softmax(dim=1)}


@pytest.mark.parametrize("listing", ["folder", "txt", "csv"])
def test_predict_writes_one_row_per_unlabelled_image(tmp_path, listing):
    paths = unlabelled(tmp_path)
    source = {"folder": "shots", "txt": "list.txt", "csv": "list.csv"}[listing]
    relative = [str(Path(p).relative_to(tmp_path)) for p in paths]
    (tmp_path / "list.txt").write_text("\n".join(relative) + "\n")
    (tmp_path / "list.csv").write_text("path,comment\n" + "\n".join(f"{p},x" for p in relative) + "\n",
                                       encoding="utf-8-sig")
    dm = DigitsDataModule(predict_images=str(tmp_path / source), num_workers=0, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        callbacks=[PredictionWriter(str(tmp_path / "out"))])
    trainer.predict(Guess(), datamodule=dm, return_predictions=False)
    assert dm.train_dataset is None  # predict builds only what it needs: no labelled split is read
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == paths
    assert all(0 <= int(row["label"]) < 10 for row in rows)


def test_predict_images_that_do_not_exist_are_named(tmp_path):
    dm = DigitsDataModule(predict_images=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(DatasetNotFoundError, match="nowhere does not exist; give a folder of images"):
        dm.setup("predict")

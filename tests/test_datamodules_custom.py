"""The custom-data adapter: any ``(image, target)`` dataset gets augmentation, splits and loaders."""

from __future__ import annotations

import re

import numpy as np
import torch
from datamodules_fakes import rect_image, rectangle

import datamodules
from datamodules import CustomDataModule


class Rectangles:
    """A user dataset: arrays with one bright rectangle, target per ``task``."""

    def __init__(self, count: int, task: str) -> None:
        self.count, self.task = count, task
        self.targets = [i % 3 for i in range(count)]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        box = rectangle(np.random.default_rng(i), 30, 36)
        image = rect_image(box, 30, 36)
        if self.task == "classification":
            return image, self.targets[i]
        if self.task == "segmentation":
            mask = np.zeros((30, 36), np.int64)
            mask[box[1] : box[3], box[0] : box[2]] = 1 + i % 2
            return image, mask
        return image, {"boxes": [box], "labels": [1 + i % 2]}


def test_docstring_example_runs():
    example = re.search(r"Example::\n\n(.*?)\n\n    Args:", CustomDataModule.__doc__, re.S).group(1)
    namespace: dict = {}
    exec(compile("\n".join(line[8:] for line in example.splitlines()), "example", "exec"), namespace)
    batch = namespace["batch"]
    assert batch["image"].shape == (16, 3, 64, 64) and batch["label"].shape == (16,)


def test_classification_split_uses_dataset_targets():
    dm = CustomDataModule(
        Rectangles(30, "classification"), num_classes=3, val_fraction=0.2, num_workers=0, image_size=24
    )
    dm.setup()
    val_labels = [dm.val_dataset.source.targets[i] for i in dm.val_dataset.indices]
    assert sorted(val_labels) == [0, 0, 1, 1, 2, 2]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 24, 24) and batch["label"].dtype == torch.int64


def test_segmentation_and_detection_tasks():
    seg = CustomDataModule(
        Rectangles(6, "segmentation"),
        task="segmentation",
        class_names=["bg", "a", "b"],
        num_workers=0,
        image_size=24,
    )
    seg.setup()
    batch = next(iter(seg.val_dataloader()))
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape[1:] == (24, 24)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}

    det = CustomDataModule(
        Rectangles(6, "detection"),
        task="detection",
        num_classes=2,
        num_workers=0,
        image_size=24,
        batch_size=2,
    )
    det.setup()
    batch = next(iter(det.train_dataloader()))
    assert len(batch["image"]) == 2 and batch["target"][0]["boxes"].shape == (1, 4)
    assert batch["target"][0]["labels"].dtype == torch.int64


def test_every_named_datamodule_is_exported():
    names = """DigitsDataModule CIFAR10DataModule CIFAR100DataModule ImageFolderDataModule CSVDataModule
        OxfordPetsDataModule Flowers102DataModule Food101DataModule SegmentationFolderDataModule
        ADE20KDataModule VOCSegmentationDataModule COCODetectionDataModule VOCDetectionDataModule
        CustomDataModule""".split()
    for name in names:
        assert (
            issubclass(getattr(datamodules, name), datamodules.BaseDataModule) and name in datamodules.__all__
        )

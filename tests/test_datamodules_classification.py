"""Classification datamodules on fake data in each dataset's real on-disk format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datamodules_fakes import write_cifar, write_flowers, write_food, write_image_folder, write_pets
from matplotlib.figure import Figure

from datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CSVDataModule,
    DigitsDataModule,
    Flowers102DataModule,
    Food101DataModule,
    ImageFolderDataModule,
    OxfordPetsDataModule,
)
from datamodules.class_names import CIFAR10_CLASSES, CIFAR100_CLASSES, FOOD101_CLASSES, OXFORD_PETS_CLASSES

SMALL = {"batch_size": 4, "num_workers": 0, "image_size": 16}


def check_batches(dm, num_classes: int, size: int = 16, multi_label: bool = False) -> None:
    """Every split yields normalised float images of ``size`` and labels of the contract's type."""
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        batch = next(iter(loader))
        images, labels = batch["image"], batch["label"]
        assert images.dtype == torch.float32 and images.shape[1:] == (3, size, size)
        assert images.shape[0] == labels.shape[0] <= dm.batch_size
        assert images.min() < 0  # normalised: dark pixels fall below the ImageNet mean
        if multi_label:
            assert labels.dtype == torch.float32 and labels.shape[1] == num_classes
            assert set(labels.unique().tolist()) <= {0.0, 1.0}
        else:
            assert labels.dtype == torch.int64 and labels.ndim == 1
            assert 0 <= labels.min() and labels.max() < num_classes
    assert "id" in batch and len(batch["id"]) == len(batch["image"])


def test_digits_batches_without_network():
    dm = DigitsDataModule(batch_size=8, num_workers=0)
    assert dm.num_classes == 10 and dm.class_names == [str(i) for i in range(10)]
    check_batches(dm, 10, size=32)
    assert len(dm.train_dataset) + len(dm.val_dataset) == 1797


def test_digits_split_is_stratified_and_seeded():
    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = DigitsDataModule(num_workers=0, val_fraction=0.2, seed=seed)
        dm.setup("fit")
        return dm.train_dataset.indices, dm.val_dataset.indices

    train, val = split(0)
    assert split(0) == (train, val)
    assert split(1)[1] != val
    assert not set(train) & set(val) and len(train) + len(val) == 1797
    targets = np.asarray(DigitsDataModule(num_workers=0)._source("train").targets)
    assert len(val) == round(0.2 * 1797)
    for label, count in Counter(targets.tolist()).items():
        assert abs(int((targets[val] == label).sum()) - 0.2 * count) < 1  # class shares kept


def test_digits_images_are_upsampled_digits():
    dm = DigitsDataModule(num_workers=0, image_size=24)
    image, label = dm._source("train")[0]
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8 and label == 0
    assert image.max() > 200 and image.min() == 0


@pytest.mark.parametrize(
    ("module", "hundred", "names"),
    [(CIFAR10DataModule, False, CIFAR10_CLASSES), (CIFAR100DataModule, True, CIFAR100_CLASSES)],
)
def test_cifar_python_pickles(tmp_path, module, hundred, names):
    write_cifar(tmp_path, hundred, per_batch=12, names=names)
    dm = module(str(tmp_path), **SMALL)
    assert dm.num_classes == len(names) and dm.class_names == names
    check_batches(dm, len(names))
    train_total = 12 if hundred else 60
    assert len(dm.train_dataset) + len(dm.val_dataset) == train_total
    assert len(dm.test_dataset) == 12


def test_image_folder_with_and_without_val_root(tmp_path):
    write_image_folder(tmp_path / "train", ["cat", "dog", "eel"], per_class=5)
    dm = ImageFolderDataModule(str(tmp_path / "train"), val_fraction=0.4, **SMALL)
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "eel"]  # known before setup
    check_batches(dm, 3)
    assert len(dm.val_dataset) == 6  # round(0.4 * 5) from each class

    write_image_folder(tmp_path / "val", ["cat", "dog", "eel"], per_class=2, seed=1)
    dm = ImageFolderDataModule(str(tmp_path / "train"), val_root=str(tmp_path / "val"), **SMALL)
    check_batches(dm, 3)
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 6
    assert all("/val/" in path for path in next(iter(dm.predict_dataloader()))["id"])


def test_csv_single_label(tmp_path):
    write_image_folder(tmp_path / "img", ["a", "b"], per_class=4)
    rows = [f"img/{c}/{i}.png,{c}" for c in "ab" for i in range(4)]
    (tmp_path / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    dm = CSVDataModule(str(tmp_path), val_fraction=0.25, **SMALL)
    assert dm.class_names == ["a", "b"]
    check_batches(dm, 2)
    batch = next(iter(dm.predict_dataloader()))
    for path, label in zip(batch["id"], batch["label"].tolist()):  # labels follow the CSV rows
        assert Path(path).parent.name == dm.class_names[label]


def test_csv_multi_label_columns_and_separator(tmp_path):
    write_image_folder(tmp_path / "img", ["x"], per_class=6)
    rows = [(f"img/x/{i}.png", i % 2, (i // 2) % 2, 1) for i in range(6)]
    (tmp_path / "cols.csv").write_text(
        "path,red,round,big\n" + "\n".join(",".join(map(str, r)) for r in rows)
    )
    dm = CSVDataModule(str(tmp_path), train_csv="cols.csv", label_columns=["red", "round", "big"], **SMALL)
    assert dm.multi_label and dm.num_classes == 3
    check_batches(dm, 3, multi_label=True)
    record = dm._source("train")[3]
    assert record[1].tolist() == [1, 1, 1]

    names = {0: "", 1: "red", 2: "round", 3: "red round"}
    (tmp_path / "sep.csv").write_text(
        "path,label\n" + "\n".join(f"img/x/{i}.png,{names[i % 4]}" for i in range(6))
    )
    dm = CSVDataModule(str(tmp_path), train_csv="sep.csv", multi_label=True, **SMALL)
    assert dm.class_names == ["red", "round"]
    assert dm._source("train")[3][1].tolist() == [1, 1] and dm._source("train")[0][1].tolist() == [0, 0]
    check_batches(dm, 2, multi_label=True)


def test_oxford_pets(tmp_path):
    write_pets(tmp_path, class_ids=[1, 2, 37], names=OXFORD_PETS_CLASSES)
    dm = OxfordPetsDataModule(str(tmp_path), val_fraction=0.34, **SMALL)
    assert dm.num_classes == 37
    check_batches(dm, 37)
    test = dm.test_dataset
    labels = {Path(test.source[i][0]).stem.rsplit("_", 1)[0]: test.source[i][1] for i in test.indices}
    assert {OXFORD_PETS_CLASSES[v].replace(" ", "_"): v for v in labels.values()} == labels


def test_flowers102_official_splits(tmp_path):
    labels = [1, 2, 102, 1, 2, 102, 5, 5, 5]
    write_flowers(tmp_path, labels, {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9]})
    dm = Flowers102DataModule(str(tmp_path), **SMALL)
    assert dm.num_classes == 102
    check_batches(dm, 102)
    assert [dm.train_dataset.source[i][1] for i in dm.train_dataset.indices] == [0, 1, 101]
    assert len(dm.val_dataset) == 3 and [dm.test_dataset.source[i][1] for i in range(3)] == [4, 4, 4]


def test_food101_labels_follow_the_fixed_class_order(tmp_path):
    classes = ["waffles", "apple_pie", "pizza"]
    write_food(tmp_path, classes)
    dm = Food101DataModule(str(tmp_path), val_fraction=0.34, **SMALL)
    assert dm.num_classes == 101
    check_batches(dm, 101)
    for i in dm.test_dataset.indices:
        path, label = dm.test_dataset.source[i]
        assert FOOD101_CLASSES[label] == Path(path).parent.name


def test_plot_shows_class_names():
    dm = DigitsDataModule(num_workers=0)
    figure = dm.plot(max_images=4)
    assert isinstance(figure, Figure) and len(figure.axes) == 4
    titles = [ax.get_title() for ax in figure.axes]
    first_batch = next(iter(dm.train_dataloader()))  # the plot shows the start of a shuffled training batch
    assert titles == [dm.class_names[int(label)] for label in first_batch["label"][:4]]
    assert titles != [dm.class_names[int(dm.train_dataset[i]["label"])] for i in range(4)]  # not index order
    shown = figure.axes[0].images[0].get_array()
    assert shown.min() >= 0 and shown.max() <= 1  # un-normalised back to [0, 1]

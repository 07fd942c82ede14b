"""Image classification datamodules."""

from __future__ import annotations

import csv
import json
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from scipy.io import loadmat
from sklearn.datasets import load_digits
from torchvision import datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from datamodules.base import ClassificationDataModule, PublicDataModule, Resource, Split
from datamodules.class_names import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    FOOD101_CLASSES,
    OXFORD_PETS_CLASSES,
)
from datamodules.datasets import Records, Source
from datamodules.io import DatasetNotFoundError, InvalidSampleError

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CSVDataModule",
    "DigitsDataModule",
    "Flowers102DataModule",
    "Food101DataModule",
    "ImageFolderDataModule",
    "OxfordPetsDataModule",
]


class _UpsampledDigits:
    """scikit-learn's 8x8 digits as ``size``-px 3-channel ``uint8`` images, resized on access."""

    def __init__(self, size: int) -> None:
        digits = load_digits()
        self.images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
        self.targets = digits.target.astype(np.int64).tolist()
        self.size = size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        image = cv2.resize(self.images[index], (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return np.repeat(image[..., None], 3, axis=2), self.targets[index]


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes), shipped with the package.

    Needs no download and no ``root``: the embedded default for demos and tests. Images are upsampled
    to ``image_size`` and made 3-channel; validation (and test) is a stratified ``val_fraction`` split.
    Flips are off by default, since a mirrored digit is another symbol.

    Args:
        image_size: side the 8x8 digits are upsampled to.
        crop_scale: area range of the training random resized crop.
        hflip: probability of a horizontal flip.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    def __init__(
        self,
        image_size: int = 32,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        hflip: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, crop_scale=crop_scale, hflip=hflip, **kwargs)
        self.num_classes = 10
        self.class_names = [str(i) for i in range(10)]

    def _source(self, split: Split) -> Source | None:
        return _UpsampledDigits(self.image_size) if split == "train" else None


class CIFAR10DataModule(PublicDataModule, ClassificationDataModule):
    """CIFAR-10 (50,000 train / 10,000 test 32x32 images, 10 classes), the python version's pickles.

    Validation is a stratified ``val_fraction`` of the training batches; test is the test batch.

    Args:
        root: folder holding ``cifar-10-batches-py`` (or to download into).
        download: download the python version of the dataset in :meth:`prepare_data` if missing.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    resources = (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
        ),
    )
    marker = "cifar-10-batches-py"
    layout = "cifar-10-batches-py/\n    data_batch_1 ... data_batch_5\n    test_batch\n    batches.meta"
    classes = CIFAR10_CLASSES
    #: Pickles of each split and the key of their labels.
    files: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    }
    label_key = "labels"

    def _source(self, split: Split) -> Source | None:
        if split == "val":
            return None
        folder = self._require(
            self.root, *(f"{self.marker}/{name}" for name in self.files[split]), download_hint=True
        )
        images, targets = [], []
        for name in self.files[split]:
            path = folder / self.marker / name
            try:
                with open(path, "rb") as handle:
                    batch = pickle.load(handle, encoding="latin1")
                images.append(
                    np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                )
                targets += list(batch[self.label_key])
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
                raise DatasetNotFoundError(
                    f"{path} is not a CIFAR batch ({type(err).__name__}: {err}); replace it with the "
                    "original file (download=True downloads it)"
                ) from err
        return Records(np.concatenate(images), targets)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels, 100 classes), the python version's pickles; the same splits as CIFAR-10.

    Args:
        root: folder holding ``cifar-100-python`` (or to download into).
        download: download the python version of the dataset in :meth:`prepare_data` if missing.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    resources = (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"
        ),
    )
    marker = "cifar-100-python"
    layout = "cifar-100-python/\n    train\n    test\n    meta"
    classes = CIFAR100_CLASSES
    files: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("train",), "test": ("test",)}
    label_key = "fine_labels"


def _check_class_folders(root: Path, classes: Sequence[str], extensions: tuple[str, ...]) -> None:
    for name in classes:
        folder = root / name
        if not any(p.suffix.lower() in extensions for p in folder.rglob("*") if p.is_file()):
            raise InvalidSampleError(
                f"class folder {folder} holds no images (looked for {', '.join(extensions)}); "
                "add images or remove the folder"
            )


class ImageFolderDataModule(ClassificationDataModule):
    """Images in one sub-folder per class (``root/<class>/<image>``), torchvision's ImageFolder layout.

    Classes are the sorted sub-folder names of ``root`` (scanned in ``__init__``, so ``num_classes``
    is available at once). Without ``val_root`` validation is a stratified ``val_fraction`` split.

    Args:
        root: training folder, one sub-folder per class.
        val_root: validation folder with the same class sub-folders (optional).
        test_root: test folder with the same class sub-folders (optional; defaults to validation).
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    layout = "root/\n    <class_a>/img1.jpg, img2.png, ...\n    <class_b>/..."

    def __init__(self, root: str, val_root: str | None = None, test_root: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.root, self.val_root, self.test_root = root, val_root, test_root
        self._require(root)
        try:
            self.class_names, self._class_to_idx = find_classes(root)
        except FileNotFoundError as err:
            raise DatasetNotFoundError(f"{err}. Expected layout:\n{self.layout}") from err
        self.num_classes = len(self.class_names)
        _check_class_folders(Path(root), self.class_names, IMG_EXTENSIONS)

    def _source(self, split: Split) -> Source | None:
        folder = {"train": self.root, "val": self.val_root, "test": self.test_root}[split]
        if folder is None:
            return None
        self._require(folder)
        extra = sorted(set(find_classes(folder)[0]) - set(self.class_names))
        if extra:
            raise InvalidSampleError(
                f"{folder} has class folders {extra} that the training folder {self.root} lacks"
            )
        samples = make_dataset(folder, self._class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        return Records([path for path, _ in samples], [label for _, label in samples])


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class CSVDataModule(ClassificationDataModule):
    """Images listed in CSV manifests: ``path,label`` rows, or multi-label columns.

    Single-label: ``label_column`` holds a class name or a class index. Multi-label (``multi_label``):
    either ``label_columns`` name one 0/1 column per class, or ``label_column`` holds class names
    separated by ``label_separator``. ``num_classes`` is known after ``__init__`` (the training CSV is
    read there). Paths are relative to ``root``.

    Args:
        root: folder that image paths (and the CSV names below) are relative to.
        train_csv: training manifest.
        val_csv: validation manifest (optional; otherwise a ``val_fraction`` split).
        test_csv: test manifest (optional; defaults to validation).
        image_column: column holding the image path.
        label_column: column holding the label(s).
        label_columns: multi-label 0/1 columns, one per class (their names are the class names).
        multi_label: targets are multi-hot vectors (``float32 [B, num_classes]`` labels).
        label_separator: separator of several class names in ``label_column`` (multi-label).
        classes: class names in index order; default: sorted names found in the training CSV, or
            ``"0".."max"`` for integer labels.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    layout = "root/\n    train.csv   (header: path,label)\n    images referenced by the path column"

    def __init__(
        self,
        root: str,
        train_csv: str = "train.csv",
        val_csv: str | None = None,
        test_csv: str | None = None,
        image_column: str = "path",
        label_column: str = "label",
        label_columns: list[str] | None = None,
        multi_label: bool = False,
        label_separator: str = " ",
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.csvs = {"train": train_csv, "val": val_csv, "test": test_csv}
        self.image_column, self.label_column, self.label_columns = image_column, label_column, label_columns
        self.multi_label = multi_label or label_columns is not None
        self.label_separator = label_separator
        self._require(root, train_csv)
        rows = self._rows(train_csv)
        if classes is not None:
            self.class_names = list(classes)
        elif label_columns is not None:
            self.class_names = list(label_columns)
        else:
            self.class_names = self._infer_classes(rows, Path(root) / train_csv)
        self.num_classes = len(self.class_names)

    def _infer_classes(self, rows: list[dict[str, str]], path: Path) -> list[str]:
        """Sorted class names, or ``"0".."max"`` when every label is a number (``3`` or ``3.0``)."""
        found = {name for row in rows for name in self._names(row)}
        numbers = {name: _number(name) for name in found}
        if not found or None in numbers.values():
            return sorted(found)
        bad = sorted(name for name, value in numbers.items() if value < 0 or not value.is_integer())
        if bad:
            raise InvalidSampleError(
                f"{path}: labels {bad} are not class indices (integers from 0); use whole numbers or class "
                "names"
            )
        present = {int(value) for value in numbers.values()}
        names = [str(i) for i in range(max(present) + 1)]
        empty = [name for i, name in enumerate(names) if i not in present]
        if empty:
            warnings.warn(
                f"{path}: numeric labels make classes 0..{len(names) - 1}, but classes {empty} have no "
                "sample (labels counted from 1?). Renumber the labels from 0, or pass classes=[...] "
                "naming every class.",
                stacklevel=3,
            )
        return names

    def _rows(self, name: str) -> list[dict[str, str]]:
        path = Path(self.root) / name
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets' "CSV UTF-8"
            reader = csv.DictReader(handle)
            wanted = [self.image_column, *(self.label_columns or [self.label_column])]
            missing = [c for c in wanted if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidSampleError(
                    f"{path} lacks the column(s) {missing}; its header is {reader.fieldnames}"
                )
            return list(reader)

    def _names(self, row: dict[str, str]) -> list[str]:
        value = row[self.label_column].strip()
        return [n for n in value.split(self.label_separator) if n] if self.multi_label else [value]

    def _target(self, row: dict[str, str], where: str) -> int | np.ndarray:
        if self.label_columns is not None:
            return np.asarray([int(float(row[c])) for c in self.label_columns], dtype=np.int64)
        indices = []
        for name in self._names(row):
            number = _number(name)
            if name in self.class_names:
                indices.append(self.class_names.index(name))
            elif number is not None and number.is_integer():
                index = int(number)
                if not 0 <= index < self.num_classes:
                    raise InvalidSampleError(
                        f"{where}: label {index} is outside 0..{self.num_classes - 1} "
                        f"({self.num_classes} classes)"
                    )
                indices.append(index)
            else:
                raise InvalidSampleError(
                    f"{where}: label {name!r} is not one of the classes {self.class_names}"
                )
        if not self.multi_label:
            return indices[0]
        multi_hot = np.zeros(self.num_classes, dtype=np.int64)
        multi_hot[indices] = 1
        return multi_hot

    def _source(self, split: Split) -> Source | None:
        name = self.csvs[split]
        if name is None:
            return None
        self._require(self.root, name)
        rows = self._rows(name)
        targets = [self._target(row, f"{Path(self.root) / name} row {i + 2}") for i, row in enumerate(rows)]
        return Records([str(Path(self.root) / row[self.image_column]) for row in rows], targets)


class OxfordPetsDataModule(PublicDataModule, ClassificationDataModule):
    """Oxford-IIIT Pet (37 breeds) from its annotation lists; val is a stratified split of ``trainval``.

    Args:
        root: folder holding ``oxford-iiit-pet`` (or to download into).
        download: download images and annotations in :meth:`prepare_data` if missing.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    resources = (
        Resource(
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
            "5c4f3ee8e5d25df40f4fd59a7f44e54c",
            "oxford-iiit-pet",
        ),
        Resource(
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
            "95a8c909bbe2e81eed6a22bccdf3f68f",
            "oxford-iiit-pet",
        ),
    )
    marker = "oxford-iiit-pet/annotations"
    layout = (
        "oxford-iiit-pet/\n    images/<Breed_name>_<n>.jpg\n    annotations/trainval.txt, test.txt "
        "(lines: <image id> <class id 1..37> <species> <breed id>)"
    )
    classes = OXFORD_PETS_CLASSES

    def _source(self, split: Split) -> Source | None:
        if split == "val":
            return None
        name = "trainval" if split == "train" else "test"
        base = (
            self._require(
                self.root,
                "oxford-iiit-pet/images",
                f"oxford-iiit-pet/annotations/{name}.txt",
                download_hint=True,
            )
            / "oxford-iiit-pet"
        )
        listing = base / "annotations" / f"{name}.txt"
        paths, targets = [], []
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 4 or not fields[1].isdigit():
                raise InvalidSampleError(
                    f"{listing} line {number} is not '<image id> <class id> <species> <breed id>': {line!r}"
                )
            paths.append(str(base / "images" / f"{fields[0]}.jpg"))
            targets.append(int(fields[1]) - 1)
        return Records(paths, targets)


class Flowers102DataModule(PublicDataModule, ClassificationDataModule):
    """Oxford Flowers-102 with its official train/val/test splits (``setid.mat``, ``imagelabels.mat``).

    Args:
        root: folder holding ``flowers-102`` (or to download into).
        download: download images, labels and split ids in :meth:`prepare_data` if missing.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    resources = tuple(
        Resource(f"https://www.robots.ox.ac.uk/~vgg/data/flowers/102/{name}", md5, "flowers-102")
        for name, md5 in (
            ("102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"),
            ("imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
            ("setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
        )
    )
    marker = "flowers-102/setid.mat"
    layout = (
        "flowers-102/\n    jpg/image_00001.jpg ...\n    imagelabels.mat (labels 1..102)\n"
        "    setid.mat (trnid, valid, tstid)"
    )
    classes = tuple(tvd.Flowers102.classes)

    def _source(self, split: Split) -> Source | None:
        base = (
            self._require(
                self.root,
                "flowers-102/jpg",
                "flowers-102/imagelabels.mat",
                "flowers-102/setid.mat",
                download_hint=True,
            )
            / "flowers-102"
        )
        labels = np.asarray(loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]).reshape(-1)
        ids = np.asarray(
            loadmat(base / "setid.mat", squeeze_me=True)[
                {"train": "trnid", "val": "valid", "test": "tstid"}[split]
            ]
        ).reshape(-1)
        return Records(
            [str(base / "jpg" / f"image_{i:05d}.jpg") for i in ids.tolist()],
            [int(labels[i - 1]) - 1 for i in ids.tolist()],
        )


class Food101DataModule(PublicDataModule, ClassificationDataModule):
    """Food-101 (101 dishes) from its ``meta`` lists; val is a stratified split of ``train``.

    Args:
        root: folder holding ``food-101`` (or to download into).
        download: download the archive (5 GB) in :meth:`prepare_data` if missing.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    resources = (
        Resource("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "85eeb15f3717b99a5da872d97d918f87"),
    )
    marker = "food-101/meta"
    layout = (
        'food-101/\n    images/<dish>/<id>.jpg\n    meta/train.json, test.json ({dish: ["<dish>/<id>", ...]})'
    )
    classes = FOOD101_CLASSES

    def _source(self, split: Split) -> Source | None:
        if split == "val":
            return None
        base = (
            self._require(self.root, "food-101/images", f"food-101/meta/{split}.json", download_hint=True)
            / "food-101"
        )
        listing = json.loads((base / "meta" / f"{split}.json").read_text())
        unknown = sorted(set(listing) - set(self.class_names))
        if unknown:
            raise InvalidSampleError(f"{base / 'meta' / split}.json names unknown classes {unknown}")
        paths, targets = [], []
        for dish, members in listing.items():
            paths += [str(base / "images" / f"{member}.jpg") for member in members]
            targets += [self.class_names.index(dish)] * len(members)
        return Records(paths, targets)

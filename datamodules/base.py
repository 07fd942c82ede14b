"""The shared base of every datamodule: splits, augmentation, loaders, downloads, previews."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.datasets import (
    ClassificationDataset,
    DetectionDataset,
    SegmentationDataset,
    Source,
    describe,
    detection_collate,
    find_unreadable,
)
from datamodules.io import DatasetNotFoundError, DownloadError
from datamodules.plotting import plot_batch
from datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Task,
    build_transform,
    eval_preset,
    load_pipeline,
    train_preset,
)

__all__ = ["BaseDataModule", "SkippedImagesWarning", "default_num_workers", "split_indices"]

Split = Literal["train", "val", "test"]


class SkippedImagesWarning(UserWarning):
    """Unreadable images were left out because ``on_bad_image="skip"``."""


def default_num_workers() -> int:
    """Loader workers per process: the CPUs this process may use, capped at 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cpus, 8)


def split_indices(
    count: int, fraction: float, seed: int, labels: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(count)`` into ``(train, val)``; ``val`` has ``round(fraction * count)`` items.

    With ``labels`` the split is stratified: each class gives ``fraction`` of its samples to
    validation, rounded by largest remainder so the total is exact, and a class keeps its last
    sample for training unless the total cannot be reached otherwise.
    """
    rng = np.random.default_rng(seed)
    n_val = round(fraction * count)
    if labels is None:
        order = rng.permutation(count)
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    sizes = np.bincount(inverse)
    quota = fraction * sizes
    take = np.minimum(np.floor(quota).astype(np.int64), np.maximum(sizes - 1, 0))
    # Hand out the rest: classes that can spare a sample first, then by largest remainder, ties at random.
    tiebreak = rng.random(len(classes))
    for c in np.lexsort((tiebreak, -(quota - take), sizes - take <= 1)):
        if take.sum() >= n_val:
            break
        if take[c] < sizes[c]:
            take[c] += 1
    train: list[int] = []
    val: list[int] = []
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse == c))
        val += members[: take[c]].tolist()
        train += members[take[c] :].tolist()
    return sorted(train), sorted(val)


def download_or_clean(
    root: str | Path, download: Callable[[], Any], urls: Sequence[str], layout: str
) -> None:
    """Run ``download``; if it fails, delete everything it created under ``root`` and explain.

    Raises:
        DownloadError: naming the URLs, the cause (often: no network) and how to place the files by hand.
    """
    root = Path(root)
    existed = root.exists()
    before = set(root.rglob("*")) if existed else set()
    try:
        download()
    except Exception as err:
        if existed:
            created = sorted(set(root.rglob("*")) - before, key=lambda p: len(p.parts))
            for path in created:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        else:
            shutil.rmtree(root, ignore_errors=True)
        raise DownloadError(
            f"downloading from {', '.join(urls)} failed ({type(err).__name__}: {err}); is there no network? "
            f"Partial files were removed from {root}. To install the dataset by hand, download it on a "
            f"machine with network access and place it so that {root} holds:\n{layout}"
        ) from err


class BaseDataModule(L.LightningDataModule):
    """Base of every datamodule: seeded splits, albumentations presets, loaders and batch previews.

    Subclasses set :attr:`task`, ``num_classes`` and ``class_names`` in ``__init__`` (without
    touching the network) and implement :meth:`_source`, which returns the record source of an
    official split or ``None`` when the dataset has no such split. A missing validation split is cut
    from training (stratified by class for single-label classification), and a missing test split
    reuses validation. Predict uses the test split and adds ``"id"`` to each batch.

    Args:
        batch_size: samples per batch (per device under DDP).
        num_workers: loader worker processes; ``None`` uses the CPU count (at most 8).
        image_size: side of the square training crops (longest side for detection).
        val_fraction: share of the training split held out for validation when the dataset has no
            validation split.
        seed: seed of that split.
        train_transforms: training augmentation replacing the preset: albumentations' serialised
            dict (``A.to_dict``) or a path to a ``.json``/``.yaml`` file written by ``A.save``.
            Normalisation is appended; do not include ``Normalize``/``ToTensorV2``.
        eval_transforms: the same for validation, test and predict.
        mean: per-channel mean of 0..1 RGB used for normalisation (ImageNet's by default).
        std: per-channel standard deviation used for normalisation.
        crop_scale: area range of the training random resized crop.
        hflip: probability of the training horizontal flip.
        color_jitter: brightness/contrast/saturation jitter strength (when ``rand_augment`` is 0).
        rand_augment: number of RandAugment-style ops per training image; 0 uses colour jitter.
        random_erasing: probability of random erasing in training (classification, segmentation).
        on_bad_image: ``"raise"`` stops at the first unreadable image, naming it; ``"skip"`` checks
            every image in :meth:`setup` (one full decode), leaves the unreadable ones out, warns
            with the count and the files, and lists them in ``skipped_images``.
        pin_memory: pin batches in page-locked memory; ``None`` pins when CUDA is available.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
    """

    task: ClassVar[Task] = "classification"
    #: The expected directory layout, shown when the dataset is not found.
    layout: ClassVar[str] = ""
    #: Where the dataset downloads from, shown when a download fails.
    urls: ClassVar[tuple[str, ...]] = ()
    ignore_index: int = 255
    num_classes: int
    class_names: list[str]

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int | None = None,
        image_size: int = 224,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_transforms: dict[str, Any] | str | None = None,
        eval_transforms: dict[str, Any] | str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        rand_augment: int = 0,
        random_erasing: float = 0.0,
        on_bad_image: Literal["raise", "skip"] = "raise",
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f'on_bad_image must be "raise" or "skip", got {on_bad_image!r}')
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.on_bad_image = on_bad_image
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        train_augment = (
            load_pipeline(train_transforms)
            if train_transforms is not None
            else train_preset(
                self.task, image_size, crop_scale, hflip, color_jitter, rand_augment, 0.5, random_erasing
            )
        )
        eval_augment = (
            load_pipeline(eval_transforms)
            if eval_transforms is not None
            else eval_preset(self.task, image_size)
        )
        self.train_transform = build_transform(self.task, train_augment, self.mean, self.std)
        self.eval_transform = build_transform(self.task, eval_augment, self.mean, self.std)
        self.skipped_images: list[str] = []
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None

    # -- what subclasses provide ------------------------------------------------------------------
    def _source(self, split: Split) -> Source | None:
        """The record source of an official split, or ``None`` if the dataset has none."""
        raise NotImplementedError

    def _stratify_labels(self, source: Source) -> Sequence[int] | None:
        """Class index per record, for stratified splits; ``None`` splits at random."""
        if self.task != "classification" or getattr(self, "multi_label", False):
            return None
        return getattr(source, "targets", None)

    def _dataset_options(self) -> dict[str, Any]:
        """Extra keyword arguments of the task dataset (multi-label flag, mask conventions)."""
        return {}

    # -- helpers for subclasses -------------------------------------------------------------------
    def _require(self, root: str | Path, *paths: str, download_hint: bool = False) -> Path:
        """Check that ``root`` holds ``paths``; otherwise raise with the expected layout."""
        root = Path(root)
        missing = [p for p in paths if not (root / p).exists()] if root.is_dir() else [str(root)]
        if missing:
            how = (
                f"Pass download=True to download it (from {', '.join(self.urls)}), or place the files "
                "there by hand."
                if download_hint
                else "Place the files there, or point root at the folder that holds them."
            )
            raise DatasetNotFoundError(
                f"{type(self).__name__}: {', '.join(missing)} not found under {root}. Expected layout:\n"
                f"{self.layout}\n{how}"
            )
        return root

    def _open(self, factory: Callable[..., Any], **kwargs: Any) -> Any:
        """Open a dataset with its torchvision reader, turning "not found or corrupted" into a clear error."""
        try:
            return factory(**kwargs)
        except RuntimeError as err:
            raise DatasetNotFoundError(
                f"{type(self).__name__}: torchvision's reader rejected {kwargs.get('root')}: {err}. Expected "
                f"layout (with the original files, which torchvision checks by checksum):\n{self.layout}\n"
                "Pass download=True to download it, or replace the files with the original ones."
            ) from err

    def _download(self) -> None:
        """Download the dataset into ``root`` (datasets that can be downloaded override this)."""
        raise NotImplementedError(f"{type(self).__name__} cannot download its dataset")

    # -- LightningDataModule ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download the dataset if ``download=True`` (Lightning calls this on one process per node)."""
        if getattr(self, "download", False):
            download_or_clean(self.root, self._download, self.urls, self.layout)

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val/test/predict datasets (once; later calls reuse them)."""
        if self.train_dataset is not None:
            return
        train = self._source("train")
        val = self._source("val")
        test = self._source("test")
        if train is None:
            raise ValueError(f"{type(self).__name__} has no training split")
        train_idx = list(range(len(train)))
        if val is None:
            train_idx, val_idx = split_indices(
                len(train), self.val_fraction, self.seed, self._stratify_labels(train)
            )
            val = train
        else:
            val_idx = list(range(len(val)))
        test, test_idx = (val, val_idx) if test is None else (test, list(range(len(test))))
        if self.on_bad_image == "skip":
            train_idx, val_idx, test_idx = (
                self._drop_unreadable(train, train_idx),
                self._drop_unreadable(val, val_idx),
                self._drop_unreadable(test, test_idx) if test is not val else None,
            )
            test_idx = val_idx if test_idx is None else test_idx
        options = self._dataset_options()
        kind = {
            "classification": ClassificationDataset,
            "segmentation": SegmentationDataset,
            "detection": DetectionDataset,
        }[self.task]
        self.train_dataset = kind(train, self.train_transform, self.num_classes, train_idx, **options)
        self.val_dataset = kind(val, self.eval_transform, self.num_classes, val_idx, **options)
        self.test_dataset = kind(test, self.eval_transform, self.num_classes, test_idx, **options)
        self.predict_dataset = kind(
            test, self.eval_transform, self.num_classes, test_idx, with_ids=True, **options
        )

    def _drop_unreadable(self, source: Source, indices: list[int]) -> list[int]:
        bad = set(find_unreadable(source, indices, masks=self.task == "segmentation"))
        if bad:
            names = [describe(source[i][0], i) for i in sorted(bad)]
            self.skipped_images += names
            warnings.warn(
                f"{type(self).__name__}: skipped {len(bad)} unreadable image(s) of {len(indices)}: "
                f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}",
                SkippedImagesWarning,
                stacklevel=3,
            )
        return [i for i in indices if i not in bad]

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
            collate_fn=detection_collate if self.task == "detection" else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the last incomplete batch is dropped)."""
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches with the eval transform."""
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches (the validation set where the dataset has no test split)."""
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Test-split batches that also carry ``"id"`` (file path or index) per sample."""
        return self._loader(self.predict_dataset, shuffle=False)

    def plot(self, batch: dict[str, Any] | None = None, max_images: int = 8) -> Figure:
        """Preview a batch (by default the first training batch) as a matplotlib figure."""
        if batch is None:
            self.setup("fit")
            samples = [self.train_dataset[i] for i in range(min(max_images, len(self.train_dataset)))]
            batch = detection_collate(samples) if self.task == "detection" else default_collate(samples)
        return plot_batch(batch, self.mean, self.std, self.class_names, max_images, self.ignore_index)


class PublicDataModule(BaseDataModule):
    """A public dataset with a fixed class list (:attr:`classes`) that can be downloaded.

    Args:
        root: folder holding the dataset (or to download into).
        download: download the dataset in :meth:`prepare_data` if it is missing.
        **kwargs: the :class:`BaseDataModule` arguments.
    """

    classes: ClassVar[Sequence[str]] = ()

    def __init__(self, root: str = "data", download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.download = root, download
        self.class_names = list(self.classes)
        self.num_classes = len(self.class_names)

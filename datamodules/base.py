"""The shared bases of every datamodule: splits, validation, augmentation, loaders, downloads, previews.

:class:`BaseDataModule` holds what every task shares; :class:`ClassificationDataModule`,
:class:`SegmentationDataModule` and :class:`DetectionDataModule` declare their task's dataset class
and collate function, and :class:`PublicDataModule` adds the ``root`` and ``download`` of a public
dataset with a fixed class list.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import albumentations as A
import lightning as L
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import extract_archive

from dat_lightning.download import download_url
from datamodules.datasets import (
    ClassificationDataset,
    DetectionDataset,
    ImageListDataset,
    SampleDataset,
    SegmentationDataset,
    Source,
    detection_collate,
)
from datamodules.io import DatasetNotFoundError, DownloadError, InvalidSampleError, UnreadableImageError
from datamodules.plotting import plot_batch
from datamodules.sampling import EpochSampler
from datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Task,
    build_transform,
    eval_preset,
    load_pipeline,
    train_preset,
)

__all__ = [
    "BaseDataModule",
    "ClassificationDataModule",
    "DetectionDataModule",
    "PublicDataModule",
    "Resource",
    "SegmentationDataModule",
    "SkippedImagesWarning",
    "default_num_workers",
    "read_path_list",
    "split_indices",
]

Split = Literal["train", "val", "test"]
Stage = Literal["fit", "validate", "test", "predict"]
#: The splits each Lightning stage needs.
STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
}


class SkippedImagesWarning(UserWarning):
    """Samples that failed the setup scan were left out because ``on_bad_image="skip"``."""


@dataclass(frozen=True)
class Resource:
    """One file of a public dataset: where it downloads from, its MD5, and where it is extracted.

    ``into`` is the folder under ``root`` the file goes to (archives are extracted there).
    """

    url: str
    md5: str | None = None
    into: str = ""

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def read_path_list(source: str | Path, column: str = "path") -> list[str]:
    """Image paths from a folder (searched recursively), a ``.txt`` list or a ``.csv`` with ``column``.

    Relative paths in a list are relative to the list's folder.

    Raises:
        DatasetNotFoundError: ``source`` does not exist or holds no image.
        InvalidSampleError: the CSV lacks ``column``.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(
            str(p) for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
        )
    elif source.suffix.lower() == ".csv" and source.is_file():
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise InvalidSampleError(
                    f"{source} lacks the column {column!r}; its header is {reader.fieldnames}"
                )
            paths = [str(source.parent / row[column].strip()) for row in reader if row[column].strip()]
    elif source.is_file():
        lines = source.read_text(encoding="utf-8-sig").splitlines()
        paths = [str(source.parent / line.strip()) for line in lines if line.strip()]
    else:
        raise DatasetNotFoundError(
            f"{source} does not exist; give a folder of images, a .txt file with one path per line or a "
            f".csv file with a {column!r} column"
        )
    if not paths:
        raise DatasetNotFoundError(f"{source} lists no image (looked for {', '.join(IMG_EXTENSIONS)})")
    return paths


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
        DownloadError: naming the URLs, the cause (a stall, no network) and how to place the files by hand.
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
        cause = str(err) if isinstance(err, DownloadError) else f"{type(err).__name__}: {err}"
        raise DownloadError(
            f"downloading from {', '.join(urls)} failed ({cause.rstrip('. ')}). Partial files were removed "
            f"from {root}. To install the dataset by hand, download it on a machine with network access and "
            f"place it so that {root} holds:\n{layout}"
        ) from err


class BaseDataModule(L.LightningDataModule):
    """Base of every datamodule: seeded splits, a validation scan, albumentations presets, loaders.

    Task bases (:class:`ClassificationDataModule`, :class:`SegmentationDataModule`,
    :class:`DetectionDataModule`) declare :attr:`task`, :attr:`dataset_class` and
    :attr:`collate_fn`; datamodules set ``num_classes`` and ``class_names`` in ``__init__`` (without
    touching the network) and implement :meth:`_source`, which returns the record source of an
    official split or ``None`` when the dataset has no such split. A missing validation split is cut
    from training (stratified by class for single-label classification), and a missing test split
    reuses validation. Predict uses ``predict_images`` when given, else the test split, and adds
    ``"id"`` (the file path, or the index) to each batch.

    :meth:`setup` builds only the splits its ``stage`` needs and checks their samples once (see
    ``validate``). The training order and every augmentation come from ``seed``: the same seed gives
    the same batches, epoch after epoch, with any number of workers, and :meth:`state_dict` saves
    the position in the epoch so that a resumed run continues with the batches it would have seen.

    Args:
        batch_size: samples per batch (per device under DDP).
        num_workers: loader worker processes; ``None`` uses the CPU count (at most 8).
        image_size: side of the square training crops (longest side for detection).
        val_fraction: share of the training split held out for validation when the dataset has no
            validation split.
        seed: seed of that split, of the training order and of the augmentation.
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
        validate: the scan of every sample in :meth:`setup`: ``"fast"`` checks labels, that files
            exist and their headers are images, and that masks have their image's size (from the
            headers); ``"full"`` also decodes every image and mask (finds truncated files and bad
            mask values); ``"off"`` checks nothing up front.
        on_bad_image: ``"raise"`` stops at setup with a summary of the bad samples; ``"skip"``
            decodes every sample (as ``validate="full"``), leaves the bad ones out, warns with the
            files and lists them in ``skipped_images``.
        predict_images: images to predict on instead of the test split: a folder (searched
            recursively), a ``.txt`` file with one path per line or a ``.csv`` with a ``path``
            column; each output row is named by the image's path.
        pin_memory: pin batches in page-locked memory; ``None`` pins when CUDA is available.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
    """

    task: ClassVar[Task]
    dataset_class: ClassVar[type[SampleDataset]]
    #: Collates a list of samples into a batch.
    collate_fn: ClassVar[Callable[[list[dict[str, Any]]], Any]] = staticmethod(default_collate)
    #: The expected directory layout, shown when the dataset is not found.
    layout: ClassVar[str] = ""
    #: The files :meth:`prepare_data` downloads (public datasets).
    resources: tuple[Resource, ...] = ()
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
        validate: Literal["fast", "full", "off"] = "fast",
        on_bad_image: Literal["raise", "skip"] = "raise",
        predict_images: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f'on_bad_image must be "raise" or "skip", got {on_bad_image!r}')
        if validate not in ("fast", "full", "off"):
            raise ValueError(f'validate must be "fast", "full" or "off", got {validate!r}')
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment_options = {
            "crop_scale": tuple(crop_scale),
            "hflip": hflip,
            "color_jitter": color_jitter,
            "rand_augment": rand_augment,
            "random_erasing": random_erasing,
        }
        # Read (and so check) user pipelines now; the transforms themselves are built in setup.
        self._train_augment = load_pipeline(train_transforms) if train_transforms is not None else None
        self._eval_augment = load_pipeline(eval_transforms) if eval_transforms is not None else None
        self.validate = validate
        self.on_bad_image = on_bad_image
        self.predict_images = predict_images
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self.skipped_images: list[str] = []
        self.train_transform: A.Compose | None = None
        self.eval_transform: A.Compose | None = None
        self.train_dataset: SampleDataset | None = None
        self.val_dataset: SampleDataset | None = None
        self.test_dataset: SampleDataset | None = None
        self.predict_dataset: SampleDataset | None = None
        self._splits: dict[str, tuple[Source, list[int]]] | None = None
        self._resume: tuple[int, int] | None = None
        self._scanned: dict[tuple[int, int], Exception | None] = {}
        self._skipped: set[tuple[int, int]] = set()

    # -- what subclasses provide ------------------------------------------------------------------
    def _source(self, split: Split) -> Source | None:
        """The record source of an official split, or ``None`` if the dataset has none."""
        raise NotImplementedError

    def _stratify_labels(self, source: Source) -> Sequence[int] | None:
        """Class index per record, for stratified splits; ``None`` splits at random."""
        return None

    def _dataset_options(self) -> dict[str, Any]:
        """Extra keyword arguments of :attr:`dataset_class` (multi-label flag, mask conventions)."""
        return {}

    # -- helpers for subclasses -------------------------------------------------------------------
    def _require(self, root: str | Path, *paths: str, download_hint: bool = False) -> Path:
        """Check that ``root`` holds ``paths``; otherwise raise with the expected layout."""
        root = Path(root)
        if not root.exists():
            problem = f"the folder {root} does not exist"
        elif not root.is_dir():
            problem = f"{root} is a file, not a folder"
        else:
            missing = [p for p in paths if not (root / p).exists()]
            if not missing:
                return root
            problem = f"{', '.join(missing)} not found under {root}"
        how = (
            f"Pass download=True to download it (from {', '.join(self.urls)}), or place the files there "
            "by hand."
            if download_hint
            else "Place the files there, or point root at the folder that holds them."
        )
        raise DatasetNotFoundError(
            f"{type(self).__name__}: {problem}. Expected layout:\n{self.layout}\n{how}"
        )

    @property
    def urls(self) -> list[str]:
        """Where the dataset downloads from."""
        return [resource.url for resource in self.resources]

    # -- transforms -------------------------------------------------------------------------------
    def _build_transforms(self) -> None:
        if self.train_transform is not None:
            return
        train = self._train_augment or train_preset(
            self.task, self.image_size, rand_augment_magnitude=0.5, **self.augment_options
        )
        evaluation = self._eval_augment or eval_preset(self.task, self.image_size)
        self.train_transform = build_transform(self.task, train, self.mean, self.std)
        self.eval_transform = build_transform(self.task, evaluation, self.mean, self.std)
        # unlabelled images carry no boxes or masks, so no task-specific target handling
        self._predict_transform = build_transform("classification", evaluation, self.mean, self.std)

    # -- LightningDataModule ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build (once) the datasets that ``stage`` needs (all for ``None``) and check their samples."""
        self._build_transforms()
        wanted = STAGE_SPLITS.get(stage, ()) if stage is not None else ("train", "val", "test", "predict")
        if "train" in wanted and self.train_dataset is None:
            self.train_dataset = self._dataset("train", self.train_transform)
        if "val" in wanted and self.val_dataset is None:
            self.val_dataset = self._dataset("val", self.eval_transform)
        if "test" in wanted and self.test_dataset is None:
            self.test_dataset = self._dataset("test", self.eval_transform)
        if "predict" in wanted and self.predict_dataset is None:
            if self.predict_images is not None:
                images = ImageListDataset(read_path_list(self.predict_images), self._predict_transform)
                self.predict_dataset = self._checked(images, "predict")
            else:
                self.predict_dataset = self._dataset("test", self.eval_transform, with_ids=True)

    def _dataset(self, split: Split, transform: A.Compose, with_ids: bool = False) -> SampleDataset:
        """The checked dataset of ``split``."""
        source, indices = self._split_indices()[split]
        dataset = self.dataset_class(
            source, transform, self.num_classes, indices, with_ids=with_ids, **self._dataset_options()
        )
        return self._checked(dataset, "predict" if with_ids else split)

    def _split_indices(self) -> dict[str, tuple[Source, list[int]]]:
        """The source and indices of each split (computed once)."""
        if self._splits is None:
            train, val, test = self._source("train"), self._source("val"), self._source("test")
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
            self._splits = {"train": (train, train_idx), "val": (val, val_idx)}
            self._splits["test"] = (val, val_idx) if test is None else (test, list(range(len(test))))
        return self._splits

    def _checked(self, dataset: SampleDataset, split: str) -> SampleDataset:
        """Scan ``dataset`` as ``validate`` / ``on_bad_image`` say; drop or report the bad samples.

        Each record is scanned once, also where splits share it (test reusing validation).
        """
        skip = self.on_bad_image == "skip"
        if self.validate == "off" and not skip:
            return dataset
        decode = skip or self.validate == "full"
        problems: dict[int, Exception] = {}
        for i, index in enumerate(dataset.indices):
            key = (id(dataset.source), index)
            if key not in self._scanned:
                self._scanned[key] = dataset.problem(i, decode)
            if self._scanned[key] is not None:
                problems[i] = self._scanned[key]
        if not problems:
            return dataset
        listing = "\n".join(f"  {p}" for p in list(problems.values())[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        name = type(self).__name__
        summary = f"{name}: {len(problems)} of {len(dataset)} {split} samples are bad:\n{listing}{more}"
        if skip:
            new = [i for i in problems if (id(dataset.source), dataset.indices[i]) not in self._skipped]
            self._skipped.update((id(dataset.source), dataset.indices[i]) for i in new)
            self.skipped_images += [str(dataset.source[dataset.indices[i]][0]) for i in new]
            if new:  # a split that reuses another's records is not reported twice
                warnings.warn(
                    f'{summary}\nThey were left out (on_bad_image="skip").',
                    SkippedImagesWarning,
                    stacklevel=3,
                )
            dataset.indices = [index for i, index in enumerate(dataset.indices) if i not in problems]
            return dataset
        hint = (
            '\nFix or remove them, or pass on_bad_image="skip" to leave them out '
            '(validate="off" skips this check).'
        )
        unreadable = all(isinstance(p, UnreadableImageError) for p in problems.values())
        raise (UnreadableImageError if unreadable else InvalidSampleError)(summary + hint)

    def _loader(self, dataset: SampleDataset | None, **options: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=self.collate_fn,
            **options,
        )

    def _train_sampler(self) -> EpochSampler:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        epoch, batches = self._resume or (0, 0)
        self._resume = None
        return EpochSampler(self.train_dataset, self.seed, world, rank, epoch, batches * self.batch_size)

    def train_dataloader(self) -> DataLoader:
        """Training batches in the seeded order of each epoch (the last incomplete batch is dropped)."""
        sampler = self._train_sampler() if self.train_dataset is not None else None
        drop_last = sampler is not None and len(sampler) > self.batch_size
        return self._loader(self.train_dataset, sampler=sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        """Validation batches with the eval transform."""
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        """Test batches (the validation set where the dataset has no test split)."""
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_images`` (or of the test split) that also carry ``"id"`` per sample."""
        return self._loader(self.predict_dataset)

    def state_dict(self) -> dict[str, Any]:
        """Where training is in its epoch (saved in checkpoints, so a resume continues the data stream)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        epoch = trainer.current_epoch
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if batches >= trainer.num_training_batches:  # saved at the end of the epoch: resume with the next
            epoch, batches = epoch + 1, 0
        return {"seed": self.seed, "epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training stream at the saved epoch and batch (Lightning calls this on resume)."""
        if state_dict:
            if state_dict["seed"] != self.seed:
                warnings.warn(
                    f"{type(self).__name__}: the checkpoint was trained with seed {state_dict['seed']} but "
                    f"seed is {self.seed}; the resumed run sees a different data stream",
                    stacklevel=2,
                )
            self._resume = (state_dict["epoch"], state_dict["batches"])

    def plot(self, batch: dict[str, Any] | None = None, max_images: int = 8) -> Figure:
        """Preview a batch (by default the first shuffled, augmented training batch) as a figure."""
        if batch is None:
            self.setup("fit")
            keys = itertools.islice(EpochSampler(self.train_dataset, self.seed), max_images)
            batch = self.collate_fn([self.train_dataset[key] for key in keys])
        return plot_batch(batch, self.mean, self.std, self.class_names, max_images, self.ignore_index)


class ClassificationDataModule(BaseDataModule):
    """Base of the classification datamodules: ``{"image", "label"}`` batches.

    Splits are stratified by the source's ``targets`` unless ``multi_label``.
    """

    task = "classification"
    dataset_class = ClassificationDataset
    multi_label: bool = False

    def _stratify_labels(self, source: Source) -> Sequence[int] | None:
        return None if self.multi_label else getattr(source, "targets", None)

    def _dataset_options(self) -> dict[str, Any]:
        return {"multi_label": self.multi_label}


class SegmentationDataModule(BaseDataModule):
    """Base of the semantic segmentation datamodules: ``{"image", "mask"}`` batches, 255 ignored.

    Subclasses may set ``reduce_zero_label`` (label 0 is "other", ignored) and ``palette`` (colour
    masks).
    """

    task = "segmentation"
    dataset_class = SegmentationDataset
    reduce_zero_label: bool = False
    palette: list[tuple[int, int, int]] | None = None

    def _dataset_options(self) -> dict[str, Any]:
        return {
            "reduce_zero_label": self.reduce_zero_label,
            "ignore_index": self.ignore_index,
            "palette": self.palette,
        }


class DetectionDataModule(BaseDataModule):
    """Base of the detection datamodules: ``{"image": [...], "target": [...]}`` list batches."""

    task = "detection"
    dataset_class = DetectionDataset
    collate_fn = staticmethod(detection_collate)


class PublicDataModule(BaseDataModule):
    """A public dataset with a fixed class list (:attr:`classes`) that can be downloaded.

    :meth:`prepare_data` downloads :attr:`resources` (each checked against its MD5, with the
    project's downloader: a stalled connection fails within seconds) and extracts the archives
    into the documented layout; a failed download removes what it wrote.

    Args:
        root: folder holding the dataset (or to download into).
        download: download the dataset in :meth:`prepare_data` if it is missing.
        **kwargs: the :class:`BaseDataModule` arguments.
    """

    classes: ClassVar[Sequence[str]] = ()
    #: A path under ``root`` that exists once the dataset is in place.
    marker: str = ""

    def __init__(self, root: str = "data", download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.download = download
        self.class_names = list(self.classes)
        self.num_classes = len(self.class_names)

    def prepare_data(self) -> None:
        """Download the dataset if ``download=True`` and it is missing (one process per node)."""
        if self.download and not self._in_place():
            download_or_clean(self.root, self._download, self.urls, self.layout)

    def _in_place(self) -> bool:
        """Whether the dataset is already under ``root``."""
        return (Path(self.root) / self.marker).exists()

    def _download(self) -> None:
        for resource in self.resources:
            folder = Path(self.root) / resource.into
            target = folder / resource.file_name
            if not target.is_file():
                download_url(resource.url, target, md5=resource.md5, hint="")
            if resource.file_name.endswith((".tar", ".tar.gz", ".tgz", ".zip")):
                extract_archive(str(target), str(folder))

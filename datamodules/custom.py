"""Augmentation, splits and loaders for any dataset that yields ``(image, target)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datamodules.base import (
    BaseDataModule,
    ClassificationDataModule,
    DetectionDataModule,
    SegmentationDataModule,
    Split,
)
from datamodules.datasets import Source
from datamodules.transforms import Task

__all__ = ["CustomDataModule"]


#: The task base whose dataset class, collate function and options a ``CustomDataModule`` uses.
_TASK_BASES: dict[str, type[BaseDataModule]] = {
    "classification": ClassificationDataModule,
    "segmentation": SegmentationDataModule,
    "detection": DetectionDataModule,
}


class CustomDataModule(BaseDataModule):
    """Wrap your own datasets: anything with ``__len__`` and ``__getitem__(i) -> (image, target)``.

    ``image`` is an ``HxWx3`` (or ``HxW``) ``uint8`` array, a PIL image or a file path. ``target``:

    * ``"classification"``: an ``int`` class index (multi-label: a 0/1 vector of ``num_classes``);
    * ``"segmentation"``: an ``HxW`` class-index mask (array or index-PNG path), 255 = ignore;
    * ``"detection"``: ``{"boxes": [N, 4] xyxy pixels, "labels": [N] in 1..num_classes}``, optionally
      with ``"masks": [N, H, W]``.

    The datamodule adds the augmentation presets (or a recipe's pipeline), a seeded validation split
    when ``val`` is not given (stratified by ``stratify_labels``, or by the dataset's ``targets``
    attribute as torchvision datasets have), the setup scan of every sample, the loaders and
    :meth:`plot`. The presets suit photos: a random resized crop of ``crop_scale=(0.08, 1.0)`` of
    the area and a horizontal flip with ``hflip=0.5``; for digits, text or symbols pass
    ``hflip=0.0, crop_scale=(0.6, 1.0)`` (or ``train_transforms``). Example::

        import numpy as np
        from datamodules import CustomDataModule

        class Squares:  # any indexable works: a list of (image, label) pairs too
            def __len__(self):
                return 100

            def __getitem__(self, i):
                image = np.zeros((64, 64, 3), np.uint8)
                image[16:48, 16:48] = 255 * (i % 2)  # bright square for class 1
                return image, i % 2

        dm = CustomDataModule(Squares(), class_names=["empty", "square"], image_size=64, batch_size=16)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))  # {"image": [16, 3, 64, 64], "label": [16]}

    Args:
        train: training records.
        val: validation records (optional; otherwise a ``val_fraction`` split of ``train``).
        test: test records (optional; defaults to validation).
        task: ``"classification"``, ``"segmentation"`` or ``"detection"``.
        num_classes: number of classes (background excluded for detection); or give ``class_names``.
        class_names: class names in index order (detection: label 1 is ``class_names[0]``).
        multi_label: classification targets are 0/1 vectors (``float32`` multi-hot labels).
        stratify_labels: class index of each ``train`` record, for a stratified validation split.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    def __init__(
        self,
        train: Source,
        val: Source | None = None,
        test: Source | None = None,
        task: Task = "classification",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        multi_label: bool = False,
        stratify_labels: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if task not in _TASK_BASES:
            raise ValueError(f'task must be "classification", "segmentation" or "detection", got {task!r}')
        if num_classes is None and class_names is None:
            raise ValueError("give num_classes or class_names")
        if num_classes is not None and class_names is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but class_names has {len(class_names)} names")
        base = _TASK_BASES[task]
        self.task, self.dataset_class, self.collate_fn = base.task, base.dataset_class, base.collate_fn
        super().__init__(**kwargs)
        self.sources = {"train": train, "val": val, "test": test}
        self.class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.num_classes = len(self.class_names)
        self.multi_label = multi_label
        self.stratify_labels = stratify_labels

    reduce_zero_label = False
    palette = None

    def _source(self, split: Split) -> Source | None:
        return self.sources[split]

    def _stratify_labels(self, source: Source) -> Sequence[int] | None:
        if self.stratify_labels is not None:
            return self.stratify_labels
        return _TASK_BASES[self.task]._stratify_labels(self, source)

    def _dataset_options(self) -> dict[str, Any]:
        return _TASK_BASES[self.task]._dataset_options(self)

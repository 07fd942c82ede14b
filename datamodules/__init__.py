"""LightningDataModules for fine-tuning DAT / DAT++: classification, segmentation, detection.

Every datamodule shares :class:`~datamodules.base.BaseDataModule` (splits, albumentations presets,
loaders, :meth:`~datamodules.base.BaseDataModule.plot`) and exposes ``num_classes``,
``class_names``, ``batch_size``, ``num_workers``, ``mean`` and ``std`` right after ``__init__``.
"""

from datamodules.base import BaseDataModule, SkippedImagesWarning
from datamodules.classification import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CSVDataModule,
    DigitsDataModule,
    Flowers102DataModule,
    Food101DataModule,
    ImageFolderDataModule,
    OxfordPetsDataModule,
)
from datamodules.custom import CustomDataModule
from datamodules.datasets import detection_collate
from datamodules.detection import COCODetectionDataModule, VOCDetectionDataModule
from datamodules.io import DatasetNotFoundError, DownloadError, InvalidSampleError, UnreadableImageError
from datamodules.segmentation import ADE20KDataModule, SegmentationFolderDataModule, VOCSegmentationDataModule
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ADE20KDataModule",
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "COCODetectionDataModule",
    "CSVDataModule",
    "CustomDataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "DownloadError",
    "Flowers102DataModule",
    "Food101DataModule",
    "ImageFolderDataModule",
    "InvalidSampleError",
    "OxfordPetsDataModule",
    "SegmentationFolderDataModule",
    "SkippedImagesWarning",
    "UnreadableImageError",
    "VOCDetectionDataModule",
    "VOCSegmentationDataModule",
    "detection_collate",
]

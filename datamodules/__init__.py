"""LightningDataModules for fine-tuning DAT / DAT++: classification, segmentation, detection.

Every datamodule shares :class:`~datamodules.base.BaseDataModule` (splits, the setup scan,
albumentations presets, seeded and resumable loaders, :meth:`~datamodules.base.BaseDataModule.plot`)
through its task's base (:class:`ClassificationDataModule`, :class:`SegmentationDataModule`,
:class:`DetectionDataModule`) and exposes ``num_classes``, ``class_names``, ``batch_size``,
``num_workers``, ``mean`` and ``std`` right after ``__init__``.

The package's import name is ``datamodules``: a project with its own local ``datamodules`` package
shadows it when that project's folder comes first on ``sys.path`` (``python -m`` and scripts run
from there). The command line (``python -m dat_lightning``, ``lightning``) always loads this one;
in your own scripts, name your package differently or import this one before yours is on the path.
"""

from datamodules.base import (
    BaseDataModule,
    ClassificationDataModule,
    DetectionDataModule,
    PublicDataModule,
    SegmentationDataModule,
    SkippedImagesWarning,
)
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
from datamodules.sampling import EpochSampler
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
    "ClassificationDataModule",
    "CustomDataModule",
    "DatasetNotFoundError",
    "DetectionDataModule",
    "DigitsDataModule",
    "DownloadError",
    "EpochSampler",
    "Flowers102DataModule",
    "Food101DataModule",
    "ImageFolderDataModule",
    "InvalidSampleError",
    "OxfordPetsDataModule",
    "PublicDataModule",
    "SegmentationDataModule",
    "SegmentationFolderDataModule",
    "SkippedImagesWarning",
    "UnreadableImageError",
    "VOCDetectionDataModule",
    "VOCSegmentationDataModule",
    "detection_collate",
]

"""Semantic segmentation datamodules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.base import PublicDataModule, Resource, SegmentationDataModule, Split
from datamodules.class_names import ADE20K_CLASSES, VOC_CLASSES
from datamodules.datasets import Records, Source
from datamodules.io import InvalidSampleError, read_mask

__all__ = ["ADE20KDataModule", "SegmentationFolderDataModule", "VOCSegmentationDataModule"]


def paired_files(image_dir: Path, mask_dir: Path, mask_suffix: str = ".png") -> Records:
    """Pair ``image_dir/<name>.<ext>`` with ``mask_dir/<name><mask_suffix>``; a missing mask is an error."""
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    masks = [mask_dir / f"{p.stem}{mask_suffix}" for p in images]
    missing = [str(image) for image, mask in zip(images, masks) if not mask.is_file()]
    if missing:
        raise InvalidSampleError(
            f"{len(missing)} image(s) have no mask in {mask_dir} (expected <name>{mask_suffix}), "
            f"e.g. {missing[0]}"
        )
    return Records([str(p) for p in images], [str(p) for p in masks])


class SegmentationFolderDataModule(SegmentationDataModule):
    """Images and masks in parallel folders, paired by file name.

    Masks are single-channel index PNGs (``L`` or palette ``P``; pixel value = class, 255 = ignore),
    or colour PNGs when ``palette`` lists each class's RGB colour. Without ``classes`` (or
    ``palette``), ``__init__`` reads every training mask once to find ``num_classes`` (largest class
    value + 1).

    Args:
        root: folder with ``images/<split>`` and ``masks/<split>`` sub-folders.
        classes: class names in index order.
        palette: RGB colour of each class, for colour masks (index ``i`` = class ``i``).
        mask_suffix: mask file name ending that replaces the image extension.
        crop_scale: area range of the training random resized crop.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    layout = (
        "root/\n    images/train/<name>.jpg    masks/train/<name>.png\n"
        "    images/val/ ...  masks/val/ ...   (optional; else a val_fraction split)\n"
        "    images/test/ ... masks/test/ ...  (optional)"
    )

    def __init__(
        self,
        root: str,
        classes: list[str] | None = None,
        palette: list[tuple[int, int, int]] | None = None,
        mask_suffix: str = ".png",
        crop_scale: tuple[float, float] = (0.25, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(crop_scale=crop_scale, **kwargs)
        self.root, self.palette, self.mask_suffix = root, palette, mask_suffix
        self._require(root, "images/train", "masks/train")
        if classes is not None:
            self.class_names = list(classes)
        elif palette is not None:
            self.class_names = [str(i) for i in range(len(palette))]
        else:
            masks = map(read_mask, self._split("train").targets)
            top = max((int(m[m != self.ignore_index].max(initial=0)) for m in masks), default=0)
            self.class_names = [str(i) for i in range(top + 1)]
        if palette is not None and len(palette) != len(self.class_names):
            raise ValueError(
                f"palette has {len(palette)} colours but there are {len(self.class_names)} classes"
            )
        self.num_classes = len(self.class_names)

    def _split(self, split: str) -> Records:
        root = Path(self.root)
        return paired_files(root / "images" / split, root / "masks" / split, self.mask_suffix)

    def _source(self, split: Split) -> Source | None:
        return self._split(split) if (Path(self.root) / "images" / split).is_dir() else None


class _PublicSegmentationDataModule(PublicDataModule, SegmentationDataModule):
    """A public segmentation benchmark: :class:`~datamodules.base.PublicDataModule` with the
    segmentation crop default.

    Args:
        root: folder holding the dataset (or to download into).
        download: download the dataset in :meth:`prepare_data` if it is missing.
        crop_scale: area range of the training random resized crop.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        crop_scale: tuple[float, float] = (0.25, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, download=download, crop_scale=crop_scale, **kwargs)


class ADE20KDataModule(_PublicSegmentationDataModule):
    """ADE20K SceneParsing (ADEChallengeData2016): 150 classes, label 0 ("other") ignored.

    Masks are reduced by one (``reduce_zero_label``) so classes are 0..149 and "other" becomes 255.
    Test uses the validation images (the challenge's test set has no public masks).

    Args:
        root: ``ADEChallengeData2016`` itself or the folder that holds it.
        download: download and extract the 923 MB archive in :meth:`prepare_data` if missing.
        crop_scale: area range of the training random resized crop.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    resources = (Resource("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"),)
    marker = "ADEChallengeData2016"
    layout = (
        "ADEChallengeData2016/\n    images/training/ADE_train_00000001.jpg ...\n"
        "    annotations/training/ADE_train_00000001.png ...\n"
        "    images/validation/ ...\n    annotations/validation/ ..."
    )
    reduce_zero_label = True

    classes = ADE20K_CLASSES

    def _in_place(self) -> bool:
        return super()._in_place() or (Path(self.root) / "images" / "training").is_dir()

    def _source(self, split: Split) -> Source | None:
        if split == "test":
            return None
        base = Path(self.root)
        base = base / "ADEChallengeData2016" if (base / "ADEChallengeData2016").is_dir() else base
        folder = {"train": "training", "val": "validation"}[split]
        self._require(base, f"images/{folder}", f"annotations/{folder}", download_hint=True)
        return paired_files(base / "images" / folder, base / "annotations" / folder)


class VOCSegmentationDataModule(_PublicSegmentationDataModule):
    """Pascal VOC 2012 segmentation (21 classes with background, 255 = object borders, ignored).

    Train/val are the official ``ImageSets/Segmentation`` lists and test
    reuses val.

    Args:
        root: folder holding ``VOCdevkit/VOC2012`` (or to download into).
        download: download the 2 GB trainval archive in :meth:`prepare_data` if missing.
        crop_scale: area range of the training random resized crop.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    resources = (
        Resource(
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "6cd6e144f989b92b3379bac3b3de84fd",
        ),
    )
    marker = "VOCdevkit/VOC2012"
    layout = (
        "VOCdevkit/VOC2012/\n    JPEGImages/<id>.jpg\n    SegmentationClass/<id>.png (palette PNG)\n"
        "    ImageSets/Segmentation/train.txt, val.txt"
    )

    classes = VOC_CLASSES

    def _source(self, split: Split) -> Source | None:
        if split == "test":
            return None
        base = (
            self._require(
                self.root,
                f"{self.marker}/ImageSets/Segmentation/{split}.txt",
                f"{self.marker}/JPEGImages",
                download_hint=True,
            )
            / self.marker
        )
        ids = (base / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        return Records(
            [str(base / "JPEGImages" / f"{i}.jpg") for i in ids],
            [str(base / "SegmentationClass" / f"{i}.png") for i in ids],
        )

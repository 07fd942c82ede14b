"""Object detection (and instance mask) datamodules."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from torchvision import datasets as tvd

from datamodules.base import DetectionDataModule, PublicDataModule, Resource, Split
from datamodules.class_names import VOC_CLASSES
from datamodules.datasets import Records, Source
from datamodules.io import InvalidSampleError

__all__ = ["COCODetectionDataModule", "VOCDetectionDataModule"]


class _CocoTargets:
    """Targets of COCO images, read lazily from a pycocotools index (crowd regions left out)."""

    def __init__(self, coco: COCO, image_ids: list[int], label_of: dict[int, int], masks: bool) -> None:
        self.coco, self.image_ids, self.label_of, self.masks = coco, image_ids, label_of, masks

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        image_id = self.image_ids[index]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        target = {
            "boxes": boxes,
            "labels": np.asarray([self.label_of[a["category_id"]] for a in anns], np.int64),
        }
        if self.masks:
            info = self.coco.imgs[image_id]
            target["masks"] = np.stack(
                [self.coco.annToMask(a) for a in anns]
                or [np.zeros((0, info["height"], info["width"]), np.uint8)]
            ).reshape(-1, info["height"], info["width"])
        return target


class COCODetectionDataModule(DetectionDataModule):
    """Detection (and instance masks) from COCO-format JSON, read with pycocotools.

    Category ids (which may have gaps, as COCO's 1..90) are renumbered to labels ``1..num_classes``
    in id order; ``class_names`` follows the same order. ``__init__`` reads the training JSON, so
    ``num_classes`` is known at once. Crowd annotations are left out. Without a validation JSON,
    validation is a seeded random ``val_fraction`` split.

    Args:
        root: dataset folder; the paths below are relative to it.
        train_images: folder of training images (``file_name`` in the JSON is relative to it).
        train_annotations: training annotation JSON.
        val_images: folder of validation images.
        val_annotations: validation annotation JSON (optional).
        test_images: folder of test images.
        test_annotations: test annotation JSON (optional; defaults to validation).
        masks: also return instance masks (``uint8 [N, H, W]``) from the segmentation polygons/RLE.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    layout = (
        "root/\n    train2017/<file_name>.jpg\n    val2017/<file_name>.jpg\n"
        "    annotations/instances_train2017.json, instances_val2017.json (COCO format)"
    )

    def __init__(
        self,
        root: str,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str | None = "annotations/instances_val2017.json",
        test_images: str | None = None,
        test_annotations: str | None = None,
        masks: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.masks = root, masks
        self.splits = {
            "train": (train_images, train_annotations),
            "val": (val_images, val_annotations),
            "test": (test_images, test_annotations),
        }
        self._coco = {"train": self._index("train")}
        categories = sorted(
            self._coco["train"].loadCats(self._coco["train"].getCatIds()), key=lambda c: c["id"]
        )
        self.class_names = [c["name"] for c in categories]
        self.num_classes = len(self.class_names)
        self._label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}

    def _index(self, split: str) -> COCO:
        images, annotations = self.splits[split]
        self._require(self.root, images, annotations)
        try:
            return COCO(str(Path(self.root) / annotations))
        except (ValueError, KeyError, TypeError) as err:  # json errors are ValueErrors
            raise InvalidSampleError(
                f"{Path(self.root) / annotations} is not a COCO annotation file: {err}"
            ) from err

    def _source(self, split: Split) -> Source | None:
        images, annotations = self.splits[split]
        if annotations is None or images is None:
            return None
        coco = self._coco.get(split) or self._index(split)
        unknown = sorted(set(coco.getCatIds()) - set(self._label_of))
        if unknown:
            raise InvalidSampleError(
                f"{annotations} uses category ids {unknown} absent from {self.splits['train'][1]}"
            )
        ids = sorted(coco.getImgIds())
        paths = [str(Path(self.root) / images / coco.imgs[i]["file_name"]) for i in ids]
        return Records(paths, _CocoTargets(coco, ids, self._label_of, self.masks))


class _VOCTargets:
    """Targets of Pascal VOC XML annotations, parsed lazily with torchvision's public VOC XML parser."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        path = self.paths[index]
        try:
            objects = tvd.VOCDetection.parse_voc_xml(ET.parse(path).getroot())["annotation"].get("object", [])
        except (ET.ParseError, OSError) as err:
            raise InvalidSampleError(f"cannot parse VOC annotation {path}: {err}") from err
        boxes, labels = [], []
        for obj in objects:
            if obj["name"] not in VOC_CLASSES[1:]:
                raise InvalidSampleError(
                    f"{path}: object class {obj['name']!r} is not a VOC class {VOC_CLASSES[1:]}"
                )
            box = obj["bndbox"]
            # VOC pixels are 1-based and inclusive: (xmin - 1, ymin - 1, xmax, ymax) in 0-based xyxy.
            boxes.append(
                [float(box["xmin"]) - 1, float(box["ymin"]) - 1, float(box["xmax"]), float(box["ymax"])]
            )
            labels.append(VOC_CLASSES.index(obj["name"]))
        return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


class VOCDetectionDataModule(PublicDataModule, DetectionDataModule):
    """Pascal VOC detection (20 classes, labels 1..20) from the ``Annotations`` XML files.

    Train/val follow ``ImageSets/Main``; test reuses val (``year="2007"`` with the VOC2007 test
    archive extracted adds its ``test`` list).

    Args:
        root: folder holding ``VOCdevkit/VOC<year>`` (or to download into).
        year: VOC release, ``"2007"`` to ``"2012"``.
        download: download the trainval archive in :meth:`prepare_data` if missing.
        **kwargs: the :class:`~datamodules.base.BaseDataModule` arguments.
    """

    classes = VOC_CLASSES[1:]

    def __init__(self, root: str = "data", year: str = "2012", download: bool = False, **kwargs: Any) -> None:
        super().__init__(root=root, download=download, **kwargs)
        if year not in tvd.voc.DATASET_YEAR_DICT:
            raise ValueError(f"year must be one of {sorted(tvd.voc.DATASET_YEAR_DICT)}, got {year!r}")
        self.year = year
        release = tvd.voc.DATASET_YEAR_DICT[year]
        self.resources = (Resource(release["url"], release["md5"]),)
        self.marker = f"VOCdevkit/VOC{year}"
        self.layout = (
            f"VOCdevkit/VOC{year}/\n    JPEGImages/<id>.jpg\n    Annotations/<id>.xml\n"
            "    ImageSets/Main/train.txt, val.txt"
        )

    def _source(self, split: Split) -> Source | None:
        base = Path(self.root) / self.marker
        if split == "test" and not (base / "ImageSets/Main/test.txt").is_file():
            return None
        listing = f"{self.marker}/ImageSets/Main/{split}.txt"
        self._require(self.root, listing, f"{self.marker}/Annotations", download_hint=True)
        ids = (Path(self.root) / listing).read_text().split()
        return Records(
            [str(base / "JPEGImages" / f"{i}.jpg") for i in ids],
            _VOCTargets([str(base / "Annotations" / f"{i}.xml") for i in ids]),
        )

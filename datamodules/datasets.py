"""Torch datasets that read records, check them, augment them and return the batch contract's tensors.

A *record source* is anything indexable that yields ``(image, target)``: ``image`` is an
:data:`~datamodules.io.ImageLike`, and ``target`` is

* classification: an ``int`` class index, or for multi-label a 0/1 vector of length ``num_classes``;
* segmentation: an ``HxW`` class-index mask (array, PIL image or path to an index PNG);
* detection: ``{"boxes": [N, 4] xyxy pixels, "labels": [N] in 1..num_classes, "masks": optional [N, H, W]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.io import ImageLike, InvalidSampleError, UnreadableImageError, read_image, read_mask

__all__ = [
    "ClassificationDataset",
    "DetectionDataset",
    "Records",
    "SegmentationDataset",
    "detection_collate",
    "find_unreadable",
]

Source = Sequence[tuple[ImageLike, Any]]


@dataclass
class Records:
    """A record source from two parallel sequences (paths, an ``NxHxWx3`` array, lazy target lists)."""

    images: Sequence[ImageLike]
    targets: Sequence[Any]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[ImageLike, Any]:
        return self.images[index], self.targets[index]


def describe(image: ImageLike, index: int) -> str:
    """A name for a sample in messages and ``id`` outputs: its path, else its index."""
    return str(image) if isinstance(image, (str, Path)) else str(index)


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class _AugmentedDataset(Dataset):
    """Reads ``source[indices[i]]``, checks it, and applies ``transform``."""

    def __init__(
        self,
        source: Source,
        transform: A.Compose,
        num_classes: int,
        indices: Sequence[int] | None = None,
        with_ids: bool = False,
    ) -> None:
        self.source = source
        self.transform = transform
        self.num_classes = num_classes
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.with_ids = with_ids

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        image, target = self.source[index]
        name = describe(image, index)
        sample = self._sample(read_image(image), target, name)
        if self.with_ids:
            sample["id"] = name
        return sample

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        raise NotImplementedError


class ClassificationDataset(_AugmentedDataset):
    """Yields ``{"image": float32 [3, H, W], "label": int64 []}`` (or ``float32 [C]`` multi-hot)."""

    def __init__(self, *args: Any, multi_label: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_label = multi_label

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        image = self.transform(image=image)["image"]
        return {"image": _to_chw(image), "label": self._label(target, name)}

    def _label(self, target: Any, name: str) -> torch.Tensor:
        if not self.multi_label:
            label = int(target)
            if not 0 <= label < self.num_classes:
                raise InvalidSampleError(
                    f"label {label} of {name} is outside 0..{self.num_classes - 1} "
                    f"({self.num_classes} classes)"
                )
            return torch.tensor(label, dtype=torch.int64)
        values = np.asarray(target)
        if values.shape != (self.num_classes,) or not np.isin(values, (0, 1)).all():
            raise InvalidSampleError(
                f"multi-label target of {name} must be a 0/1 vector of length {self.num_classes}, "
                f"got {values.tolist()}"
            )
        return torch.as_tensor(values, dtype=torch.float32)


class SegmentationDataset(_AugmentedDataset):
    """Yields ``{"image": float32 [3, H, W], "mask": int64 [H, W]}``; unlabelled pixels hold ``ignore_index``.

    Args:
        reduce_zero_label: map label 0 ("other") to ``ignore_index`` and shift the rest down by one
            (ADE20K's convention).
        ignore_index: mask value that losses and metrics skip.
        palette: RGB colour of each class, for colour masks; ``None`` reads masks as class indices.
    """

    def __init__(
        self,
        *args: Any,
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        palette: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.palette = None if palette is None else np.asarray(palette, dtype=np.int64).reshape(-1, 3)

    def _read_mask(self, target: Any, mask_name: str) -> np.ndarray:
        if self.palette is None:
            return read_mask(target)
        rgb = read_image(target).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        palette_codes = (self.palette[:, 0] << 16) | (self.palette[:, 1] << 8) | self.palette[:, 2]
        order = np.argsort(palette_codes)
        position = np.searchsorted(palette_codes[order], codes).clip(0, len(order) - 1)
        found = palette_codes[order][position] == codes
        if not found.all():
            unknown = np.unique(rgb[~found], axis=0)[:5].tolist()
            raise InvalidSampleError(f"{mask_name} has colours {unknown} that are not in the palette")
        return order[position]

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        mask_name = str(target) if isinstance(target, (str, Path)) else f"the mask of {name}"
        mask = self._read_mask(target, mask_name)
        if mask.shape != image.shape[:2]:
            raise InvalidSampleError(
                f"{mask_name} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {name} is "
                f"{image.shape[1]}x{image.shape[0]}; masks must have their image's size"
            )
        if self.reduce_zero_label:
            mask = np.where(mask == 0, self.ignore_index, mask - 1)
            mask[mask == self.ignore_index - 1] = self.ignore_index
        labelled = mask[mask != self.ignore_index]
        bad = np.unique(labelled[(labelled < 0) | (labelled >= self.num_classes)])
        if len(bad):
            raise InvalidSampleError(
                f"{mask_name} holds class values {bad.tolist()}, outside 0..{self.num_classes - 1} and not "
                f"the ignore index {self.ignore_index}"
            )
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        return {"image": _to_chw(out["image"]), "mask": torch.from_numpy(out["mask"].astype(np.int64))}


class DetectionDataset(_AugmentedDataset):
    """Yields ``{"image": float32 [3, H, W], "target": {"boxes", "labels"[, "masks"]}}``.

    Boxes are ``float32 [N, 4]`` ``xyxy`` pixels, labels ``int64 [N]`` in ``1..num_classes`` (0 is the
    background), masks ``uint8 [N, H, W]``. Boxes that augmentation pushes out of the image are
    dropped together with their masks.
    """

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], dtype=np.int64).reshape(-1)
        if len(labels) != len(boxes):
            raise InvalidSampleError(f"{name} has {len(boxes)} boxes but {len(labels)} labels")
        bad = labels[(labels < 1) | (labels > self.num_classes)]
        if len(bad):
            raise InvalidSampleError(
                f"box labels {bad.tolist()} of {name} are outside 1..{self.num_classes} "
                "(0 is reserved for the background)"
            )
        height, width = image.shape[:2]
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # zero-area boxes carry no object
        boxes, labels = boxes[keep], labels[keep]
        extra: dict[str, Any] = {}
        masks = target.get("masks")
        if masks is not None:
            masks = np.asarray(masks, dtype=np.uint8).reshape(-1, *np.shape(masks)[-2:])[keep]
            if masks.shape[1:] != (height, width):
                raise InvalidSampleError(
                    f"instance masks of {name} are {masks.shape[2]}x{masks.shape[1]} (WxH) but the image is "
                    f"{width}x{height}; masks must have their image's size"
                )
            if len(masks):
                extra["masks"] = masks
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        out = self.transform(
            image=image, bboxes=boxes, labels=labels, box_index=np.arange(len(boxes)), **extra
        )
        kept = np.asarray(out["box_index"], dtype=np.int64)
        result = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
        }
        if masks is not None:
            new_h, new_w = out["image"].shape[:2]
            chosen = (
                np.asarray(out["masks"])[kept] if "masks" in out else np.zeros((0, new_h, new_w), np.uint8)
            )
            result["masks"] = torch.from_numpy(np.ascontiguousarray(chosen, dtype=np.uint8))
        return {"image": _to_chw(out["image"]), "target": result}


def detection_collate(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate detection samples into lists, since images and box counts differ per sample."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}


def find_unreadable(source: Source, indices: Sequence[int], masks: bool = False) -> list[int]:
    """Return the indices whose image (or, with ``masks``, mask) cannot be read."""
    bad = []
    for index in indices:
        image, target = source[index]
        try:
            read_image(image)
            if masks:
                read_image(target)
        except UnreadableImageError:
            bad.append(index)
    return bad

"""Torch datasets that read records, check them, augment them and return the batch contract's tensors.

A *record source* is anything indexable that yields ``(image, target)``: ``image`` is an
:data:`~datamodules.io.ImageLike`, and ``target`` is

* classification: an ``int`` class index, or for multi-label a 0/1 vector of length ``num_classes``;
* segmentation: an ``HxW`` class-index mask (array, PIL image or path to an index PNG);
* detection: ``{"boxes": [N, 4] xyxy pixels, "labels": [N] in 1..num_classes, "masks": optional [N, H, W]}``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.io import (
    ImageLike,
    InvalidSampleError,
    UnreadableImageError,
    image_size,
    read_image,
    read_mask,
)

__all__ = [
    "ClassificationDataset",
    "DetectionDataset",
    "ImageListDataset",
    "Records",
    "SampleDataset",
    "SegmentationDataset",
    "detection_collate",
    "sample_name",
]

Source = Sequence[tuple[ImageLike, Any]]
#: A dataset index, or ``(index, augmentation seed)`` as :class:`~datamodules.sampling.EpochSampler` yields.
Key = int | tuple[int, int]


@dataclass
class Records:
    """A record source from two parallel sequences (paths, an ``NxHxWx3`` array, lazy target lists)."""

    images: Sequence[ImageLike]
    targets: Sequence[Any]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[ImageLike, Any]:
        return self.images[index], self.targets[index]


def sample_name(image: ImageLike, index: int) -> str:
    """A name for a sample in messages and ``id`` outputs: its path, else its index."""
    return str(image) if isinstance(image, (str, Path)) else str(index)


def _is_integer(value: Any) -> bool:
    """A whole number (``3``, ``3.0``, a 0-d array), not ``3.7``, a string or a vector."""
    try:
        return np.ndim(value) == 0 and float(value).is_integer()
    except (TypeError, ValueError):
        return False


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class SampleDataset(Dataset):
    """Reads ``source[indices[i]]``, checks it, and applies ``transform``.

    ``dataset[(i, seed)]`` seeds the augmentation of that sample with ``seed`` first, so an
    augmented sample depends only on the seed (not on the worker or on what ran before).
    """

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

    def __getitem__(self, key: Key) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        index = self.indices[i]
        image, target = self.source[index]
        name = sample_name(image, index)
        sample = self._sample(read_image(image), target, name)
        if self.with_ids:
            sample["id"] = name
        return sample

    def problem(self, i: int, decode: bool) -> UnreadableImageError | InvalidSampleError | None:
        """What is wrong with sample ``i`` (a missing or unreadable file, a target that does not fit),
        or ``None``. Without ``decode`` only file headers are read."""
        index = self.indices[i]
        try:
            image, target = self.source[index]
            self._check(image_size(image, decode), target, sample_name(image, index), decode)
        except (UnreadableImageError, InvalidSampleError) as err:
            return err
        return None

    def _check(self, size: tuple[int, int], target: Any, name: str, decode: bool) -> None:
        """Raise if ``target`` does not fit an image of ``size`` (height, width)."""

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        raise NotImplementedError


class ImageListDataset(SampleDataset):
    """Unlabelled images (a path list) for prediction: yields ``{"image": float32 [3, H, W], "id": path}``."""

    def __init__(self, paths: Sequence[str], transform: A.Compose) -> None:
        super().__init__([(path, None) for path in paths], transform, 0, with_ids=True)

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        return {"image": _to_chw(self.transform(image=image)["image"])}


class ClassificationDataset(SampleDataset):
    """Yields ``{"image": float32 [3, H, W], "label": int64 []}`` (or ``float32 [C]`` multi-hot)."""

    def __init__(self, *args: Any, multi_label: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_label = multi_label

    def _check(self, size: tuple[int, int], target: Any, name: str, decode: bool) -> None:
        self._label(target, name)

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        image = self.transform(image=image)["image"]
        return {"image": _to_chw(image), "label": self._label(target, name)}

    def _label(self, target: Any, name: str) -> torch.Tensor:
        if not self.multi_label:
            if not _is_integer(target):
                raise InvalidSampleError(
                    f"label {target!r} of {name} is not a class index (an integer 0..{self.num_classes - 1})"
                )
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


class SegmentationDataset(SampleDataset):
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

    def _check(self, size: tuple[int, int], target: Any, name: str, decode: bool) -> None:
        if decode or not isinstance(target, (str, Path)):
            self._mask(target, size, name)
            return
        mask_size = image_size(target)  # the header is enough for the size
        self._check_size(mask_size, size, str(target), name)

    @staticmethod
    def _check_size(mask_size: tuple[int, int], size: tuple[int, int], mask_name: str, name: str) -> None:
        if mask_size != size:
            raise InvalidSampleError(
                f"{mask_name} is {mask_size[1]}x{mask_size[0]} (WxH) but its image {name} is "
                f"{size[1]}x{size[0]}; masks must have their image's size"
            )

    def _mask(self, target: Any, size: tuple[int, int], name: str) -> np.ndarray:
        """The checked class-index mask of the image ``name`` of ``size``."""
        mask_name = str(target) if isinstance(target, (str, Path)) else f"the mask of {name}"
        try:
            mask = self._read_mask(target, mask_name)
        except UnreadableImageError as err:
            raise UnreadableImageError(f"{err} (the mask of {name})") from err
        self._check_size(mask.shape, size, mask_name, name)
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
        return mask

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        mask = self._mask(target, image.shape[:2], name)
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        return {"image": _to_chw(out["image"]), "mask": torch.from_numpy(out["mask"].astype(np.int64))}


class DetectionDataset(SampleDataset):
    """Yields ``{"image": float32 [3, H, W], "target": {"boxes", "labels"[, "masks"]}}``.

    Boxes are ``float32 [N, 4]`` ``xyxy`` pixels, labels ``int64 [N]`` in ``1..num_classes`` (0 is the
    background), masks ``uint8 [N, H, W]``. Boxes that augmentation pushes out of the image are
    dropped together with their masks.
    """

    def _check(self, size: tuple[int, int], target: Any, name: str, decode: bool) -> None:
        self._boxes(target, name)
        masks = target.get("masks") if decode else None  # lazy COCO masks are costly to build
        if masks is not None and len(masks) and np.shape(masks)[-2:] != size:
            raise InvalidSampleError(
                f"instance masks of {name} are {np.shape(masks)[-1]}x{np.shape(masks)[-2]} (WxH) but the "
                f"image is {size[1]}x{size[0]}; masks must have their image's size"
            )

    def _boxes(self, target: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        raw = np.asarray(target["labels"]).reshape(-1)
        labels = raw.astype(np.int64)
        if (labels != raw).any():
            raise InvalidSampleError(f"box labels {raw.tolist()} of {name} are not all integers")
        if len(labels) != len(boxes):
            raise InvalidSampleError(f"{name} has {len(boxes)} boxes but {len(labels)} labels")
        bad = labels[(labels < 1) | (labels > self.num_classes)]
        if len(bad):
            raise InvalidSampleError(
                f"box labels {bad.tolist()} of {name} are outside 1..{self.num_classes} "
                "(0 is reserved for the background)"
            )
        return boxes, labels

    def _sample(self, image: np.ndarray, target: Any, name: str) -> dict[str, Any]:
        boxes, labels = self._boxes(target, name)
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

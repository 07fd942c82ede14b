"""Albumentations presets for fine-tuning, and loading of user pipelines from a recipe.

Every pipeline works on ``HxWx3`` ``uint8`` images and, depending on the task, an ``HxW`` mask or
Pascal-VOC (``xyxy`` pixel) boxes with per-box instance masks, so masks and boxes move with the image.
Normalisation is always appended by :func:`build_transform`; user pipelines hold only augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import albumentations as A
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "EVAL_CROP_RATIO",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Task",
    "build_transform",
    "eval_preset",
    "load_pipeline",
    "train_preset",
]

#: ImageNet's per-channel mean and standard deviation of 0..1 RGB (timm's constants, the one owner).
IMAGENET_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
IMAGENET_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD
#: DAT evaluates at ``image_size`` after resizing the short side to ``image_size / 0.875``.
EVAL_CROP_RATIO = 0.875

Task = Literal["classification", "segmentation", "detection"]

#: Box format handed to albumentations; ``box_index`` lets instance masks follow dropped boxes.
BBOX_PARAMS = A.BboxParams(format="pascal_voc", label_fields=["labels", "box_index"], clip=True, min_area=1.0)


def _rand_augment(num_ops: int, magnitude: float) -> A.BasicTransform:
    """RandAugment-style policy: ``num_ops`` ops drawn from a fixed list, strength ``magnitude`` in [0, 1]."""
    m = magnitude
    ops = [
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, p=1.0),
        A.Affine(translate_percent={"x": (-0.45 * m, 0.45 * m), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.45 * m, 0.45 * m)}, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.9 * m, contrast_limit=0, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.9 * m, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=0.9 * m, hue=0, p=1.0),
        A.Sharpen(alpha=(0.1, max(0.1, 0.9 * m)), p=1.0),
        A.Posterize(num_bits=(max(1, round(8 - 4 * m)), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - m, 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
    ]
    return A.SomeOf(ops, n=num_ops, p=1.0)


def train_preset(
    task: Task,
    image_size: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    rand_augment: int = 0,
    rand_augment_magnitude: float = 0.5,
    random_erasing: float = 0.0,
) -> list[A.BasicTransform]:
    """Fine-tuning augmentation (without normalisation).

    Classification and segmentation: random resized crop to ``image_size`` (``crop_scale`` of the
    area), horizontal flip, then colour jitter, or ``rand_augment`` RandAugment-style ops when it is
    above 0, and random erasing with probability ``random_erasing``. Detection keeps whole images:
    the longest side is resized to ``image_size``, then flip and colour jitter.
    """
    if task == "detection":
        ops: list[A.BasicTransform] = [A.LongestMaxSize(max_size=image_size), A.HorizontalFlip(p=hflip)]
    else:
        ops = [
            A.RandomResizedCrop(size=(image_size, image_size), scale=crop_scale),
            A.HorizontalFlip(p=hflip),
        ]
    if rand_augment > 0:
        ops.append(_rand_augment(rand_augment, rand_augment_magnitude))
    elif color_jitter > 0:
        ops.append(
            A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0)
        )
    if random_erasing > 0 and task != "detection":
        ops.append(A.Erasing(fill="random", p=random_erasing))
    return ops


def eval_preset(task: Task, image_size: int, crop_ratio: float = EVAL_CROP_RATIO) -> list[A.BasicTransform]:
    """Deterministic evaluation transform (without normalisation).

    Classification: resize the short side to ``image_size / crop_ratio`` and centre-crop
    ``image_size`` (DAT's evaluation). Segmentation: resize to ``image_size`` square, keeping every
    labelled pixel. Detection: resize the longest side to ``image_size``.
    """
    if task == "classification":
        return [
            A.SmallestMaxSize(max_size=round(image_size / crop_ratio)),
            A.CenterCrop(height=image_size, width=image_size),
        ]
    if task == "segmentation":
        return [A.Resize(height=image_size, width=image_size)]
    return [A.LongestMaxSize(max_size=image_size)]


def load_pipeline(spec: dict[str, Any] | str | Path) -> list[A.BasicTransform]:
    """Load augmentation from albumentations' serialisation: a ``to_dict`` dict or a ``.json``/``.yaml`` file.

    Save a starting point with ``A.save(A.Compose([...]), "aug.yaml", data_format="yaml")``.
    The pipeline must not contain ``Normalize`` or ``ToTensorV2``: the datamodule appends
    normalisation with its own ``mean``/``std`` and converts to tensors itself.
    """
    if isinstance(spec, dict):
        loaded = A.from_dict(spec if "transform" in spec else {"transform": spec})
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(
                f"augmentation pipeline file {path} does not exist; write one with "
                "A.save(pipeline, path, data_format='yaml' or 'json')"
            )
        data_format = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
        loaded = A.load(path, data_format=data_format)
    transforms = list(loaded.transforms) if isinstance(loaded, A.BaseCompose) else [loaded]
    for transform in transforms:
        if isinstance(transform, (A.Normalize, A.ToTensorV2)):
            raise ValueError(
                f"augmentation pipeline {spec if not isinstance(spec, dict) else '(dict)'} contains "
                f"{type(transform).__name__}; remove it: the datamodule normalises with its mean/std "
                "and converts to tensors itself"
            )
    return transforms


def build_transform(
    task: Task,
    augment: list[A.BasicTransform],
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> A.Compose:
    """Compose ``augment`` with normalisation, carrying boxes (``pascal_voc``) for detection."""
    return A.Compose(
        [*augment, A.Normalize(mean=mean, std=std, max_pixel_value=255.0)],
        bbox_params=BBOX_PARAMS if task == "detection" else None,
    )

"""Tiny fake datasets written in each dataset's real on-disk format, for the datamodule tests.

Every image is a dark background with one bright filled rectangle; the writers return (or store in
the annotation files) where the rectangle is, so tests can check that augmentation keeps masks and
boxes aligned with the pixels.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

DARK, BRIGHT = 20, 235


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def rectangle(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """A random ``(x0, y0, x1, y1)`` rectangle covering roughly a quarter to half of each side."""
    w, h = int(rng.integers(width // 4, width // 2)), int(rng.integers(height // 4, height // 2))
    x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    return x0, y0, x0 + w, y0 + h


def rect_image(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    image = np.full((height, width, 3), DARK, np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = BRIGHT
    return image


def save_rect_image(path: Path, rng: np.random.Generator, size: int = 40) -> tuple[int, int, int, int]:
    """Write a JPEG/PNG with a bright rectangle; return the rectangle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    box = rectangle(rng, size, size + 8)
    Image.fromarray(rect_image(box, size, size + 8)).save(path)
    return box


def save_mask(
    path: Path, box: tuple[int, int, int, int], value: int, size: int, palette: bool = False
) -> None:
    """Write an index mask (mode ``L``, or ``P`` with a palette) holding ``value`` inside ``box``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size + 8), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = value
    image = Image.fromarray(mask, mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


# -- classification -------------------------------------------------------------------------------
def write_cifar(root: Path, hundred: bool, per_batch: int, names: list[str], seed: int = 0) -> dict[str, str]:
    """Write CIFAR-10 (5 train batches + test) or CIFAR-100 (train + test) pickles; return file md5s."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    files = ["train", "test"] if hundred else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in files:
        labels = rng.integers(0, len(names), per_batch).tolist()
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, key: labels}, handle)
    meta = "meta" if hundred else "batches.meta"
    with open(folder / meta, "wb") as handle:
        pickle.dump({"fine_label_names" if hundred else "label_names": names}, handle)
    return {name: md5(folder / name) for name in [*files, meta]}


def write_image_folder(root: Path, classes: list[str], per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            save_rect_image(root / name / f"{i}.png", rng, 24)


def write_pets(root: Path, class_ids: list[int], names: list[str], per_split: int = 3) -> None:
    """``oxford-iiit-pet`` with ``images/<Breed>_<n>.jpg`` and ``annotations/{trainval,test}.txt``."""
    rng = np.random.default_rng(1)
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    n = 0
    for split in ("trainval", "test"):
        lines = []
        for class_id in class_ids:
            for _ in range(per_split):
                n += 1
                image_id = f"{names[class_id - 1].replace(' ', '_')}_{n}"
                save_rect_image(base / "images" / f"{image_id}.jpg", rng, 24)
                lines.append(f"{image_id} {class_id} 1 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_flowers(root: Path, labels: list[int], splits: dict[str, list[int]]) -> dict[str, str]:
    """``flowers-102`` with ``jpg/image_XXXXX.jpg``, ``imagelabels.mat`` (1-based), ``setid.mat``."""
    rng = np.random.default_rng(2)
    base = root / "flowers-102"
    for image_id in range(1, len(labels) + 1):
        save_rect_image(base / "jpg" / f"image_{image_id:05d}.jpg", rng, 24)
    savemat(base / "imagelabels.mat", {"labels": np.asarray(labels)})
    savemat(base / "setid.mat", {key: np.asarray(ids) for key, ids in splits.items()})
    return {"label": md5(base / "imagelabels.mat"), "setid": md5(base / "setid.mat")}


def write_food(root: Path, classes: list[str], per_class: int = 3) -> None:
    """``food-101`` with ``images/<dish>/<id>.jpg`` and ``meta/{train,test}.json``."""
    rng = np.random.default_rng(3)
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    n = 0
    for split in ("train", "test"):
        listing: dict[str, list[str]] = {}
        for name in classes:
            for _ in range(per_class):
                n += 1
                save_rect_image(base / "images" / name / f"{n}.jpg", rng, 24)
                listing.setdefault(name, []).append(f"{name}/{n}")
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")


# -- segmentation -------------------------------------------------------------------------------
def write_seg_folder(root: Path, splits: dict[str, int], num_classes: int, size: int = 40) -> None:
    """``images/<split>/<n>.png`` and ``masks/<split>/<n>.png``: one rectangle of class 1..num_classes-1."""
    rng = np.random.default_rng(4)
    for split, count in splits.items():
        for i in range(count):
            box = save_rect_image(root / "images" / split / f"{i}.png", rng, size)
            save_mask(root / "masks" / split / f"{i}.png", box, 1 + i % (num_classes - 1), size)


def write_ade(root: Path, per_split: int = 3, size: int = 40) -> None:
    """``ADEChallengeData2016``: masks hold 0 ("other") outside and class ``i + 1`` inside the rectangle."""
    rng = np.random.default_rng(5)
    base = root / "ADEChallengeData2016"
    for folder, prefix in (("training", "train"), ("validation", "val")):
        for i in range(per_split):
            name = f"ADE_{prefix}_{i + 1:08d}"
            box = save_rect_image(base / "images" / folder / f"{name}.jpg", rng, size)
            save_mask(base / "annotations" / folder / f"{name}.png", box, 150 - i, size)


def write_voc(root: Path, ids: dict[str, list[str]], size: int = 40) -> dict[str, tuple[str, tuple]]:
    """``VOCdevkit/VOC2012`` with JPEGs, palette ``SegmentationClass`` PNGs and ``Annotations`` XML.

    Each image holds one object of a VOC class inside its rectangle (255 borders around it in the
    mask, like the real masks). Returns ``{image id: (class name, box)}``.
    """
    from datamodules.class_names import VOC_CLASSES

    rng = np.random.default_rng(6)
    base = root / "VOCdevkit" / "VOC2012"
    truth = {}
    for n, image_id in enumerate(i for split in ids.values() for i in split):
        box = save_rect_image(base / "JPEGImages" / f"{image_id}.jpg", rng, size)
        label = 1 + n % 20
        save_mask(base / "SegmentationClass" / f"{image_id}.png", box, label, size, palette=True)
        with Image.open(base / "SegmentationClass" / f"{image_id}.png") as handle:
            mask = np.asarray(handle).copy()
            palette = handle.getpalette()
        x0, y0, x1, y1 = box
        mask[y0, x0:x1] = 255  # a border row, ignored like VOC's object outlines
        border = Image.fromarray(mask, mode="P")
        border.putpalette(palette)
        border.save(base / "SegmentationClass" / f"{image_id}.png")
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>"
            f"<size><width>{size + 8}</width><height>{size}</height><depth>3</depth></size>"
            f"<object><name>{VOC_CLASSES[label]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object></annotation>"
        )
        truth[image_id] = (VOC_CLASSES[label], box)
    for folder in ("Segmentation", "Main"):
        (base / "ImageSets" / folder).mkdir(parents=True, exist_ok=True)
        for split, members in ids.items():
            (base / "ImageSets" / folder / f"{split}.txt").write_text("\n".join(members) + "\n")
    return truth


# -- detection ----------------------------------------------------------------------------------
def write_coco(root: Path, split: str, count: int, categories: dict[int, str], size: int = 40) -> Path:
    """COCO JSON + images: one rectangle per image as box and polygon, cycling through ``categories``."""
    rng = np.random.default_rng(7 if split == "train" else 8)
    images, annotations = [], []
    cat_ids = sorted(categories)
    for i in range(count):
        name = f"{i:012d}.jpg"
        x0, y0, x1, y1 = save_rect_image(root / f"{split}2017" / name, rng, size)
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size + 8})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": cat_ids[i % len(cat_ids)],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            }
        )
    path = root / "annotations" / f"instances_{split}2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cats = [{"id": k, "name": v, "supercategory": "thing"} for k, v in categories.items()]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path

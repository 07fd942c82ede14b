"""Train-loader throughput of the datamodules, in images per second.

Two pipelines, on fake data written in the real on-disk formats (nothing is downloaded):

* CIFAR-10 at 32 px: five pickled batches in the dataset's documented layout, in-memory arrays;
* ImageFolder at 224 px: generated 375x500 JPEGs (ImageNet's typical size) decoded from disk.

Both use the default training preset (random resized crop, flip, colour jitter, normalisation).
Usage: ``python benchmarks/datamodule_throughput.py [--batches 30] [--workers 0 2]``
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules import CIFAR10DataModule, ImageFolderDataModule
from datamodules.class_names import CIFAR10_CLASSES


def write_cifar(root: Path, per_batch: int) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        content = (
            {"label_names": CIFAR10_CLASSES}
            if name == "batches.meta"
            else {
                "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                "labels": [i % 10 for i in range(per_batch)],
            }
        )
        (folder / name).write_bytes(pickle.dumps(content))


def write_jpegs(root: Path, classes: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            image = np.roll(base, shift=(7 * i + c, 11 * i), axis=(0, 1))
            Image.fromarray(image).save(root / f"class_{c}" / f"{i}.jpg", quality=90)


def images_per_second(dm, batches: int) -> float:
    dm.setup("fit")
    loader = dm.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up and the first batch
    seen, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per configuration")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar(Path(tmp) / "cifar", per_batch=1000)
        write_jpegs(Path(tmp) / "folder", classes=10, per_class=40)
        for workers in args.workers:
            common = {"batch_size": args.batch_size, "num_workers": workers}
            configs = [
                (
                    "CIFAR10DataModule (pickled batches)",
                    32,
                    CIFAR10DataModule(str(Path(tmp) / "cifar"), image_size=32, **common),
                ),
                (
                    "ImageFolderDataModule (375x500 JPEG)",
                    224,
                    ImageFolderDataModule(str(Path(tmp) / "folder"), image_size=224, **common),
                ),
            ]
            for name, size, dm in configs:
                rows.append((name, size, args.batch_size, workers, images_per_second(dm, args.batches)))
    print("| pipeline | image size | batch | workers | train images/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, size, batch, workers, rate in rows:
        print(f"| {name} | {size} | {batch} | {workers} | {rate:,.0f} |")


if __name__ == "__main__":
    main()

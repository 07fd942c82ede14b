"""Bad input: missing data, failed downloads, unreadable images, wrong labels and masks, custom pipelines."""

from __future__ import annotations

import hashlib
import re
import tarfile
import time

import albumentations as A
import numpy as np
import pytest
import torch
from datamodules_fakes import save_mask, save_rect_image, write_cifar, write_image_folder, write_seg_folder
from download_fakes import closed_port, fake_server
from PIL import Image

from datamodules import (
    ADE20KDataModule,
    CIFAR10DataModule,
    CSVDataModule,
    CustomDataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    DownloadError,
    ImageFolderDataModule,
    InvalidSampleError,
    SegmentationFolderDataModule,
    SkippedImagesWarning,
    UnreadableImageError,
)
from datamodules.base import Resource

SMALL = {"batch_size": 4, "num_workers": 0, "image_size": 16}


def test_missing_root_shows_layout_and_download_hint(tmp_path):
    dm = CIFAR10DataModule(str(tmp_path / "nowhere"), **SMALL)
    assert dm.num_classes == 10  # known without the data
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "nowhere" in message and "cifar-10-batches-py/" in message and "data_batch_1" in message
    assert "download=True" in message and "cs.toronto.edu" in message
    assert f"the folder {tmp_path / 'nowhere'} does not exist" in message
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{tmp_path / 'file'} is a file, not a folder")):
        CIFAR10DataModule(str(tmp_path / "file"), **SMALL).setup("fit")


def test_missing_folder_without_download_says_where_to_place_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)images/train.*Expected layout.*masks/train"):
        SegmentationFolderDataModule(str(tmp_path), **SMALL)
    with pytest.raises(DatasetNotFoundError, match="ADEChallengeData2016/"):
        ADE20KDataModule(str(tmp_path), **SMALL).setup()


ARCHIVE = "cifar-10-python.tar.gz"


def point_cifar_to(monkeypatch, url: str, md5: str | None = None) -> None:
    """Make CIFAR-10 download from ``url`` (a local test server)."""
    monkeypatch.setattr(CIFAR10DataModule, "resources", (Resource(url, md5),))


def test_failed_download_removes_partial_files(tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine")
    # the network drops mid-archive
    with fake_server(b"\x1f\x8b" + bytes(5000), mode="cut", name=ARCHIVE) as url:
        point_cifar_to(monkeypatch, url)
        dm = CIFAR10DataModule(str(tmp_path), download=True, **SMALL)
        with pytest.raises(DownloadError) as err:
            dm.prepare_data()
    message = str(err.value)
    assert url in message and "stopped after 2501 of 5002 bytes" in message
    assert "by hand" in message and "cifar-10-batches-py/" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_failed_download_into_new_root_removes_it(tmp_path, monkeypatch):
    point_cifar_to(monkeypatch, f"http://127.0.0.1:{closed_port()}/{ARCHIVE}")
    with pytest.raises(DownloadError, match="Connection refused"):
        CIFAR10DataModule(str(tmp_path / "new"), download=True, **SMALL).prepare_data()
    assert not (tmp_path / "new").exists()


def test_stalled_dataset_download_fails_within_30_s(tmp_path, monkeypatch):
    """The default timeout, end to end: a server that sends half the archive and then nothing."""
    with fake_server(b"\x1f\x8b" + bytes(5000), mode="stall", name=ARCHIVE) as url:
        point_cifar_to(monkeypatch, url)
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"(?s)the connection stalled.*by hand"):
            CIFAR10DataModule(str(tmp_path), download=True, **SMALL).prepare_data()
        assert time.monotonic() - start < 30
    assert list(tmp_path.iterdir()) == []


def test_download_checks_md5_and_extracts_the_documented_layout(tmp_path, monkeypatch):
    write_cifar(tmp_path / "src", hundred=False, per_batch=4, names=[str(i) for i in range(10)])
    with tarfile.open(tmp_path / "archive.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    payload = (tmp_path / "archive.tar.gz").read_bytes()
    with fake_server(payload, name=ARCHIVE) as url:
        point_cifar_to(monkeypatch, url, md5="0" * 32)
        with pytest.raises(DownloadError, match=f"is not the expected {'0' * 32}"):
            CIFAR10DataModule(str(tmp_path / "data"), download=True, **SMALL).prepare_data()
        point_cifar_to(monkeypatch, url, md5=hashlib.md5(payload).hexdigest())
        dm = CIFAR10DataModule(str(tmp_path / "data"), download=True, **SMALL)
        dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 20
    dm.prepare_data()  # in place: no second download (the server is gone)


def corrupt_folder(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=4)
    bad = tmp_path / "a" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    truncated = tmp_path / "b" / "2.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    return bad, truncated


def test_setup_scan_names_every_bad_file_and_the_skip_option(tmp_path):
    bad, truncated = corrupt_folder(tmp_path)
    with pytest.raises(UnreadableImageError) as err:
        ImageFolderDataModule(str(tmp_path), **SMALL).setup()
    message = str(err.value)
    assert f"cannot read image {bad}" in message and f"cannot read image {truncated}" in message
    assert "are bad" in message and 'on_bad_image="skip"' in message


def test_unreadable_image_raises_with_its_path_without_the_scan(tmp_path):
    bad, _ = corrupt_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), validate="off", **SMALL)
    dm.setup()
    source = dm.train_dataset.source
    index = next(i for i in range(len(source)) if source[i][0] == str(bad))
    position = (dm.train_dataset.indices + dm.val_dataset.indices).index(index)
    dataset = dm.train_dataset if position < len(dm.train_dataset) else dm.val_dataset
    with pytest.raises(UnreadableImageError, match=re.escape(str(bad))):
        dataset[dataset.indices.index(index)]


def test_skip_policy_reports_and_leaves_out_unreadable_images(tmp_path):
    bad, truncated = corrupt_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), on_bad_image="skip", val_fraction=0.25, **SMALL)
    with pytest.warns(SkippedImagesWarning, match="left out") as record:
        dm.setup()
    reported = " ".join(str(w.message) for w in record)
    assert str(bad) in reported and str(truncated) in reported
    assert sorted(dm.skipped_images) == sorted([str(bad), str(truncated)])
    assert len(dm.train_dataset) + len(dm.val_dataset) == 6
    for dataset in (dm.train_dataset, dm.val_dataset):
        for i in range(len(dataset)):
            assert dataset[i]["image"].shape == (3, 16, 16)


def test_empty_class_folder_is_named(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        InvalidSampleError, match=re.escape(f"class folder {tmp_path / 'empty'} holds no images")
    ):
        ImageFolderDataModule(str(tmp_path), **SMALL)


def test_out_of_range_csv_label_names_file_and_row(tmp_path):
    write_image_folder(tmp_path / "img", ["x"], per_class=3)
    (tmp_path / "train.csv").write_text("path,label\nimg/x/0.png,0\nimg/x/1.png,1\nimg/x/2.png,5\n")
    dm = CSVDataModule(str(tmp_path), classes=["zero", "one"], **SMALL)
    with pytest.raises(InvalidSampleError, match=r"train.csv row 4: label 5 is outside 0..1"):
        dm.setup()


def test_out_of_range_label_from_custom_dataset(tmp_path):
    path = tmp_path / "x.png"
    save_rect_image(path, np.random.default_rng(0), 16)
    dm = CustomDataModule([(str(path), 0), (str(path), 3)], val=[(str(path), 1)], num_classes=3, **SMALL)
    with pytest.raises(InvalidSampleError, match=re.escape(f"label 3 of {path} is outside 0..2")):
        dm.setup()  # known up front: caught at setup, not steps into training


def test_out_of_range_mask_value_and_mask_size_name_the_mask(tmp_path):
    write_seg_folder(tmp_path, {"train": 2}, num_classes=3)
    mask = tmp_path / "masks" / "train" / "1.png"
    save_mask(mask, (1, 1, 5, 5), 9, 40)
    dm = SegmentationFolderDataModule(str(tmp_path), classes=["bg", "a", "b"], val_fraction=0.5, **SMALL)
    dm.setup()
    dataset = dm.train_dataset if dm.train_dataset.indices == [1] else dm.val_dataset
    with pytest.raises(InvalidSampleError, match=re.escape(f"{mask} holds class values [9]")):
        dataset[0]
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    with pytest.raises(
        InvalidSampleError,
        match=re.escape(
            f"{mask} is 12x10 (WxH) but its image {mask.parents[2] / 'images/train/1.png'} is 48x40"
        ),
    ):
        dataset[0]


def test_image_without_mask_is_named(tmp_path):
    write_seg_folder(tmp_path, {"train": 2}, num_classes=2)
    (tmp_path / "masks" / "train" / "0.png").unlink()
    with pytest.raises(InvalidSampleError, match=r"have no mask .* e.g. .*images/train/0.png"):
        SegmentationFolderDataModule(str(tmp_path), classes=["bg", "fg"], **SMALL).setup()


def test_pipeline_from_dict_and_yaml_file(tmp_path):
    pipeline = A.Compose([A.Resize(height=12, width=10), A.HorizontalFlip(p=1.0)])
    A.save(pipeline, tmp_path / "aug.yaml", data_format="yaml")
    for spec in (A.to_dict(pipeline), str(tmp_path / "aug.yaml")):
        dm = DigitsDataModule(train_transforms=spec, num_workers=0, batch_size=2)
        dm.setup()
        sample = dm.train_dataset[0]
        assert sample["image"].shape == (3, 12, 10)
        raw = dm.train_dataset.source[dm.train_dataset.indices[0]][0]
        expected = A.Resize(height=12, width=10)(image=raw)["image"][:, ::-1] / 255.0
        unnorm = sample["image"].permute(1, 2, 0).numpy() * np.asarray(dm.std) + np.asarray(dm.mean)
        assert np.allclose(unnorm, expected, atol=1e-4)  # flipped, then normalised with dm.mean/std


def test_pipeline_with_normalize_is_refused(tmp_path):
    spec = A.to_dict(A.Compose([A.Resize(height=8, width=8), A.Normalize()]))
    with pytest.raises(ValueError, match="contains Normalize; remove it"):
        DigitsDataModule(eval_transforms=spec)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml does not exist"):
        DigitsDataModule(train_transforms=str(tmp_path / "missing.yaml"))


def test_loader_defaults():
    dm = DigitsDataModule()
    assert dm.num_workers >= 1 and dm.pin_memory == torch.cuda.is_available()
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == dm.num_workers and loader.drop_last

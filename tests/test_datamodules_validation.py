"""The setup scan and label checks: bad labels, files and masks are caught at setup, with a summary."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datamodules_fakes import save_mask, save_rect_image, write_image_folder, write_seg_folder
from PIL import Image

from datamodules import (
    CSVDataModule,
    CustomDataModule,
    ImageFolderDataModule,
    InvalidSampleError,
    SegmentationFolderDataModule,
    SkippedImagesWarning,
    UnreadableImageError,
)

SMALL = {"batch_size": 2, "num_workers": 0, "image_size": 16}


def one_image(tmp_path) -> str:
    path = tmp_path / "x.png"
    save_rect_image(path, np.random.default_rng(0), 16)
    return str(path)


@pytest.mark.parametrize(("label", "complaint"), [(-1, "outside 0..2"), (3, "outside 0..2"),
                                                  (3.7, "is not a class index"),
                                                  ("cat", "is not a class index")])
def test_adapter_labels_are_checked_at_setup(tmp_path, label, complaint):
    path = one_image(tmp_path)
    dm = CustomDataModule([(path, 0), (path, label), (path, 2.0)], val=[(path, 1)], num_classes=3, **SMALL)
    with pytest.raises(InvalidSampleError, match=rf"1 of 3 train samples are bad:\n  label .*{complaint}"):
        dm.setup("fit")


def csv_module(tmp_path, labels: list[str], header: str = "path,label", **options) -> CSVDataModule:
    write_image_folder(tmp_path / "img", ["x"], per_class=len(labels))
    rows = [f"img/x/{i}.png,{label}" for i, label in enumerate(labels)]
    (tmp_path / "train.csv").write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8-sig")
    return CSVDataModule(str(tmp_path), val_fraction=0.5, **SMALL, **options)


def test_csv_with_a_byte_order_mark_is_read(tmp_path):
    dm = csv_module(tmp_path, ["cat", "dog", "cat", "dog"])  # written as spreadsheets' "CSV UTF-8"
    assert (tmp_path / "train.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert dm.class_names == ["cat", "dog"]


def test_csv_labels_from_one_warn_about_the_empty_class(tmp_path):
    with pytest.warns(UserWarning, match=re.escape("classes ['0'] have no sample (labels counted from 1?)")):
        dm = csv_module(tmp_path, [str(i) for i in range(1, 11)] * 2)
    assert dm.num_classes == 11


def test_csv_float_labels_map_numerically(tmp_path):
    labels = [f"{i}.0" for i in range(12)] * 2
    dm = csv_module(tmp_path, labels)
    assert dm.class_names == [str(i) for i in range(12)]
    source = dm._source("train")
    assert [source[i][1] for i in range(12)] == list(range(12))  # 10.0 is class 10, not 2


def test_csv_fractional_label_is_refused(tmp_path):
    with pytest.raises(InvalidSampleError, match=re.escape("labels ['3.7'] are not class indices")):
        csv_module(tmp_path, ["1", "3.7", "2", "0"])


def test_wrong_mask_size_is_found_at_setup_from_the_headers(tmp_path):
    write_seg_folder(tmp_path, {"train": 4}, num_classes=3)
    mask = tmp_path / "masks" / "train" / "2.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
    dm = SegmentationFolderDataModule(str(tmp_path), classes=["bg", "a", "b"], val_fraction=0.25, **SMALL)
    with pytest.raises(InvalidSampleError) as err:
        dm.setup()
    message = str(err.value)
    assert f"{mask} is 12x10 (WxH) but its image {tmp_path / 'images/train/2.png'} is 48x40" in message
    assert 'on_bad_image="skip"' in message
    dm = SegmentationFolderDataModule(str(tmp_path), classes=["bg", "a", "b"], validate="off", **SMALL)
    dm.setup()  # the scan can be turned off


def test_skip_scan_reads_masks_with_the_mask_reader(tmp_path):
    write_seg_folder(tmp_path, {"train": 5}, num_classes=3)
    colour = tmp_path / "masks" / "train" / "1.png"  # a readable image, but not a class-index mask
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(colour)
    broken = tmp_path / "masks" / "train" / "3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    save_mask(tmp_path / "masks" / "train" / "4.png", (1, 1, 5, 5), 9, 40)  # class 9 of 3
    dm = SegmentationFolderDataModule(
        str(tmp_path), classes=["bg", "a", "b"], on_bad_image="skip", val_fraction=0.6, **SMALL
    )
    with pytest.warns(SkippedImagesWarning) as record:
        dm.setup()
    reported = " ".join(str(w.message) for w in record)
    assert "single-channel index image" in reported and "cannot read mask" in reported
    assert "holds class values [9]" in reported
    kept = [dataset.source[i][0] for dataset in (dm.train_dataset, dm.val_dataset) for i in dataset.indices]
    assert sorted(kept) == [str(tmp_path / "images" / "train" / f"{i}.png") for i in (0, 2)]
    assert len(dm.skipped_images) == 3
    # setup() also built the test split, which reuses validation (3 of 5 records, so at least one bad
    # one): its bad records are not reported twice
    counts = [int(re.search(r"(\d+) of \d+ \w+ samples are bad", str(w.message)).group(1)) for w in record]
    assert sum(counts) == 3 and len(dm.test_dataset) == len(dm.val_dataset)


def test_full_scan_finds_truncated_images(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=3)
    truncated = tmp_path / "a" / "1.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    ImageFolderDataModule(str(tmp_path), **SMALL).setup()  # the fast scan reads headers only
    with pytest.raises(UnreadableImageError, match=re.escape(f"cannot read image {truncated}")):
        ImageFolderDataModule(str(tmp_path), validate="full", **SMALL).setup()

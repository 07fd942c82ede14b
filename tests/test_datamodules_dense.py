"""Segmentation and detection datamodules: formats, batch contract, masks/boxes aligned after augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datamodules_fakes import BRIGHT, DARK, write_ade, write_coco, write_seg_folder, write_voc
from download_fakes import closed_port

from datamodules import (
    ADE20KDataModule,
    COCODetectionDataModule,
    SegmentationFolderDataModule,
    VOCDetectionDataModule,
    VOCSegmentationDataModule,
)
from datamodules.base import Resource
from datamodules.class_names import VOC_CLASSES
from datamodules.plotting import denormalize

# Colour jitter is off: it could dim the rectangle below the threshold; geometry is what is checked here.
SMALL = {"batch_size": 3, "num_workers": 0, "image_size": 32, "color_jitter": 0.0}
THRESHOLD = (DARK + BRIGHT) / 2 / 255


def brightness(image: torch.Tensor, dm) -> np.ndarray:
    return denormalize(image, dm.mean, dm.std).mean(dim=2).numpy()


def check_segmentation(dm, num_classes: int) -> None:
    """Shapes/dtypes per split, and labelled pixels agree with the bright rectangle after augmentation."""
    dm.setup()  # the training crops come from dm.seed: the check is deterministic
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            images, masks = batch["image"], batch["mask"]
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
            assert masks.dtype == torch.int64 and masks.shape == (images.shape[0], 32, 32)
            labelled = masks[masks != dm.ignore_index]
            assert labelled.min() >= 0 and labelled.max() < num_classes
            for image, mask in zip(images, masks):
                bright = brightness(image, dm) > THRESHOLD
                objects = (mask != 0) & (mask != dm.ignore_index)
                background = mask == 0 if not dm.reduce_zero_label else mask == dm.ignore_index
                # allow a one-pixel seam of interpolated edge pixels
                agree = (bright == objects)[objects | background].float().mean()
                assert agree > 0.93


def test_segmentation_folder_index_masks(tmp_path):
    write_seg_folder(tmp_path, {"train": 6, "val": 2}, num_classes=4)
    dm = SegmentationFolderDataModule(str(tmp_path), **SMALL)
    assert dm.num_classes == 4  # found by scanning the training masks in __init__
    check_segmentation(dm, 4)
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 2


def test_segmentation_folder_palette_masks(tmp_path):
    write_seg_folder(tmp_path, {"train": 4}, num_classes=3)
    palette = [(0, 0, 0), (200, 0, 0), (0, 200, 0)]
    for path in (tmp_path / "masks" / "train").iterdir():  # recolour the index masks with the palette
        from PIL import Image

        index = np.asarray(Image.open(path))
        Image.fromarray(np.asarray(palette, np.uint8)[index]).save(path)
    dm = SegmentationFolderDataModule(str(tmp_path), palette=palette, val_fraction=0.25, **SMALL)
    assert dm.num_classes == 3
    check_segmentation(dm, 3)
    mask = dm.val_dataset[0]["mask"]
    assert set(mask.unique().tolist()) <= {0, 1, 2} and mask.max() > 0


def test_ade20k_reduces_zero_label(tmp_path, monkeypatch):
    write_ade(tmp_path)
    monkeypatch.setattr(ADE20KDataModule, "resources", (Resource(f"http://127.0.0.1:{closed_port()}/a.zip"),))
    for root in (tmp_path, tmp_path / "ADEChallengeData2016"):  # in place: nothing to download
        ADE20KDataModule(str(root), download=True).prepare_data()
    dm = ADE20KDataModule(str(tmp_path), **SMALL)
    assert dm.num_classes == 150 and len(dm.class_names) == 150
    check_segmentation(dm, 150)
    values = set(dm.val_dataset[0]["mask"].unique().tolist())
    assert values == {255, 149}  # "other" (0) -> 255, class 150 -> 149


def test_voc_segmentation(tmp_path):
    write_voc(tmp_path, {"train": ["a1", "a2", "a3", "a4"], "val": ["b1", "b2"]})
    dm = VOCSegmentationDataModule(str(tmp_path), **SMALL)
    assert dm.num_classes == 21 and dm.class_names[0] == "background"
    check_segmentation(dm, 21)
    assert 255 in dm.val_dataset[0]["mask"]  # object borders stay ignored


def check_detection(dm, num_classes: int, masks: bool) -> None:
    """List batches per split; each box bounds its instance mask and its bright pixels after augmentation."""
    dm.setup()  # the training crops come from dm.seed: the check is deterministic
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert isinstance(batch["image"], list) and isinstance(batch["target"], list)
            for image, target in zip(batch["image"], batch["target"]):
                assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
                assert max(image.shape[1:]) == 32  # longest side resized to image_size
                boxes, labels = target["boxes"], target["labels"]
                assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4)
                assert labels.dtype == torch.int64 and ((labels >= 1) & (labels <= num_classes)).all()
                assert len(labels) == 1
                ys, xs = np.nonzero(brightness(image, dm) > THRESHOLD)
                found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                assert torch.allclose(boxes[0], found, atol=1.5), (boxes[0], found)
                if masks:
                    assert target["masks"].dtype == torch.uint8
                    assert target["masks"].shape == (1, *image.shape[1:])
                    ys, xs = np.nonzero(target["masks"][0].numpy())
                    bound = torch.tensor(
                        [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32
                    )
                    assert torch.allclose(boxes[0], bound, atol=1.5), (boxes[0], bound)
                else:
                    assert "masks" not in target


@pytest.mark.parametrize("masks", [False, True])
def test_coco_detection(tmp_path, masks):
    categories = {3: "car", 7: "train", 90: "toothbrush"}  # gaps in ids, as in COCO
    write_coco(tmp_path, "train", 6, categories)
    write_coco(tmp_path, "val", 3, categories)
    dm = COCODetectionDataModule(str(tmp_path), masks=masks, **SMALL)
    assert dm.num_classes == 3 and dm.class_names == ["car", "train", "toothbrush"]
    check_detection(dm, 3, masks)
    assert [int(dm.val_dataset[i]["target"]["labels"][0]) for i in range(3)] == [1, 2, 3]


def test_voc_detection(tmp_path):
    truth = write_voc(tmp_path, {"train": ["a1", "a2", "a3", "a4"], "val": ["b1", "b2"]})
    dm = VOCDetectionDataModule(str(tmp_path), **SMALL)
    assert dm.num_classes == 20 and dm.class_names == VOC_CLASSES[1:]
    check_detection(dm, 20, masks=False)
    raw = dm.val_dataset.source[0][1]
    name, (x0, y0, x1, y1) = truth["b1"]
    assert raw["boxes"].tolist() == [[x0, y0, x1, y1]] and dm.class_names[raw["labels"][0] - 1] == name


def test_detection_plot_draws_boxes(tmp_path):
    write_coco(tmp_path, "train", 4, {1: "thing"})
    dm = COCODetectionDataModule(str(tmp_path), val_annotations=None, masks=True, val_fraction=0.25, **SMALL)
    figure = dm.plot(max_images=2)
    assert len(figure.axes) == 2 and len(figure.axes[0].patches) == 1
    assert figure.axes[0].texts[0].get_text() == "thing"

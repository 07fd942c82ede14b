"""The shared image reader: modes, bit depths, EXIF orientation, corrupt files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from datamodules.io import UnreadableImageError, image_size, read_image, read_mask

RGB = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    source = Image.fromarray(RGB).convert(mode)
    path = tmp_path / "x.png"
    source.save(path)
    image = read_image(path)
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    expected = np.asarray(source.convert("RGB"))
    assert np.array_equal(image, expected)


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.dstack([RGB, np.where(np.arange(6) < 3, 0, 255).astype(np.uint8)[None].repeat(4, 0)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert (image[:, :3] == 0).all() and np.array_equal(image[:, 3:], RGB[:, 3:])


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    deep = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    image = read_image(tmp_path / "d.png")
    assert image.shape == (4, 6, 3)
    assert np.array_equal(image[..., 0], np.round(deep / 257.0).astype(np.uint8))
    assert np.array_equal(read_image(deep), image)


def test_exif_rotation_is_applied(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :5] = 255  # bright left band, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "r.jpg")
    assert image.shape == (20, 10, 3)  # displayed portrait
    assert image_size(tmp_path / "r.jpg") == (20, 10)  # the header-only size agrees
    assert image[:5].mean() > 200 and image[-5:].mean() < 50  # left band is now on top


@pytest.mark.parametrize("content", [b"", b"not an image", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_corrupt_file_names_its_path(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match=re.escape(f"cannot read image {path}")):
        read_image(path)
    with pytest.raises(UnreadableImageError, match=re.escape(f"cannot read image {tmp_path / 'gone.png'}")):
        read_image(tmp_path / "gone.png")


def test_palette_mask_keeps_indices(tmp_path):
    index = np.array([[0, 1], [15, 255]], np.uint8)
    mask = Image.fromarray(index, "L").convert("P")
    mask.putpalette([c for i in range(256) for c in (255 - i, i, 0)])
    mask.save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.int64 and np.array_equal(out, index)

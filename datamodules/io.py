"""Image and mask readers shared by every datamodule, and the errors they raise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dat_lightning.download import DownloadError

__all__ = [
    "DatasetNotFoundError",
    "DownloadError",
    "ImageLike",
    "InvalidSampleError",
    "UnreadableImageError",
    "image_size",
    "read_image",
    "read_mask",
]

#: What a dataset may yield as an image: a file path, a PIL image or an ``HxW``/``HxWxC`` array.
ImageLike = str | Path | Image.Image | np.ndarray


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not on disk where the datamodule was told to look."""


class UnreadableImageError(OSError):
    """An image or mask file is missing, truncated or not an image."""


class InvalidSampleError(ValueError):
    """A sample is readable but wrong: label out of range, mask of the wrong size, empty class."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit integer ([0, 65535]), float ([0, 1]) and bool pixels to ``uint8``."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):  # 16-bit data, also when PIL holds it as 32-bit "I"
        return (np.clip(array, 0, 65535).astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    raise TypeError(f"cannot convert an image of dtype {array.dtype} to 8-bit")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode (L, LA, P, RGBA, I;16, I, F, CMYK) to an ``HxWx3`` ``uint8`` array."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Composite over black, so transparent pixels do not keep arbitrary hidden colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Convert an ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` array to ``HxWx3`` ``uint8``."""
    array = _to_uint8(np.asarray(array))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW or HxWxC (C in 1, 3, 4) image array, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_image(image: ImageLike) -> np.ndarray:
    """Read an image as an ``HxWx3`` ``uint8`` RGB array.

    Grayscale, palette, RGBA and 16-bit images are converted to 8-bit RGB and EXIF orientation is
    applied, so every reader hands the augmentation the same kind of array.

    Raises:
        UnreadableImageError: the file is missing, truncated or not an image; the message names it.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    try:
        with Image.open(image) as handle:
            return _pil_to_rgb(handle)
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {image}: {err}") from err


def image_size(image: ImageLike, decode: bool = False) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`read_image` returns it (EXIF orientation applied).

    For a file only the header is read unless ``decode``, which reads every pixel (and so finds
    truncated files).

    Raises:
        UnreadableImageError: the file is missing or not an image (or, with ``decode``, truncated).
    """
    if isinstance(image, np.ndarray):
        return image.shape[0], image.shape[1]
    if decode or isinstance(image, Image.Image):
        height, width = read_image(image).shape[:2]
        return height, width
    try:
        with Image.open(image) as handle:
            width, height = handle.size
            # EXIF from the header only: a PNG without an early eXIf chunk would decode for getexif()
            has_exif = handle.format in ("JPEG", "MPO", "TIFF") or "exif" in handle.info
            rotated = has_exif and handle.getexif().get(0x0112) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {image}: {err}") from err
    return (width, height) if rotated else (height, width)


def read_mask(mask: ImageLike) -> np.ndarray:
    """Read a segmentation mask as an ``HxW`` ``int64`` array of class indices.

    Index PNGs (mode ``L``/``P``/``I``) are read as their raw indices, so palette masks such as Pascal
    VOC's keep their class numbers rather than being converted to colours.

    Raises:
        UnreadableImageError: the file is missing, truncated or not an image.
        InvalidSampleError: the mask has colour channels instead of class indices.
    """
    try:
        if isinstance(mask, (str, Path)):
            with Image.open(mask) as handle:
                array = np.asarray(handle)
        else:
            array = np.asarray(mask)
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read mask {mask}: {err}") from err
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InvalidSampleError(
            f"mask {mask if isinstance(mask, (str, Path)) else ''} has shape {array.shape}; expected a "
            "single-channel index image (an 8-bit 'L' or palette 'P' PNG whose pixel values are class ids)"
        )
    return array.astype(np.int64)

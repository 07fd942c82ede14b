"""Registry of the official DAT / DAT++ ImageNet-1K weights and a cached, atomic downloader.

Names follow timm (``dat_tiny.in1k``); the bare preset name (``dat_tiny``) means its ``.in1k``
weights. Files go to ``torch.hub.get_dir()/checkpoints`` and are downloaded once.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm import tqdm  # not tqdm.auto: no ipywidgets warning in notebooks

__all__ = ["WEIGHTS", "PretrainedWeights", "WeightsDownloadError", "download_file", "get_weights",
           "list_weights", "resolve_weights", "weights_cache_dir"]

DOWNLOAD_TIMEOUT_S = 10.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PretrainedWeights:
    """One released checkpoint: where to get it and how its inputs were prepared."""

    name: str  # timm-style tag, e.g. "dat_tiny.in1k"
    file_name: str
    url: str  # direct download (TsinghuaCloud share link + "?dl=1")
    mirror: str  # other mirror (browser download), for information
    top1: float  # reported ImageNet-1K top-1 accuracy
    input_size: tuple[int, int, int]
    crop_pct: float
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD

    @property
    def architecture(self) -> str:
        """The timm model name the weights belong to (``dat_tiny``)."""
        return self.name.split(".")[0]

    @property
    def cache_path(self) -> Path:
        """Where the downloaded file is (or will be) stored."""
        return weights_cache_dir() / self.file_name


def _entry(arch: str, share: str, mirror: str, top1: float, size: int = 224) -> PretrainedWeights:
    return PretrainedWeights(
        name=f"{arch}.in1k", file_name=f"{arch.removesuffix('_384')}_in1k_{size}.pth",
        url=f"https://cloud.tsinghua.edu.cn/f/{share}/?dl=1", mirror=mirror, top1=top1,
        input_size=(3, size, size), crop_pct=1.0 if size == 384 else 0.875)


_GDRIVE = "https://drive.google.com/file/d/{}/view"
_ONEDRIVE = "https://1drv.ms/u/s!{}"

WEIGHTS: dict[str, PretrainedWeights] = {w.name: w for w in (
    _entry("dat_tiny", "1367349deefc48efa650", _GDRIVE.format("1I08oJlXNtDe8jJPxHkroxUi7lYX2lhVc"),
           82.0),
    _entry("dat_small", "f04b18081e3e4606adb7", _GDRIVE.format("1UUmQqQYY5OInVuXvUgO41Gice93vJ0A7"),
           83.7),
    _entry("dat_base", "a8d2a9645d454120b635", _GDRIVE.format("1Avu16r59koxizoSYhfaCdNdr-QxLVGjd"),
           84.0),
    _entry("dat_base_384", "cf6a6b543cd64e0d8e43",
           _GDRIVE.format("1m8E2U4iQ6EOe1e8SuAGPbPlPhISXnVWq"), 84.8, size=384),
    _entry("dat_pp_tiny", "14c5ddae10b642e68089",
           _ONEDRIVE.format("ApI0vb6wPqmtgrl-pI8MPFoll-ueNQ?e=bpdieu"), 83.9),
    _entry("dat_pp_small", "4c2a76360c964fbd81d5",
           _ONEDRIVE.format("ApI0vb6wPqmtgroB0ESeknbTsksWAg?e=Jbh0BS"), 84.6),
    _entry("dat_pp_base", "8e30492404d348d89f25",
           _ONEDRIVE.format("ApI0vb6wPqmtgrl_P46QOehhgA0-wg?e=DJRAfw"), 84.9),
    _entry("dat_pp_base_384", "032dc804cdf44bf18bb5",
           _ONEDRIVE.format("ApI0vb6wPqmtgroAI7cLAoj17khZNw?e=7yzxAg"), 85.9, size=384),
)}


class WeightsDownloadError(OSError):
    """A registered checkpoint could not be downloaded (no network, server error, bad file)."""


def list_weights() -> list[str]:
    """Registered weight names (``dat_tiny.in1k``, ...)."""
    return sorted(WEIGHTS)


def get_weights(name: str) -> PretrainedWeights:
    """Registry entry for ``name``: a tag (``dat_tiny.in1k``) or a bare preset (``dat_tiny``)."""
    entry = WEIGHTS.get(name) or WEIGHTS.get(f"{name}.in1k")
    if entry is None:
        raise KeyError(f"no registered weights named {name!r}; registered: {list_weights()} "
                       "(the bare preset name, e.g. 'dat_tiny', works too)")
    return entry


def weights_cache_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``, where downloaded weights are kept."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _is_registered(name: str) -> bool:
    return name in WEIGHTS or f"{name}.in1k" in WEIGHTS


def resolve_weights(source: str | os.PathLike, *, progress: bool = True) -> Path:
    """Local file for ``source``: an existing path, or a registered name (downloaded once).

    Raises:
        FileNotFoundError: ``source`` is neither an existing file nor a registered name.
        IsADirectoryError: ``source`` is a folder.
        WeightsDownloadError: a registered file is not cached and cannot be downloaded.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if isinstance(source, str) and _is_registered(source):
        entry = get_weights(source)
        return download_file(entry.url, entry.file_name, progress=progress, name=entry.name)
    if path.is_dir():
        raise IsADirectoryError(f"weights {str(source)!r} is a folder, not a checkpoint file; give "
                                "the path of the .pth/.ckpt/.safetensors file inside it")
    raise FileNotFoundError(f"weights {str(source)!r}: no such file, and not a registered weight "
                            f"name (registered: {list_weights()})")


def _looks_like_checkpoint(head: bytes) -> bool:
    """torch.save zip archive, legacy pickle stream, or a safetensors header."""
    return (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")
            or (len(head) > 8 and head[8:9] == b"{"))


def download_file(url: str, file_name: str, *, progress: bool = True, name: str | None = None,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``weights_cache_dir()/file_name`` unless it is already there.

    The file is written to a temporary file in the same directory and renamed into place, so an
    interrupted download never leaves a partial checkpoint. ``timeout`` (seconds) bounds the
    connection and each read.
    """
    target = weights_cache_dir() / file_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    what = f"weights {name!r}" if name else f"weights file {file_name!r}"
    help_msg = (f"Without network access, download {url} (file name {file_name}) on another "
                f"machine and copy it to {target}, or pass the local path of the file instead of "
                "the name.")
    fd, tmp = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            head = response.read(_CHUNK)
            if not _looks_like_checkpoint(head):
                kind = response.headers.get("Content-Type", "unknown content type")
                raise WeightsDownloadError(
                    f"downloading {what} from {url} returned {kind}, not a checkpoint (the link "
                    f"may have moved). {help_msg}")
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=file_name,
                      disable=not progress) as bar:
                while head:
                    written += out.write(head)
                    bar.update(len(head))
                    head = response.read(_CHUNK)
            if total is not None and written != total:
                raise WeightsDownloadError(
                    f"downloading {what} from {url} stopped after {written} of {total} bytes "
                    f"(connection closed); try again. {help_msg}")
        os.replace(tmp, target)
    except WeightsDownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsDownloadError(f"could not download {what} from {url}: {reason}. "
                                   f"{help_msg}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target

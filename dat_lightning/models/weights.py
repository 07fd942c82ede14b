"""Registry of the official DAT / DAT++ ImageNet-1K weights and a cached, verified downloader.

Names follow timm (``dat_tiny.in1k``); the bare preset name (``dat_tiny``) means its ``.in1k``
weights. Files go to ``torch.hub.get_dir()/checkpoints`` and are downloaded once. The authors
published no checksums, so the SHA-256 of the first download is recorded next to the file
(``<file>.sha256``) and every later load checks the cached file against it. Pin a hash with
``expected_sha256`` (or the name suffix ``dat_tiny.in1k@sha256:<64 hex digits>``, usable from a
recipe's ``weights:``) or the registry's ``sha256`` field to refuse any other file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..download import (
    DEFAULT_TIMEOUT_S,
    ChecksumError,
    DownloadError,
    download_url,
    file_kind,
    file_sha256,
    is_safetensors,
    is_torch_save,
)

__all__ = ["WEIGHTS", "PretrainedWeights", "WeightsDownloadError", "WeightsHashError",
           "download_file", "get_weights", "list_weights", "resolve_weights", "weights_cache_dir"]

_PIN = re.compile(r"@sha256:([0-9a-fA-F]{64})$")


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
    sha256: str | None = None  # expected SHA-256 of the file; none was published for these

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


class WeightsDownloadError(DownloadError):
    """A registered checkpoint could not be downloaded (no network, server error, bad file)."""


class WeightsHashError(WeightsDownloadError):
    """A weights file's SHA-256 differs from the pinned or the recorded one."""


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


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verify(path: Path, expected: str | None, fix: str) -> None:
    """Check ``path`` against ``expected`` and against the hash recorded at its download."""
    actual = file_sha256(path)
    recorded_at = _sidecar(path)
    recorded = recorded_at.read_text().split()[0] if recorded_at.is_file() else None
    for wanted, why in ((expected, "the pinned"), (recorded, f"the one recorded in {recorded_at} "
                                                            "when it was downloaded")):
        if wanted is not None and actual != wanted.lower():
            raise WeightsHashError(f"weights file {path} has SHA-256 {actual}, not {why} {wanted}: "
                                   f"the file was changed, damaged or substituted. {fix}")
    if recorded is None and recorded_at.parent == weights_cache_dir():
        recorded_at.write_text(f"{actual}  {path.name}\n")  # placed by hand: trust on first use


def resolve_weights(source: str | os.PathLike, *, progress: bool = True,
                    expected_sha256: str | None = None) -> Path:
    """Local file for ``source``: an existing path, or a registered name (downloaded once).

    A registered file is checked on every call against ``expected_sha256``, the registry's
    ``sha256`` and the hash recorded at its first download. A ``@sha256:<hex>`` suffix on
    ``source`` pins the hash like ``expected_sha256``.

    Raises:
        FileNotFoundError: ``source`` is neither an existing file nor a registered name.
        IsADirectoryError: ``source`` is a folder.
        WeightsDownloadError: a registered file is not cached and cannot be downloaded.
        WeightsHashError: the file's SHA-256 is not the pinned or the recorded one.
    """
    if isinstance(source, str) and (pin := _PIN.search(source)):
        source, expected_sha256 = source[:pin.start()], expected_sha256 or pin.group(1)
    path = Path(source).expanduser()
    if path.is_file():
        if expected_sha256:
            _verify(path, expected_sha256, "Check where the file came from.")
        return path
    if isinstance(source, str) and _is_registered(source):
        entry = get_weights(source)
        expected = expected_sha256 or entry.sha256
        target = weights_cache_dir() / entry.file_name
        if target.is_file():
            _verify(target, expected, f"Delete {target} (and {_sidecar(target).name}) to download "
                                      "it again.")
            return target
        return download_file(entry.url, entry.file_name, progress=progress, name=entry.name,
                             expected_sha256=expected)
    if path.is_dir():
        raise IsADirectoryError(f"weights {str(source)!r} is a folder, not a checkpoint file; give "
                                "the path of the .pth/.ckpt/.safetensors file inside it")
    raise FileNotFoundError(f"weights {str(source)!r}: no such file, and not a registered weight "
                            f"name (registered: {list_weights()})")


def _refuse_non_checkpoint(head: bytes, content_type: str) -> str | None:
    if is_torch_save(head) or is_safetensors(head):
        return None
    return f"{content_type} ({file_kind(head[:64])}), not a checkpoint (the link may have moved)"


def download_file(url: str, file_name: str, *, progress: bool = True, name: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S, expected_sha256: str | None = None) -> Path:
    """Download ``url`` to ``weights_cache_dir()/file_name`` unless it is already there.

    Uses :func:`dat_lightning.download.download_url`: ``timeout`` (seconds) bounds the connection
    and each read, the file appears only when complete (stale ``.part`` files of killed downloads
    are removed), and its SHA-256 is checked against ``expected_sha256`` and recorded in
    ``<file_name>.sha256``.
    """
    target = weights_cache_dir() / file_name
    if target.is_file():
        return target
    hint = (f"Without network access, download {url} (file name {file_name}) on another "
            f"machine and copy it to {target}, or pass the local path of the file instead of "
            "the name; weights: null trains from scratch.")
    what = f"weights {name!r}" if name else f"weights file {file_name!r}"
    try:
        digest = download_url(url, target, what=what, hint=hint, timeout=timeout,
                              progress=progress, sha256=expected_sha256,
                              check_head=_refuse_non_checkpoint)
    except ChecksumError as exc:
        raise WeightsHashError(str(exc)) from exc
    except DownloadError as exc:
        raise WeightsDownloadError(str(exc)) from exc
    _sidecar(target).write_text(f"{digest}  {file_name}\n")
    return target

"""The one downloader of the project (dataset archives and pretrained weights) and file sniffing.

:func:`download_url` bounds the connection and every read by ``timeout`` seconds, shows a tqdm
progress bar, writes to a ``.part`` file in the target folder and renames it into place only when
the file is complete (and matches its checksum), and removes the partial file on any failure, so a
stalled or dropped connection fails quickly with one actionable message and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm  # not tqdm.auto: no ipywidgets warning in notebooks

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ChecksumError",
    "DownloadError",
    "download_url",
    "file_kind",
    "file_sha256",
    "is_safetensors",
    "is_torch_save",
    "remove_stale_parts",
]

#: Seconds the connection and each read may stall before the download fails.
DEFAULT_TIMEOUT_S = 10.0
#: A ``.part`` file untouched for this long belongs to a killed download (live ones are written to).
STALE_PART_S = 300.0
_CHUNK = 1 << 20

_FILE_KINDS = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"%PDF": "a PDF",
               b"\x1f\x8b": "a gzip archive", b"<": "an HTML/XML page", b"{": "a JSON/text file"}


class DownloadError(OSError):
    """A download failed (no network, stalled or dropped connection, wrong content or checksum).

    Nothing it wrote is left behind; the message says how to place the file by hand.
    """


class ChecksumError(DownloadError):
    """A downloaded file's checksum is not the expected one."""


def file_kind(head: bytes) -> str:
    """What the first bytes of a file look like, for messages (``"an HTML/XML page"``)."""
    for magic, kind in _FILE_KINDS.items():
        if head.startswith(magic):
            return kind
    if head.isascii() and all(c >= 32 or c in b"\t\r\n" for c in head):
        return "a text file"
    return "an unknown format"


def is_safetensors(head: bytes) -> bool:
    """A safetensors file: an 8-byte header length, then the JSON header."""
    return len(head) > 8 and head[8:9] == b"{"


def is_torch_save(head: bytes) -> bool:
    """A ``torch.save`` zip archive or a legacy pickle stream."""
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_stale_parts(target: Path, older_than_s: float = STALE_PART_S) -> list[Path]:
    """Delete the ``.part`` files that killed downloads of ``target`` left; return them."""
    now = time.time()
    stale = [p for p in target.parent.glob(f".{target.name}.*.part")
             if p.is_file() and now - p.stat().st_mtime > older_than_s]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def download_url(url: str, target: str | os.PathLike, *, what: str | None = None,
                 hint: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, progress: bool = True, md5: str | None = None,
                 sha256: str | None = None,
                 check_head: Callable[[bytes, str], str | None] | None = None) -> str:
    """Download ``url`` to ``target`` atomically; return the file's SHA-256.

    Args:
        url: what to fetch.
        target: final path; its folder is created.
        what: how messages name the file (default: its file name).
        hint: what the user can do instead (appended to every error); by default (``None``), how
            to place the file by hand.
        timeout: seconds the connection and each read may stall.
        progress: show a tqdm progress bar.
        md5: expected MD5 (as the datasets publish), checked before the file is kept.
        sha256: expected SHA-256, checked before the file is kept.
        check_head: called with the first bytes and the content type; returns a reason to refuse
            the content (an HTML page instead of a checkpoint) or ``None``.

    Raises:
        DownloadError: naming the URL, the cause and ``hint``; no partial file is left.
    """
    target = Path(target)
    what = what or target.name
    if hint is None:
        hint = f"Without network access, download {url} on another machine and copy it to {target}."
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    digest_sha256, digest_md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            chunk = response.read(_CHUNK)
            refused = check_head(chunk, response.headers.get("Content-Type", "unknown content type")) \
                if check_head else None
            if refused:
                raise DownloadError(f"downloading {what} from {url} returned {refused}. {hint}")
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                      disable=not progress) as bar:
                while chunk:
                    written += out.write(chunk)
                    digest_sha256.update(chunk)
                    digest_md5.update(chunk)
                    bar.update(len(chunk))
                    chunk = response.read(_CHUNK)
        if total is not None and written != total:
            raise DownloadError(f"downloading {what} from {url} stopped after {written} of {total} "
                                f"bytes (connection closed); try again. {hint}")
        for name, digest, expected in (("MD5", digest_md5, md5), ("SHA-256", digest_sha256, sha256)):
            if expected is not None and digest.hexdigest() != expected.lower():
                raise ChecksumError(f"downloading {what} from {url} gave a file whose {name} "
                                    f"{digest.hexdigest()} is not the expected {expected} (a changed "
                                    f"or damaged file); try again. {hint}")
        os.replace(tmp, target)
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        stalled = " (the connection stalled)" if isinstance(reason, TimeoutError) else ""
        raise DownloadError(f"could not download {what} from {url}: {reason}{stalled}; is there no "
                            f"network? {hint}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return digest_sha256.hexdigest()

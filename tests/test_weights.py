"""Weights registry (checked against WEIGHTS.md) and the cached, atomic, fail-fast downloader."""

from __future__ import annotations

import dataclasses
import http.server
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import timm
import torch

from dat_lightning.models import WEIGHTS, WeightsDownloadError, get_weights, list_weights
from dat_lightning.models.weights import resolve_weights


def _weights_md_rows(official_dir: Path) -> dict[str, list[str]]:
    rows = {}
    for line in (official_dir / "WEIGHTS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and (m := re.match(r"(dat\w*) \(`manifests/", cells[0])):
            rows[m.group(1)] = cells
    return rows


def test_registry_matches_weights_md(official_dir: Path) -> None:
    rows = _weights_md_rows(official_dir)
    assert sorted(f"{p}.in1k" for p in rows) == list_weights()
    assert sorted(rows) == sorted(timm.list_models("dat*"))
    for preset, (_, _, res, top1, file_name, share, mirror) in rows.items():
        entry = get_weights(preset)
        assert entry is get_weights(f"{preset}.in1k") and entry.architecture == preset
        assert entry.file_name == file_name
        assert entry.url == f"{share}?dl=1" and entry.mirror == mirror
        assert entry.top1 == float(top1)
        assert entry.input_size == (3, int(res), int(res))
        assert entry.crop_pct == (0.875 if res == "224" else 1.0)
        assert entry.mean == (0.485, 0.456, 0.406) and entry.std == (0.229, 0.224, 0.225)
        assert entry.interpolation == "bicubic"
        cfg = timm.models.get_pretrained_cfg(f"{preset}.in1k").to_dict()
        assert (cfg["url"], cfg["input_size"], cfg["crop_pct"]) == (entry.url, entry.input_size,
                                                                    entry.crop_pct)
        assert (cfg["mean"], cfg["std"]) == (entry.mean, entry.std)
    with pytest.raises(KeyError, match="no registered weights named 'dat_huge'"):
        get_weights("dat_huge")


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch) -> Path:
    """An empty torch hub directory for the test."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


def _point_to(monkeypatch, name: str, url: str) -> None:
    monkeypatch.setitem(WEIGHTS, name, dataclasses.replace(WEIGHTS[name], url=url))


def test_offline_fails_fast_with_instructions(hub_dir: Path, monkeypatch) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/f/dat_tiny/?dl=1"
    _point_to(monkeypatch, "dat_tiny.in1k", url)
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        resolve_weights("dat_tiny")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and "dat_tiny_in1k_224.pth" in message
    assert str(hub_dir / "dat_tiny_in1k_224.pth") in message
    assert "pass the local path" in message
    assert list(hub_dir.iterdir()) == []  # no partial file


def test_local_path_and_cache_need_no_network(hub_dir: Path, monkeypatch, tmp_path: Path) -> None:
    local = tmp_path / "mine.pth"
    torch.save({"w": torch.zeros(1)}, local)
    assert resolve_weights(str(local)) == local
    _point_to(monkeypatch, "dat_pp_tiny.in1k", f"http://127.0.0.1:{_closed_port()}/x")
    hub_dir.mkdir(parents=True)
    cached = hub_dir / "dat_pp_tiny_in1k_224.pth"
    cached.write_bytes(local.read_bytes())
    assert resolve_weights("dat_pp_tiny.in1k") == cached
    with pytest.raises(FileNotFoundError, match="not a registered weight name"):
        resolve_weights("dat_tiny.in22k")


class _Handler(http.server.BaseHTTPRequestHandler):
    payload: bytes = b""
    content_type = "application/octet-stream"
    cut = False  # announce the full length, send half, close

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2] if self.cut else self.payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    """A local HTTP server; yields a function that sets what it serves and returns its URL."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def serve(payload: bytes, content_type: str = "application/octet-stream", cut: bool = False):
        _Handler.payload, _Handler.content_type, _Handler.cut = payload, content_type, cut
        return f"http://127.0.0.1:{httpd.server_address[1]}/f/file/?dl=1"

    yield serve
    httpd.shutdown()
    thread.join()


def test_download_once_atomically(hub_dir: Path, monkeypatch, tmp_path: Path, server) -> None:
    ckpt = tmp_path / "src.pth"
    torch.save({"model": {"w": torch.arange(1000.0)}}, ckpt)
    # an HTML page instead of the file (a moved link) is refused
    _point_to(monkeypatch, "dat_small.in1k", server(b"<html>moved</html>", "text/html"))
    with pytest.raises(WeightsDownloadError, match="returned text/html, not a checkpoint"):
        resolve_weights("dat_small")
    # a connection that drops mid-file leaves nothing behind
    _point_to(monkeypatch, "dat_small.in1k", server(ckpt.read_bytes(), cut=True))
    with pytest.raises(WeightsDownloadError, match=r"stopped after \d+ of \d+ bytes"):
        resolve_weights("dat_small")
    assert list(hub_dir.iterdir()) == []
    _point_to(monkeypatch, "dat_small.in1k", server(ckpt.read_bytes()))
    path = resolve_weights("dat_small", progress=False)
    assert path == hub_dir / "dat_small_in1k_224.pth" and path.read_bytes() == ckpt.read_bytes()
    assert list(hub_dir.iterdir()) == [path]
    _point_to(monkeypatch, "dat_small.in1k", f"http://127.0.0.1:{_closed_port()}/x")
    assert resolve_weights("dat_small") == path  # cached: no second download

"""Weights registry (checked against WEIGHTS.md) and the cached, atomic, fail-fast, verified downloader."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import pytest
import timm
import torch
from download_fakes import closed_port, fake_server

from dat_lightning.download import file_sha256
from dat_lightning.models import TEST_CONFIGS, WEIGHTS, WeightsDownloadError, get_weights, list_weights
from dat_lightning.models.weights import WeightsHashError, download_file, resolve_weights


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
    official = [name for name in timm.list_models("dat*") if name not in TEST_CONFIGS]
    assert sorted(rows) == sorted(official)
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


def _point_to(monkeypatch, name: str, url: str, **fields) -> None:
    monkeypatch.setitem(WEIGHTS, name, dataclasses.replace(WEIGHTS[name], url=url, **fields))


def test_offline_fails_fast_with_instructions(hub_dir: Path, monkeypatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}/f/dat_tiny/?dl=1"
    _point_to(monkeypatch, "dat_tiny.in1k", url)
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        resolve_weights("dat_tiny")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and "dat_tiny_in1k_224.pth" in message
    assert str(hub_dir / "dat_tiny_in1k_224.pth") in message
    assert "pass the local path" in message and "weights: null" in message
    assert list(hub_dir.iterdir()) == []  # no partial file


def test_local_path_and_cache_need_no_network(hub_dir: Path, monkeypatch, tmp_path: Path) -> None:
    local = tmp_path / "mine.pth"
    torch.save({"w": torch.zeros(1)}, local)
    assert resolve_weights(str(local)) == local
    _point_to(monkeypatch, "dat_pp_tiny.in1k", f"http://127.0.0.1:{closed_port()}/x")
    hub_dir.mkdir(parents=True)
    cached = hub_dir / "dat_pp_tiny_in1k_224.pth"
    cached.write_bytes(local.read_bytes())
    assert resolve_weights("dat_pp_tiny.in1k") == cached
    # a file placed by hand is trusted on first use: its hash is recorded and checked from then on
    assert (hub_dir / "dat_pp_tiny_in1k_224.pth.sha256").read_text().split()[0] == file_sha256(cached)
    with pytest.raises(FileNotFoundError, match="not a registered weight name"):
        resolve_weights("dat_tiny.in22k")


def test_download_once_atomically(hub_dir: Path, monkeypatch, tmp_path: Path) -> None:
    ckpt = tmp_path / "src.pth"
    torch.save({"model": {"w": torch.arange(1000.0)}}, ckpt)
    # an HTML page instead of the file (a moved link) is refused
    with fake_server(b"<html>moved</html>", content_type="text/html") as url:
        _point_to(monkeypatch, "dat_small.in1k", url)
        with pytest.raises(WeightsDownloadError, match=r"returned text/html \(an HTML/XML page\), not a"):
            resolve_weights("dat_small")
    # a connection that drops mid-file leaves nothing behind
    with fake_server(ckpt.read_bytes(), mode="cut") as url:
        _point_to(monkeypatch, "dat_small.in1k", url)
        with pytest.raises(WeightsDownloadError, match=r"stopped after \d+ of \d+ bytes"):
            resolve_weights("dat_small")
    assert list(hub_dir.iterdir()) == []
    with fake_server(ckpt.read_bytes()) as url:
        _point_to(monkeypatch, "dat_small.in1k", url)
        path = resolve_weights("dat_small", progress=False)
    assert path == hub_dir / "dat_small_in1k_224.pth" and path.read_bytes() == ckpt.read_bytes()
    sidecar = hub_dir / "dat_small_in1k_224.pth.sha256"
    assert sorted(hub_dir.iterdir()) == [path, sidecar]
    assert sidecar.read_text().split()[0] == file_sha256(ckpt)  # recorded at the first download
    _point_to(monkeypatch, "dat_small.in1k", f"http://127.0.0.1:{closed_port()}/x")
    assert resolve_weights("dat_small") == path  # cached: no second download


@pytest.mark.parametrize("mode", ["silent", "stall"])
def test_stalled_connection_fails_within_the_timeout(hub_dir: Path, mode: str) -> None:
    """A server that accepts and never answers, or sends half the file and stalls."""
    with fake_server(b"\x80" + bytes(4000), mode=mode) as url:
        start = time.monotonic()
        with pytest.raises(WeightsDownloadError, match=r"timed out.*\(the connection stalled\)"):
            download_file(url, "w.pth", timeout=1.0, progress=False)
        assert time.monotonic() - start < 30
    assert list(hub_dir.iterdir()) == []


def test_stale_partial_files_are_removed(hub_dir: Path, tmp_path: Path) -> None:
    hub_dir.mkdir(parents=True)
    stale, live = hub_dir / ".w.pth.abc123.part", hub_dir / ".w.pth.def456.part"
    stale.write_bytes(b"killed download"), live.write_bytes(b"running download")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    payload = b"\x80" + bytes(100)
    with fake_server(payload) as url:
        path = download_file(url, "w.pth", progress=False)
    assert path.read_bytes() == payload
    assert not stale.exists() and live.exists()  # another process may still be writing that one


def test_cached_file_is_verified_and_a_pin_is_enforced(hub_dir: Path, monkeypatch, tmp_path) -> None:
    payload = b"\x80" + os.urandom(2000)
    good = __import__("hashlib").sha256(payload).hexdigest()
    with fake_server(payload) as url:
        _point_to(monkeypatch, "dat_base.in1k", url, sha256="0" * 64)
        with pytest.raises(WeightsHashError, match=f"not the expected {'0' * 64}"):
            resolve_weights("dat_base", progress=False)
        assert list(hub_dir.iterdir()) == []  # a wrong file never lands in the cache
        _point_to(monkeypatch, "dat_base.in1k", url, sha256=None)
        path = resolve_weights(f"dat_base.in1k@sha256:{good}", progress=False)
    assert resolve_weights("dat_base", expected_sha256=good) == path
    with pytest.raises(WeightsHashError, match="not the pinned"):
        resolve_weights("dat_base", expected_sha256="f" * 64)
    path.write_bytes(payload[:-1] + b"!")  # the cached file changes after its download
    with pytest.raises(WeightsHashError, match=r"(?s)not the one recorded in .*\.sha256.*Delete"):
        resolve_weights("dat_base")
    local = tmp_path / "local.pth"
    local.write_bytes(payload)
    assert resolve_weights(f"{local}@sha256:{good}") == local
    with pytest.raises(WeightsHashError, match="not the pinned"):
        resolve_weights(str(local), expected_sha256="a" * 64)

"""The `lightning` command reaches this toolkit: no Lightning release allowed by setup.cfg ships a
`lightning` console script of its own (lightning 2.5.0 does; 2.5.1 onwards ship only `fabric`,
checked in the wheels' entry_points.txt)."""

from __future__ import annotations

import configparser
import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

import dat_lightning.cli

REPO = Path(__file__).resolve().parents[1]
LAST_WITH_OWN_SCRIPT = Version("2.5.0")  # lightning.fabric.cli:_legacy_main


def _requirement(name: str) -> Requirement:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].strip().splitlines()
    return next(r for line in lines if (r := Requirement(line.strip())).name == name)


def test_requirement_excludes_lightning_with_its_own_script() -> None:
    spec = _requirement("lightning").specifier
    assert not spec.contains(LAST_WITH_OWN_SCRIPT) and not spec.contains("2.4.0")
    assert spec.contains("2.5.1") and spec.contains(importlib.metadata.version("lightning"))


def test_installed_lightning_entry_point_is_ours() -> None:
    scripts = [ep for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.name == "lightning"]
    assert [ep.value for ep in scripts] == ["dat_lightning.cli:main"], (
        f"`lightning` console scripts installed: {[(ep.value, ep.dist.name) for ep in scripts]}; "
        "reinstall dat-lightning (pip install -e .) after Lightning")
    assert scripts[0].load() is dat_lightning.cli.main

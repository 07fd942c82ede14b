"""Recipes keep working when run from a project that has its own ``datamodules`` package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_digits_recipe_runs_from_a_project_with_its_own_datamodules(tmp_path):
    local = tmp_path / "datamodules"
    local.mkdir()
    (local / "__init__.py").write_text("raise ImportError('the user project datamodules was imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable, "-m", "dat_lightning", "fit", "--config", str(REPO / "recipes" / "digits_dat.yaml"),
        "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is also named 'datamodules'" in result.stderr  # the user is told why theirs is not used
    assert "rename it" in result.stderr

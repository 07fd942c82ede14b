"""The documentation runs as written: every Python block of the README, and every command in the
header comments of the recipes that run offline (``digits_dat``: embedded data, no weights;
``imagefolder_dat_scratch``: no weights, on a generated image folder). The other recipes need a
dataset download or the official weights, which the fast-dev-run test of ``test_cli.py`` stands in
for."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import timm
import torch
from datamodules_fakes import write_image_folder

import dat_lightning.models.presets  # noqa: F401  (registers the DAT presets with timm)
from dat_lightning.cli import cli

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)

#: The one placeholder of the README's Python blocks: the official checkpoint a user has
#: downloaded. The test writes a random-init DAT++-T in the official format under that name.
OFFICIAL_FILE = "dat_pp_tiny_in1k_224.pth"
#: Shortened runs: the README's 5-epoch example trains 2 batches of one epoch here.
REPLACEMENTS = {'max_epochs=5, accelerator="cpu"':
                'max_epochs=1, accelerator="cpu", limit_train_batches=2, limit_val_batches=1, '
                'logger=False, enable_checkpointing=False, enable_progress_bar=False'}
#: Appended to each recipe command: one short epoch on the CPU (later arguments win).
QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
         "--trainer.limit_predict_batches", "1", "--trainer.accelerator", "cpu",
         "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
         "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4"]
#: Recipes whose header commands run offline, and the data each needs in the working directory.
OFFLINE = {
    "digits_dat": lambda root: None,
    "imagefolder_dat_scratch": lambda root: [
        write_image_folder(root / "data" / "my_images" / split, ["circle", "square"], per_class=4,
                           seed=seed) for seed, split in enumerate(("train", "val"))],
}


def test_replacements_match_the_readme():
    assert BLOCKS, "no ```python blocks in README.md"
    for text in (OFFICIAL_FILE, *REPLACEMENTS):
        assert any(text in block for block in BLOCKS), f"README no longer contains {text!r}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = BLOCKS[index]
    if OFFICIAL_FILE in code:
        torch.save({"model": timm.create_model("dat_pp_tiny", num_classes=1000).state_dict()},
                   OFFICIAL_FILE)
    for old, new in REPLACEMENTS.items():
        code = code.replace(old, new)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def header_commands(recipe: Path) -> list[list[str]]:
    """The ``lightning ...`` commands of a recipe's header comment (continuation lines joined,
    trailing comments dropped), as argument lists."""
    header = []
    for line in recipe.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = "\n".join(header).replace("\\\n", " ")
    commands = [line.split(" # ")[0] for line in text.splitlines() if line.startswith("lightning ")]
    return [shlex.split(command) for command in commands]


@pytest.mark.parametrize("recipe", sorted(OFFLINE))
def test_recipe_header_commands_run(recipe, tmp_path, monkeypatch):
    """Each command of the header, in order, in one working directory (so that ``--ckpt_path
    last`` and ``best`` find the earlier runs): fit, resume, (test,) predict."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning"])
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    OFFLINE[recipe](tmp_path)
    commands = header_commands(REPO / "recipes" / f"{recipe}.yaml")
    assert len(commands) >= 3 and commands[0][:2] == ["lightning", "fit"]
    for command in commands:
        cli([*command[1:], *QUICK])
    runs = tmp_path / "runs" / recipe
    assert (runs / "version_0" / "checkpoints" / "last.ckpt").is_file()
    if any(c[1] == "predict" for c in commands):
        assert list(runs.glob("version_*/predictions/predictions.csv"))

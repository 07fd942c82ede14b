"""The command line: every recipe parses and runs on tiny data in its dataset's real format,
resume, prediction files, config saving and the console scripts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from datamodules_fakes import (
    write_ade,
    write_cifar,
    write_coco,
    write_flowers,
    write_food,
    write_image_folder,
    write_pets,
)
from PIL import Image

from dat_lightning.cli import ConfigError, cli
from dat_lightning.tasks import BaseTask
from datamodules import BaseDataModule
from datamodules.class_names import CIFAR10_CLASSES, CIFAR100_CLASSES, OXFORD_PETS_CLASSES

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
FAST = ["--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
        "--trainer.precision", "32-true"]


def _root(writer: Callable[[Path], object]) -> Callable:
    def prepare(root: Path, monkeypatch) -> list[str]:
        writer(root)
        return ["--data.init_args.root", str(root), "--data.init_args.download", "false"]
    return prepare


def _imagefolder(root: Path, monkeypatch) -> list[str]:
    write_image_folder(root / "train", ["cat", "dog"], per_class=3)
    write_image_folder(root / "val", ["cat", "dog"], per_class=2, seed=1)
    return ["--data.init_args.root", str(root / "train"),
            "--data.init_args.val_root", str(root / "val")]


# recipe -> (fake dataset in the real on-disk format, extra overrides for a fast CPU run)
SETUPS: dict[str, Callable] = {
    "cifar_dat": _root(lambda r: write_cifar(r, False, per_batch=4, names=CIFAR10_CLASSES)),
    "cifar_dat_pp": _root(lambda r: write_cifar(r, False, per_batch=4, names=CIFAR10_CLASSES)),
    "cifar100_dat": _root(lambda r: write_cifar(r, True, per_batch=4, names=CIFAR100_CLASSES)),
    "digits_dat": lambda r, m: [],
    "imagefolder_dat": _imagefolder,
    "imagefolder_dat_scratch": _imagefolder,
    "pets_dat": _root(lambda r: write_pets(r, [1, 2, 3], OXFORD_PETS_CLASSES)),
    "flowers_dat": _root(lambda r: write_flowers(r, [1, 2, 3] * 3, {
        "trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9]})),
    "food_dat": _root(lambda r: write_food(r, ["apple_pie", "pizza"])),
    "ade20k_upernet_dat": _root(lambda r: write_ade(r, per_split=2)),
    "ade20k_upernet_dat_pp": _root(lambda r: write_ade(r, per_split=2)),
}


def _coco(root: Path, monkeypatch) -> list[str]:
    for split in ("train", "val"):  # the standard layout: <split>2017/ and annotations/
        write_coco(root, split, 2, {1: "square", 2: "blob"})
    return ["--data.init_args.root", str(root), "--model.init_args.min_size", "64",
            "--model.init_args.max_size", "64"]


for _name in ("coco_retinanet_dat", "coco_maskrcnn_dat", "coco_maskrcnn_dat_pp"):
    SETUPS[_name] = _coco


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """The CLI is driven through ``args``; pytest's own command line must not leak into it."""
    monkeypatch.setattr(sys, "argv", ["lightning"])


def test_every_recipe_has_a_test_setup():
    assert sorted(SETUPS) == sorted(p.stem for p in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_fast_dev_run(recipe, tmp_path, monkeypatch):
    """Every recipe parses into one of the toolkit's tasks and datamodules and trains a step."""
    monkeypatch.chdir(tmp_path)
    extra = SETUPS[recipe.stem](tmp_path / "data", monkeypatch)
    size = "64" if "coco" in recipe.stem or "ade20k" in recipe.stem else "32"
    run = cli(["fit", "--config", str(recipe), *FAST, "--model.init_args.weights", "null",
               "--data.init_args.image_size", size, *extra])
    assert isinstance(run.model, BaseTask) and isinstance(run.datamodule, BaseDataModule)
    assert run.trainer.global_step == 1
    losses = {k: v for k, v in run.trainer.callback_metrics.items() if "loss" in k}
    assert losses and all(torch.isfinite(v) for v in losses.values())


def _digits_args(root: Path, *more: str) -> list[str]:
    return ["--config", str(REPO / "recipes" / "digits_dat.yaml"), "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--data.init_args.num_workers", "0",
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir",
            str(root), "--trainer.enable_progress_bar", "false", *more]


def test_resume_mid_epoch_matches_uninterrupted(tmp_path):
    """A fit stopped mid-epoch and resumed with --ckpt_path last reaches the same global step
    and optimizer state (per-parameter step counts, group LRs) as an uninterrupted run."""
    steps = ["--checkpoint.every_n_train_steps", "1", "--trainer.limit_val_batches", "1"]
    full = cli(["fit", *_digits_args(tmp_path / "full", "--trainer.max_steps", "8", *steps)])
    cli(["fit", *_digits_args(tmp_path / "cut", "--trainer.max_steps", "5", *steps)])
    resumed = cli(["fit", *_digits_args(tmp_path / "cut", "--trainer.max_steps", "8", *steps),
                   "--ckpt_path", "last"])
    assert resumed.trainer.global_step == full.trainer.global_step == 8
    got = resumed.trainer.optimizers[0].state_dict()
    expected = full.trainer.optimizers[0].state_dict()
    assert [g["name"] for g in got["param_groups"]] == [g["name"] for g in expected["param_groups"]]
    for g_got, g_exp in zip(got["param_groups"], expected["param_groups"]):
        assert g_got["lr"] == pytest.approx(g_exp["lr"])
    assert got["state"].keys() == expected["state"].keys()
    for key, state in got["state"].items():
        assert float(state["step"]) == float(expected["state"][key]["step"]) == 8
        assert state["exp_avg"].shape == expected["state"][key]["exp_avg"].shape


def test_config_saved_every_run_and_predictions_written(tmp_path):
    args = _digits_args(tmp_path, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1")
    cli(["fit", *args])
    cli(["fit", *args])  # a second run in the same place must not fail on "config already exists"
    assert list(tmp_path.rglob("config.yaml"))
    out = tmp_path / "predictions"
    run = cli(["predict", *args, "--ckpt_path", "last", "--prediction_writer.output_dir", str(out)])
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    test_size = len(run.datamodule.predict_dataset)  # setup("predict") builds only that split
    assert len(rows) == test_size
    for row in rows:
        probs = [float(row[f"p_{i}"]) for i in range(10)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert int(row["label"]) == max(range(10), key=probs.__getitem__)
        assert row["class_name"] == row["label"]


def test_runs_get_their_own_folders_and_best_last_resolve_in_later_runs(tmp_path, capsys):
    """Each fit writes logs, config and checkpoints into its own version folder; later CLI runs
    (fresh objects, as a new process has) resolve ``--ckpt_path last`` to the newest run's
    last.ckpt and ``best`` to the best checkpoint recorded in it, for validate, test and predict;
    a fit resumed from ``last`` continues in that run's folder; every run ends with a summary."""
    args = _digits_args(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                        "--trainer.limit_val_batches", "1")
    runs = tmp_path / "digits_dat"
    with pytest.raises(ConfigError, match=r"no last\.ckpt under .*run `fit` with this recipe first"):
        cli(["test", *args, "--ckpt_path", "best"])
    first, second = cli(["fit", *args]), cli(["fit", *args])
    assert Path(first.trainer.log_dir) == runs / "version_0"
    assert Path(second.trainer.log_dir) == runs / "version_1"
    for run in (first, second):
        checkpoints = Path(run.trainer.log_dir) / "checkpoints"
        assert Path(run.trainer.checkpoint_callback.best_model_path).parent == checkpoints
        assert (checkpoints / "last.ckpt").is_file()
        assert (Path(run.trainer.log_dir) / "config.yaml").is_file()
        assert list(Path(run.trainer.log_dir).glob("events.out.tfevents.*"))
    assert "lr_head_decay" in second.trainer.callback_metrics  # the tasks' own LR names
    best = second.trainer.checkpoint_callback
    summary = capsys.readouterr().out
    assert f"tensorboard --logdir {runs}" in summary
    assert f"best:         {best.best_model_path} (val_acc1 {float(best.best_model_score):.4f})" in summary
    assert f"last:         {runs / 'version_1' / 'checkpoints' / 'last.ckpt'}" in summary

    for subcommand, split in (("validate", "val"), ("test", "test")):
        for which, expected in (("best", best.best_model_path),
                                ("last", runs / "version_1" / "checkpoints" / "last.ckpt")):
            run = cli([subcommand, *args, "--ckpt_path", which])
            assert Path(run.config[subcommand].ckpt_path) == Path(expected)
            assert f"weights from: {expected}" in capsys.readouterr().out
            assert f"{split}_acc1" in run.trainer.callback_metrics
    out = tmp_path / "predictions"
    run = cli(["predict", *args, "--ckpt_path", "best", "--prediction_writer.output_dir", str(out)])
    assert Path(run.config.predict.ckpt_path) == Path(best.best_model_path)
    assert f"predictions:  {out / 'predictions.csv'}" in capsys.readouterr().out

    resumed = cli(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert Path(resumed.trainer.log_dir) == runs / "version_1"
    assert resumed.trainer.global_step == 4
    last = Path(resumed.trainer.checkpoint_callback.last_model_path)
    assert last.parent == runs / "version_1" / "checkpoints"


def test_config_errors_are_one_short_block(tmp_path, monkeypatch):
    """An error raised while the config is turned into objects is the project's message with the
    config section, the recipe and what to do; the console script prints it alone (no traceback
    unless DAT_LIGHTNING_DEBUG=1)."""
    args = _digits_args(tmp_path)
    with pytest.raises(ConfigError) as info:
        cli(["fit", *args, "--model.init_args.backbone", "dat_tinny"])
    message = str(info.value)
    assert message.startswith("error: `model` (dat_lightning.tasks.ClassificationTask) of ")
    assert "digits_dat.yaml" in message and "unknown backbone 'dat_tinny'" in message
    assert "--model.init_args.<name>" in message and "weights: null" not in message
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:  # raised in the datamodule's setup, during fit
        cli(["fit", "--config", str(REPO / "recipes" / "cifar_dat.yaml"), "--model.init_args.weights",
             "null", "--data.init_args.root", str(tmp_path / "nowhere"), "--data.init_args.download",
             "false", "--trainer.accelerator", "cpu"])
    message = str(info.value)
    assert message.startswith("error: `data` (datamodules.CIFAR10DataModule) of ")
    assert "cifar_dat.yaml could not be set up:" in message and "--data.init_args.<name>" in message

    missing = ["fit", *args, "--model.init_args.weights", str(tmp_path / "missing.pth")]
    command = [sys.executable, "-m", "dat_lightning", *missing]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Union subtypes" not in result.stderr
    block = result.stderr[result.stderr.index("error:"):].strip().splitlines()
    assert len(block) == 4, block
    assert "missing.pth" in block[1] and "`weights: null`" in block[2]
    debug = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env={**env, "DAT_LIGHTNING_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "missing.pth" in debug.stderr


def test_console_scripts():
    venv_bin = Path(sys.executable).parent
    for command in ([str(venv_bin / "lightning"), "--help"],
                    [str(venv_bin / "dat-lightning"), "fit", "--help"],
                    [sys.executable, "-m", "dat_lightning", "--help"]):
        assert shutil.which(command[0]) or Path(command[0]).exists(), command[0]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "fit" in result.stdout


@pytest.mark.slow
def test_digits_recipe_reaches_95_percent(tmp_path):
    """The README's main job, as written (full schedule), reaches >= 95% validation accuracy."""
    run = cli(["fit", *_digits_args(tmp_path)])
    assert run.trainer.current_epoch == run.trainer.max_epochs
    assert float(run.trainer.callback_metrics["val_acc1"]) >= 0.95


@pytest.mark.parametrize("recipe", ["ade20k_upernet_dat", "coco_maskrcnn_dat"])
def test_predict_writes_masks_and_detections(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = SETUPS[recipe](tmp_path / "data", monkeypatch)
    out = tmp_path / "predictions"
    run = cli(["predict", "--config", str(REPO / "recipes" / f"{recipe}.yaml"), *FAST,
               "--model.init_args.weights", "null", "--data.init_args.image_size", "64",
               "--prediction_writer.output_dir", str(out), *extra])
    samples = [run.datamodule.predict_dataset[i] for i in range(2)]  # the one fast_dev_run batch
    ids = [Path(sample["id"]).stem for sample in samples]
    assert not list(out.rglob("*.partial*"))
    if "ade20k" in recipe:
        masks = sorted(out.glob("masks/*.png"))
        assert [p.stem for p in masks] == sorted(ids)
        for path, sample in zip(masks, sorted(samples, key=lambda s: Path(s["id"]).stem)):
            mask = np.array(Image.open(path))
            assert mask.shape == tuple(sample["image"].shape[1:])  # full input resolution
            assert mask.max() < run.model.hparams.num_classes
    else:
        detections = json.loads((out / "detections.json").read_text())
        assert isinstance(detections, list)
        for det in detections:
            assert set(det) == {"image_id", "category_id", "bbox", "score"}
            assert len(det["bbox"]) == 4 and det["bbox"][2] >= 0 and det["bbox"][3] >= 0
            assert 1 <= det["category_id"] <= run.model.hparams.num_classes

"""A 2-process DDP fit on CPU (gloo) through the CLI trains and logs metrics synced across ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from lightning.pytorch.callbacks import Callback
    from dat_lightning.cli import cli

    out = Path(sys.argv[1])

    class DumpMetrics(Callback):
        """Each rank writes the metrics it logged at the end of fit."""

        def on_fit_end(self, trainer, pl_module):
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            metrics["global_step"] = trainer.global_step
            metrics["world_size"] = trainer.world_size
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(metrics))

    run = cli(sys.argv[2:], run=False)
    run.trainer.callbacks.append(DumpMetrics())
    run.trainer.fit(run.model, run.datamodule)
''')


def test_two_process_ddp_fit_on_cpu(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    args = ["--config", str(REPO / "recipes" / "digits_dat.yaml"), "--trainer.accelerator", "cpu",
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "3", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir",
            str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "checkpoints"),
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16"]
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for metrics in ranks:
        assert metrics["world_size"] == 2 and metrics["global_step"] == 3
    # each rank saw different validation batches: identical values prove the sync
    for key in ("val_loss", "val_acc1", "val_f1", "train_loss_epoch"):
        assert ranks[0][key] == ranks[1][key], key
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()

"""Write ``predict`` outputs to files: CSV (classification), PNG masks (segmentation) and
COCO-style JSON (detection)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image


def _ids(output: dict, batch: Any, batch_idx: int, size: int) -> list[str]:
    ids = output.get("id")
    if ids is None and isinstance(batch, dict):
        ids = batch.get("id")
    if ids is None:
        return [f"{batch_idx}_{i}" for i in range(size)]
    return [str(i.item() if isinstance(i, torch.Tensor) else i) for i in ids]


class PredictionWriter(BasePredictionWriter):
    """Write the predictions of ``trainer.predict`` under ``output_dir``.

    - classification: ``predictions.csv`` with ``id, label, class_name, score`` and one
      probability column per class;
    - segmentation: one index PNG per image (``masks/<id>.png``; ``uint16`` when there are more
      than 256 classes);
    - detection: ``detections.json``, a COCO results list (``image_id``, ``category_id``,
      ``bbox`` as ``[x, y, w, h]``, ``score``).

    Files are written under a temporary name and renamed when the epoch ends, so an interrupted
    run leaves no half-written file. Under several processes each rank writes its own files
    (``predictions.rank1.csv``, ...).

    Args:
        output_dir: directory for the files; ``None`` uses ``<log dir>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.output_dir = output_dir
        self._pending: dict[Path, Path] = {}
        self._detections: list[dict] = []

    def _dir(self, trainer: pl.Trainer) -> Path:
        root = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _name(self, trainer: pl.Trainer, stem: str, suffix: str) -> Path:
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        return self._dir(trainer) / f"{stem}{rank}{suffix}"

    def _temp_for(self, final: Path) -> Path:
        if final not in self._pending:
            self._pending[final] = final.with_name(final.name + ".partial")
        return self._pending[final]

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           prediction: Any, batch_indices: Sequence[int] | None, batch: Any,
                           batch_idx: int, dataloader_idx: int) -> None:
        if isinstance(prediction, dict) and "probs" in prediction:
            self._write_classification(trainer, pl_module, prediction, batch, batch_idx)
        elif isinstance(prediction, dict) and "mask" in prediction:
            self._write_masks(trainer, prediction, batch, batch_idx)
        elif isinstance(prediction, dict) and "detections" in prediction:
            self._collect_detections(prediction, prediction["detections"], batch, batch_idx)
        elif isinstance(prediction, list) and all("boxes" in d for d in prediction):
            self._collect_detections({}, prediction, batch, batch_idx)
        else:
            raise TypeError(
                f"PredictionWriter does not know how to write a {type(prediction).__name__} "
                "prediction; predict_step must return a dict with 'probs' (classification), "
                "'mask' (segmentation), or detections (a list of dicts with 'boxes', 'labels', "
                "'scores', or a dict with 'detections')")

    def _write_classification(self, trainer, pl_module, prediction, batch, batch_idx) -> None:
        probs = prediction["probs"].float().cpu()
        names = getattr(pl_module.hparams, "class_names", None) or [
            str(i) for i in range(probs.shape[1])]
        path = self._temp_for(self._name(trainer, "predictions", ".csv"))
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["id", "label", "class_name", "score", *[f"p_{n}" for n in names]])
            score, label = probs.max(1)
            for i, ident in enumerate(_ids(prediction, batch, batch_idx, len(probs))):
                writer.writerow([ident, int(label[i]), names[int(label[i])], f"{score[i]:.6f}",
                                 *(f"{p:.6f}" for p in probs[i].tolist())])

    def _write_masks(self, trainer, prediction, batch, batch_idx) -> None:
        masks = prediction["mask"].cpu().numpy()
        out = self._dir(trainer) / "masks"
        out.mkdir(exist_ok=True)
        dtype = np.uint8 if masks.max(initial=0) < 256 else np.uint16
        for ident, mask in zip(_ids(prediction, batch, batch_idx, len(masks)), masks):
            final = out / f"{Path(ident).stem}.png"
            temp = final.with_name(final.stem + ".partial.png")
            Image.fromarray(mask.astype(dtype)).save(temp)
            os.replace(temp, final)

    def _collect_detections(self, prediction, detections, batch, batch_idx) -> None:
        for ident, det in zip(_ids(prediction, batch, batch_idx, len(detections)), detections):
            boxes = det["boxes"].float().cpu()
            for box, label, score in zip(boxes.tolist(), det["labels"].tolist(),
                                         det["scores"].tolist()):
                x0, y0, x1, y1 = box
                self._detections.append(dict(image_id=ident, category_id=int(label),
                                             bbox=[x0, y0, x1 - x0, y1 - y0], score=score))

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        if self._detections:
            final = self._name(trainer, "detections", ".json")
            self._temp_for(final).write_text(json.dumps(self._detections))
            self._detections = []
        for final, temp in self._pending.items():
            os.replace(temp, final)
        self._pending = {}

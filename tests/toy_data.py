"""A learnable toy classification problem for the task tests: the class is which cell of a
2 x 4 grid over a 32 x 32 image is bright."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

NUM_CLASSES = 8


def bright_cell_samples(n: int, seed: int = 0, multi_label: bool = False) -> list[dict]:
    """``n`` samples ``{"image", "label", "id"}``; multi-label samples light one or two cells and
    carry a float multi-hot ``label``."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        image = torch.randn(3, 32, 32, generator=g) * 0.1
        cells = torch.randperm(NUM_CLASSES, generator=g)[:1 + (multi_label and i % 2)].tolist()
        for cell in cells:
            row, col = divmod(cell, 4)
            image[:, row * 16:(row + 1) * 16, col * 8:(col + 1) * 8] += 1.0
        if multi_label:
            label = torch.zeros(NUM_CLASSES)
            label[cells] = 1.0
        else:
            label = torch.tensor(cells[0])
        samples.append({"image": image, "label": label, "id": f"img{seed}_{i}"})
    return samples


def toy_loader(n: int, batch_size: int = 4, seed: int = 0, shuffle: bool = False,
               multi_label: bool = False) -> DataLoader:
    """DataLoader over :func:`bright_cell_samples` (default collation stacks tensors and lists
    the ids)."""
    return DataLoader(bright_cell_samples(n, seed, multi_label), batch_size=batch_size,
                      shuffle=shuffle, generator=torch.Generator().manual_seed(seed))

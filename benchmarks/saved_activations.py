"""Bytes that one train-mode forward saves for backward, per model: the part of training memory
that load and allocator caching cannot disturb.

    python benchmarks/saved_activations.py
    python benchmarks/saved_activations.py --models dat_tiny --grad-checkpointing

Counts the unique storages handed to ``torch.autograd.graph.saved_tensors_hooks`` (parameters
excluded), so a tensor saved by several ops counts once. With ``--grad-checkpointing`` the figure
is what stays saved between forward and backward (the recomputed blocks' activations exist only
one block at a time during backward).
"""

from __future__ import annotations

import argparse

import timm
import torch

import dat_lightning.models.presets  # noqa: F401  (registers the DAT presets with timm)


def saved_mib(model: torch.nn.Module, x: torch.Tensor) -> float:
    """MiB of non-parameter storages saved for backward by ``model(x)``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["swin_tiny_patch4_window7_224", "dat_tiny", "dat_pp_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grad-checkpointing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000).train()
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        rows.append((name, saved_mib(model, x)))
    ref = rows[0][1]
    print(f"\nsaved for backward, batch {args.batch} at {args.size}, fp32"
          + (", gradient checkpointing" if args.grad_checkpointing else "") + "\n")
    print("| model | saved MiB | x ref |")
    print("| --- | --- | --- |")
    for name, mib in rows:
        print(f"| {name} | {mib:.0f} | {mib / ref:.2f} |")


if __name__ == "__main__":
    main()

"""Bytes that one train-mode forward saves for backward, and the peak of a whole train step, per
model: the parts of training memory that load and allocator caching cannot disturb.

    python benchmarks/saved_activations.py
    python benchmarks/saved_activations.py --models dat_tiny --grad-checkpointing
    python benchmarks/saved_activations.py --recompute-attention

Two counts: the unique storages handed to ``torch.autograd.graph.saved_tensors_hooks``
(parameters excluded), so a tensor saved by several ops counts once; and, as a cross-check that
also sees what a checkpoint keeps for its recomputation, the bytes the CPU allocator still holds
after the forward (``torch.profiler`` memory events), less the output. With
``--grad-checkpointing`` the figures are what stays saved between forward and backward (the
recomputed blocks' activations exist only one block at a time during backward).

The peak is the most bytes the CPU allocator holds at once during forward and backward (the
parameter gradients included), from the same memory events in time order: the CPU counterpart
of ``torch.cuda.max_memory_allocated``. Unlike the resident set size (``model_throughput.py``),
it does not count memory that the C library keeps after a tensor is freed.
"""

from __future__ import annotations

import argparse

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import dat_lightning.models.presets  # noqa: F401  (registers the DAT presets with timm)
from dat_lightning.memory import peak_allocated_bytes
from dat_lightning.models import DAT
from dat_lightning.models.layers import set_attention_recompute


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


def alive_mib(model: torch.nn.Module, x: torch.Tensor) -> float:
    """MiB that the allocator still holds after ``model(x)`` (the output excluded)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x)
    allocated = sum(e.self_cpu_memory_usage for e in prof.key_averages())
    return (allocated - out.untyped_storage().nbytes()) / 2**20


def peak_mib(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Peak MiB the allocator holds during forward and backward of ``model(x)`` (gradients from
    ``None``), above what it held before."""
    model.zero_grad(set_to_none=True)
    peak = peak_allocated_bytes(lambda: model(x).sum().backward())
    model.zero_grad(set_to_none=True)
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["swin_tiny_patch4_window7_224", "dat_tiny", "dat_pp_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--recompute-attention", action="store_true",
                        help="DAT models recompute their attention in backward")
    args = parser.parse_args()
    torch.set_num_threads(2)
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000).train()
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if args.recompute_attention and isinstance(model, DAT):
            set_attention_recompute(model)
        rows.append((name, saved_mib(model, x), alive_mib(model, x), peak_mib(model, x)))
    ref, ref_alive, ref_peak = rows[0][1:]
    print(f"\nsaved for backward, batch {args.batch} at {args.size}, fp32"
          + (", gradient checkpointing" if args.grad_checkpointing else "")
          + (", DAT attention recomputed" if args.recompute_attention else "") + "\n")
    print("| model | saved MiB | x ref | alive after forward MiB | x ref | train step peak MiB | x ref |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, mib, alive, peak in rows:
        print(f"| {name} | {mib:.0f} | {mib / ref:.2f} | {alive:.0f} | {alive / ref_alive:.2f} "
              f"| {peak:.0f} | {peak / ref_peak:.2f} |")


if __name__ == "__main__":
    main()

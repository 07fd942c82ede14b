"""Op-by-op profile of one train (or forward) step of several models, side by side.

    python benchmarks/profile_step.py --models swin_tiny_patch4_window7_224 dat_tiny --top 15

Each model runs ``--warmup`` untimed steps, then ``--steps`` steps under ``torch.profiler``; the
table lists the ops with the largest self CPU time (per step) summed over the models, in ms and as
a share of each model's step, so the extra time of one model over another can be read op by op.
A second table sums the ops by kind (matrix products, sampling, convolutions, softmax, copies and
layout, normalisation, the other element-wise ops) and gives each model's difference from the first.
"""

from __future__ import annotations

import argparse

import timm
import torch
from interleaved_throughput import DTYPES, make_step  # the step the throughput figures time
from torch.profiler import ProfilerActivity, profile

import dat_lightning.models.presets  # noqa: F401  (registers the DAT presets with timm)

#: Op kinds of the summary table: the first kind whose name fragment is in the op name.
KINDS = {
    "matrix products": ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear"),
    "grid sampling": ("grid_sampler",),
    "convolutions": ("convolution", "conv"),
    "softmax": ("softmax",),
    "copies and layout": ("copy", "cat", "stack", "clone", "contiguous", "pad", "index", "roll",
                          "fill", "zero", "slice", "narrow", "scatter", "gather"),
    "normalisation": ("layer_norm", "batch_norm", "group_norm"),
}


def kind_of(op: str) -> str:
    """The :data:`KINDS` entry of an ``aten::`` op, else ``"other element-wise"``."""
    name = op.removeprefix("aten::")
    for kind, fragments in KINDS.items():
        if any(f in name for f in fragments):
            return kind
    return "other element-wise"


def profile_model(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Self CPU time (ms) per op of one step of ``name`` (mean over ``--steps`` profiled steps)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=1000)
    x = torch.randn(args.batch, 3, args.size, args.size)
    step = make_step(model, x, args.mode, DTYPES[args.dtype])
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    return {e.key: e.self_cpu_time_total / 1000 / args.steps for e in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["swin_tiny_patch4_window7_224", "dat_tiny"])
    parser.add_argument("--mode", choices=["train", "forward"], default="train")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="profiled steps (averaged)")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times = {name: profile_model(name, args) for name in args.models}
    totals = {name: sum(t.values()) for name, t in times.items()}
    ops = sorted({op for t in times.values() for op in t},
                 key=lambda op: -sum(t.get(op, 0.0) for t in times.values()))[:args.top]
    print(f"\n{args.mode} step, batch {args.batch} at {args.size}, {args.dtype}, {args.threads} threads; "
          "self CPU ms (share of the model's step)\n")
    print("| op | " + " | ".join(args.models) + " |")
    print("|" + " --- |" * (1 + len(args.models)))
    for op in ops:
        cells = [f"{times[n].get(op, 0.0):.0f} ({100 * times[n].get(op, 0.0) / totals[n]:.1f}%)"
                 for n in args.models]
        print(f"| `{op}` | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(f"{totals[n]:.0f}" for n in args.models) + " |")

    ref = args.models[0]
    kinds = {n: {k: 0.0 for k in [*KINDS, "other element-wise"]} for n in args.models}
    for n, t in times.items():
        for op, ms in t.items():
            kinds[n][kind_of(op)] += ms
    print(f"\nby kind, self CPU ms (difference from {ref})\n")
    print("| kind | " + " | ".join(args.models) + " |")
    print("|" + " --- |" * (1 + len(args.models)))

    def cell(n: str, ms: float, ref_ms: float) -> str:
        return f"{ms:.0f}" + ("" if n == ref else f" ({ms - ref_ms:+.0f})")

    for kind in kinds[ref]:
        cells = [cell(n, kinds[n][kind], kinds[ref][kind]) for n in args.models]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("| total | " + " | ".join(cell(n, totals[n], totals[ref]) for n in args.models) + " |")


if __name__ == "__main__":
    main()

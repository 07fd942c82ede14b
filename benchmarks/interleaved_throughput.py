"""Throughput of several models measured side by side in one process, interleaved step by step.

    python benchmarks/interleaved_throughput.py --models swin_tiny_patch4_window7_224 dat_tiny
    python benchmarks/interleaved_throughput.py --mode forward --rounds 10
    python benchmarks/interleaved_throughput.py --dtype bf16 --models swin_tiny_patch4_window7_224 dat_tiny

All models are built first; then every round runs one timed step of each model in turn, so a
change in the machine's load hits all of them alike. The ratios use the median step time of each
model, relative to the first one. This is the figure to quote for "x Swin-T"; for peak memory use
``model_throughput.py`` (one process per model) or ``saved_activations.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import dat_lightning.models.presets  # noqa: F401  (registers the DAT presets with timm)

#: ``--dtype`` choices of the benchmark scripts.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_step(model: torch.nn.Module, x: torch.Tensor, mode: str, dtype: torch.dtype):
    """A closure running one forward (no grad, eval) or train (forward + backward, gradients
    dropped) step, under autocast on ``x``'s device when ``dtype`` is not fp32."""
    autocast = torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32)
    model.train(mode == "train")

    def step() -> None:
        with autocast:
            if mode == "forward":
                with torch.no_grad():
                    model(x)
            else:
                model(x).float().square().mean().backward()
                model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["swin_tiny_patch4_window7_224", "dat_tiny", "dat_pp_tiny"])
    parser.add_argument("--mode", choices=["train", "forward"], default="train")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    x = torch.randn(args.batch, 3, args.size, args.size)
    steps = {}
    for name in args.models:
        torch.manual_seed(0)
        steps[name] = make_step(timm.create_model(name, num_classes=1000), x, args.mode, dtype)
    times: dict[str, list[float]] = {name: [] for name in args.models}
    for round_ in range(args.warmup + args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    ref = statistics.median(times[args.models[0]])
    print(f"\n{args.mode}, batch {args.batch} at {args.size}, {args.dtype}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds; median step, reference = {args.models[0]}\n")
    print("| model | img/s | x ref | step ms (min-max) |")
    print("| --- | --- | --- | --- |")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {args.batch / med:.2f} | {ref / med:.2f} | "
              f"{1000 * med:.0f} ({1000 * min(t):.0f}-{1000 * max(t):.0f}) |")


if __name__ == "__main__":
    main()

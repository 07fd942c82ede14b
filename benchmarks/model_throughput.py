"""Model throughput and peak memory: DAT presets side by side with timm's Swin-T and ConvNeXt-T.

Each (model, mode) runs in a fresh subprocess so peak memory is its own. Forward is eval mode
under ``torch.no_grad()``; train is forward + backward in train mode. Results are printed as a
markdown table with ratios to the first reference model (Swin-T), because absolute figures on
shared machines drift.

    python benchmarks/model_throughput.py                        # CPU, fp32, batch 8 at 224
    python benchmarks/model_throughput.py --device cuda --dtype bf16 --batch 64
    python benchmarks/model_throughput.py --models dat_tiny --grad-checkpointing
    python benchmarks/model_throughput.py --compile     # adds graph breaks and compile seconds
    python benchmarks/model_throughput.py --device cuda --attention-backend flex

Wall-clock rates: on a machine shared with other jobs, compare the ratios of one run, and repeat
(``--repeats``); the ratios use the best round of each model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DEFAULT_MODELS = ["swin_tiny_patch4_window7_224", "convnext_tiny", "dat_tiny", "dat_pp_tiny"]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(model_name: str, mode: str, args: argparse.Namespace) -> dict:
    """Run one measurement in this process and return its figures."""
    import timm
    import torch

    import dat_lightning.models.presets  # noqa: F401  (registers the DAT presets)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    from interleaved_throughput import DTYPES, make_step  # same step as the interleaved benchmark

    dtype = DTYPES[args.dtype]
    model = timm.create_model(model_name, num_classes=1000).to(device)
    if args.attention_backend and model_name.startswith("dat"):
        from dat_lightning.models.layers import set_attention_backend

        set_attention_backend(model, args.attention_backend)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    graph_breaks = None
    if args.compile:
        model.train(mode == "train")
        graph_breaks = torch._dynamo.explain(model)(x).graph_break_count
        torch._dynamo.reset()
        model = torch.compile(model)
    step = make_step(model, x, mode, dtype)
    base_rss = _rss_mib()  # model and input resident; peak is measured above this
    start = time.perf_counter()
    step()  # the first step compiles with --compile
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # peak resident memory (warm-up included) above the model + input
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return dict(model=model_name, mode=mode, images_per_s=args.batch * args.iters / elapsed,
                peak_mib=peak, graph_breaks=graph_breaks, first_step_s=first_step_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--modes", nargs="+", default=["forward", "train"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (at least 1)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all models")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--attention-backend", choices=["auto", "reference", "flex"],
                        help="deformable attention backend of the DAT models (default: auto)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per measurement; a row that runs over is reported as such")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker, args)))
        return
    rows = {name: {"model": name} for name in args.models}
    passthrough = sys.argv[1:]
    for round_ in range(args.repeats):  # models interleaved per round; best round kept
        for name, row in rows.items():
            for mode in args.modes:
                try:
                    out = subprocess.run(
                        [sys.executable, __file__, *passthrough, "--worker", name, mode],
                        check=True, capture_output=True, text=True, timeout=args.timeout).stdout
                except subprocess.TimeoutExpired:
                    row.setdefault(f"{mode}_failed", f"over {args.timeout:.0f} s")
                    continue
                except subprocess.CalledProcessError as err:
                    row.setdefault(f"{mode}_failed", "error: " + (err.stderr.strip().splitlines()
                                                                  or ["?"])[-1][:80])
                    continue
                result = json.loads(out.strip().splitlines()[-1])
                row.pop(f"{mode}_failed", None)
                row[mode] = max(row.get(mode, 0.0), result["images_per_s"])
                row[f"{mode}_mib"] = min(row.get(f"{mode}_mib", float("inf")), result["peak_mib"])
                row[f"{mode}_first_s"] = min(row.get(f"{mode}_first_s", float("inf")),
                                             result["first_step_s"])
                row["graph_breaks"] = result["graph_breaks"]
            print(f"round {round_ + 1}: measured {name}", file=sys.stderr)
    rows = list(rows.values())
    ref = rows[0]
    columns = ["img/s", "x ref", "peak MiB", "mem x ref"] + (["first step s"] if args.compile else [])
    header = "| model | " + " | ".join(f"{m} {c}" for m in args.modes for c in columns) + (
        " | graph breaks |" if args.compile else " |")
    print(f"\nbatch {args.batch}, {args.size}px, {args.dtype}, {args.device}, {args.threads} threads,"
          f" reference = {ref['model']}" + (" (compiled: the first step includes compilation)"
                                            if args.compile else "") + "\n")
    print(header)
    print("|" + " --- |" * (1 + len(columns) * len(args.modes) + args.compile))
    for row in rows:
        cells = []
        for m in args.modes:
            if m not in row:
                cells += [row[f"{m}_failed"]] + [""] * (len(columns) - 1)
                continue
            ratio = f"{row[m] / ref[m]:.2f}" if m in ref else ""
            mem = f"{row[f'{m}_mib'] / max(ref[f'{m}_mib'], 1e-9):.2f}" if m in ref else ""
            cells += [f"{row[m]:.2f}", ratio, f"{row[f'{m}_mib']:.0f}", mem]
            if args.compile:
                cells.append(f"{row[f'{m}_first_s']:.1f}")
        if args.compile:
            cells.append(str(row.get("graph_breaks")))
        print(f"| {row['model']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

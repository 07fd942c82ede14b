"""Correctness part of ``gpu_check.sh``: the official fixtures on a CUDA device, for every attention
backend, with the tests' tolerances (TF32 off, so fp32 means fp32).

    python benchmarks/gpu_check.py --device cuda        # prints a markdown table, exits 1 on a failure

Checks per backend (``reference``, ``flex``): the strict output fixtures (logits, eval, no grad)
and the two gradient fixtures (train mode, backward; for ``flex`` this is the FlexAttention
backward with gradients to ``rpe_table`` and the sampling positions, which the CPU cannot run).
The checks are the test suite's (``tests/test_backbone_fixtures.py``,
``tests/test_attention_backends.py``); ``--device cpu`` runs the reference rows here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_attention_backends import check_official_gradients, load_grad_fixture  # noqa: E402
from test_backbone_fixtures import STRICT_FIXTURES, assert_close, load_fixture  # noqa: E402

from dat_lightning.models.layers import set_attention_backend  # noqa: E402

GRAD_FIXTURES = ["v1_grad_224", "pp_grad_192"]


def check(name: str, fn) -> tuple[str, str, float]:
    """Run one check; (name, "ok" or the error, seconds)."""
    start = time.perf_counter()
    try:
        fn()
        verdict = "ok"
    except Exception as err:  # reported in the table; the exit code says a check failed
        verdict = f"FAIL: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
    return name, verdict, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--fixtures", type=Path, default=Path(os.environ.get(
        "DAT_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "official")))
    parser.add_argument("--backends", nargs="+", default=["reference", "flex"])
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    rows = []
    for backend in args.backends:
        if backend == "flex" and device.type == "cpu":
            continue  # no FlexAttention backward on the CPU; its forward is in the test suite
        for name in STRICT_FIXTURES:
            def outputs(name=name, backend=backend):
                model, inputs, expected = load_fixture(args.fixtures, name)
                set_attention_backend(model, backend)
                with torch.no_grad():
                    logits = model.to(device)(inputs.to(device)).cpu()
                assert_close(logits, expected["logits"])
            rows.append((backend, *check(f"{name} logits", outputs)))
        for name in GRAD_FIXTURES:
            def gradients(name=name, backend=backend):
                folder = args.fixtures.parent / "grads" / name
                model = load_grad_fixture(folder)
                set_attention_backend(model, backend)
                check_official_gradients(model.to(device), folder)
            rows.append((backend, *check(f"{name} gradients", gradients)))
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nFixtures on {label} (torch {torch.__version__}, fp32, TF32 off)\n")
    print("| backend | fixture | result | s |\n| --- | --- | --- | --- |")
    for backend, name, verdict, seconds in rows:
        print(f"| {backend} | {name} | {verdict} | {seconds:.1f} |")
    sys.exit(int(any(verdict != "ok" for *_, verdict, _ in rows)))


if __name__ == "__main__":
    main()

"""Memory of a step on the CPU, where there is no ``torch.cuda.max_memory_allocated``.

:func:`peak_allocated_bytes` reads the profiler's allocator events in time order, so it counts
the tensors alive at once (parameter gradients included) and not what the C library keeps
after a tensor is freed, which the resident set size also holds.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_allocated_bytes"]


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Most bytes the CPU allocator holds at once while ``fn()`` runs, above what it held before
    the call (e.g. ``lambda: model(x).sum().backward()`` for a train step)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak

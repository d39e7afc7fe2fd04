"""Fair timing (docs/din-reference.md, "Benchmarking fairly"): malloc's thresholds pinned, every engine
warmed up and called in alternating rounds (the order rotating each round), medians and percentiles."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# glibc reads these at start-up; the bench also applies them to itself with mallopt (below). The mmap
# threshold is glibc's maximum on 64-bit, so large tensors come from the heap, not fresh page faults.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024, "MALLOC_TRIM_THRESHOLD_": 1024 * 1024 * 1024}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers, glibc malloc.h


def pin_malloc() -> dict[str, Any]:
    """Pin malloc's thresholds for this process (mallopt) and for the processes it starts (environment)."""
    os.environ.update({k: str(v) for k, v in MALLOC_SETTINGS.items()})
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_SETTINGS["MALLOC_TRIM_THRESHOLD_"])
                       and libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_SETTINGS["MALLOC_MMAP_THRESHOLD_"]))
    except (OSError, AttributeError):  # not glibc: the environment variables are all we can set
        applied = False
    return {**MALLOC_SETTINGS, "applied_with_mallopt": applied}


def alternate(thunks: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
              back_to_back: int = 1) -> dict[str, list[float]]:
    """Seconds of each call: every thunk warmed up, then `rounds` rounds, the order rotating each round.

    back_to_back = 1: each call follows another engine's, so it finds the caches as that engine left
    them (a server doing other work between requests). back_to_back = k > 1: each engine is called k
    times in a row per round and only the k - 1 repeats are timed (warm caches, a tight loop).
    """
    for thunk in thunks.values():
        for _ in range(warmup):
            thunk()
    names = list(thunks)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for i in range(back_to_back):
                start = time.perf_counter()
                thunks[name]()
                if back_to_back == 1 or i > 0:
                    times[name].append(time.perf_counter() - start)
    return times


def quantiles(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds)
    return {"p50_ms": float(np.median(a) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3), "n": len(a)}

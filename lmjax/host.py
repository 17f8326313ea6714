"""The host process, set up for XLA:CPU's per-step buffers (lmjax.main and the benchmarks call `setup`).

XLA:CPU allocates every step's temporaries afresh (one buffer of tens of MB for the baby config, 1.5 GB
at 6 x 384 and context 256). With glibc's defaults a buffer that large is mmap'd and unmapped again on
free, so each step faults all of its pages back in: 11,800 page faults and ~30 ms of kernel time in a
~55 ms baby step on the 2-core CPU (benchmarks/RESULTS.md). Raising malloc's mmap and trim thresholds
keeps freed memory in the heap for the next step, and running CPU steps on the dispatching thread keeps
even the largest buffers in that heap: no faults in steady state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
LIMIT = (
    2**31 - 1
)  # mallopt takes an int: allocations up to 2 GiB come from the heap and stay there when freed
TOP_PAD = 64 << 20
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Applies the thresholds when the C library is glibc and the environment sets none of its own (a user's
    MALLOC_* or GLIBC_TUNABLES wins); returns whether it did. Call it once, early in the process."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ENV):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    settings = ((M_MMAP_THRESHOLD, LIMIT), (M_TRIM_THRESHOLD, LIMIT), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)


def release_freed_memory() -> bool:
    """Hands the heap's free memory back to the system (glibc's malloc_trim), which keep_freed_memory
    otherwise keeps: for a server after loading, when the full-precision parameters it quantised are gone."""
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def run_cpu_steps_inline() -> None:
    """Runs CPU computations on the thread that dispatches them (jax_cpu_enable_async_dispatch off): their
    buffers then come from that thread's heap, which keep_freed_memory keeps, where a worker thread's glibc
    arena maps any block over 64 MiB afresh every step (1.25x at 6 x 384, context 256). The training
    pipeline prepares the next batch on a thread of its own meanwhile. Takes effect only before JAX starts
    its CPU backend; computations on accelerators are unaffected."""
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def tune_allocator() -> None:
    """Both, once, at the start of a training or benchmark process."""
    keep_freed_memory()
    run_cpu_steps_inline()

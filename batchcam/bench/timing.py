"""Timing side by side (round-robin medians) and peak memory of one call (chapter 3)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import time
from typing import Any, Callable, Optional

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], device: torch.device, number: int) -> tuple[float, Any]:
    """Seconds per call of ``fn`` over ``number`` calls, and the last call's output."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(number):
        out = fn()
    _sync(device)
    return (time.perf_counter() - start) / number, out


def _summary(times_s: list[float], number: int) -> dict:
    ms = sorted(t * 1e3 for t in times_s)
    mid = len(ms) // 2
    median = ms[mid] if len(ms) % 2 else (ms[mid - 1] + ms[mid]) / 2
    return {"median_ms": median, "min_ms": ms[0], "max_ms": ms[-1], "reps": len(ms), "calls_per_rep": number,
            "times_ms": [round(t * 1e3, 4) for t in times_s]}


def time_side_by_side(fns: dict[str, Callable[[], Any]], device: torch.device, *, reps: dict[str, int],
                      warmup: int = 1, min_rep_s: float = 0.0) -> tuple[dict[str, dict], dict[str, Any]]:
    """Time each function of ``fns``, round-robin, so that load changes hit all of them alike.

    Each function is first called ``max(warmup, 1)`` times (the last call sizes its repetitions:
    ``ceil(min_rep_s / t)`` calls each). Then round ``r`` times every function that still needs a
    repetition, in an order rotated by ``r``.

    A function that raises during warm-up is dropped and reported as ``{"error": message}``.

    Returns:
        ``({name: {"median_ms", "min_ms", "max_ms", "reps", "calls_per_rep", "times_ms"}},
        {name: output of its last call})``.
    """
    numbers, outputs, errors = {}, {}, {}
    for name, fn in fns.items():
        try:
            for _ in range(max(warmup, 1)):
                t, outputs[name] = _time_calls(fn, device, 1)
        except Exception as err:  # noqa: BLE001 - recorded, the other methods still run
            errors[name] = {"error": f"{type(err).__name__}: {err}"}
            outputs.pop(name, None)
            continue
        numbers[name] = max(1, math.ceil(min_rep_s / t)) if t > 0 else 1
    names, times = list(numbers), {name: [] for name in numbers}
    for r in range(max((reps[n] for n in names), default=0)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if r < reps[name]:
                t, outputs[name] = _time_calls(fns[name], device, numbers[name])
                times[name].append(t)
    return {**{name: _summary(times[name], numbers[name]) for name in names}, **errors}, outputs


def _read_status_kib(key: str) -> Optional[int]:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _cpu_peak_probe() -> tuple[bool, str]:
    """Whether the peak-RSS counter can be reset here (Linux ≥ 4.0, writable clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        ok = _read_status_kib("VmHWM") is not None
    except OSError as err:
        return False, f"cannot reset the peak RSS counter: {err}"
    return ok, "" if ok else "VmHWM missing from /proc/self/status"


CPU_MEMORY_METHOD = ("in a fresh process per configuration (spawned after all timings, so the heap holds "
                     "nothing from other runs), glibc malloc set to return every block >= 128 KiB to the OS on "
                     "free (mallopt M_MMAP_THRESHOLD), one warm-up call per method; then per call: "
                     "peak RSS delta: gc.collect() + malloc_trim(0), read VmRSS, reset the high-water mark "
                     "(write 5 to /proc/self/clear_refs), one call, read VmHWM; MiB. Measured in the timing "
                     "process instead, the loop's peak varied up to 8x with the heap's history")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated() - memory_allocated() before one call (after reset); MiB"


def _fixed_mmap_threshold(device: torch.device) -> None:
    """CPU: serve every allocation >= 128 KiB by mmap and unmap it on free, so RSS follows live tensors.
    Slows allocation down (page faults) and cannot be undone, so only the memory worker processes set it."""
    if device.type == "cpu":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> Optional[float]:
    """Extra memory at the peak of one call of ``fn`` (MiB) above what was in use just before; ``None``
    when it cannot be measured on this platform (see ``CPU_MEMORY_METHOD`` / ``CUDA_MEMORY_METHOD``)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if not _cpu_peak_probe()[0]:
        return None
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is in use
    base = _read_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    fn()
    return (_read_status_kib("VmHWM") - base) / 1024

"""One Grad-CAM configuration: time the methods, check the maps, floor/leak checks, peak memory (chapter 3)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .._helpers import set_seed
from ..models import MODEL_SPECS, create_model
from .config import BenchConfig, FLOOR, ModelCase, REFERENCE
from .methods import (METHOD_BUILDERS, Case, _check_outputs, build_methods, comparable_maps, compare_maps,
                      floor_check, loop_leak_check)
from .timing import (CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, _cpu_peak_probe, _fixed_mmap_threshold, peak_memory_mib,
                     time_side_by_side)


def _inputs(batch: int, size: int, num_classes: int, seed: int, device: torch.device,
            channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, size, size, generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device)


def _prepare_model(case: ModelCase, cfg: BenchConfig, device: torch.device, train: bool) -> nn.Module:
    set_seed(cfg.seed)
    model = create_model(case.name, num_classes=cfg.num_classes, image_size=case.size).to(device).train(train)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _ratios(timings: dict[str, dict], base: str) -> dict[str, float]:
    """Median of every timed function over the median of ``base`` (empty when ``base`` failed)."""
    if "median_ms" not in timings.get(base, {}):
        return {}
    return {name: t["median_ms"] / timings[base]["median_ms"] for name, t in timings.items() if "median_ms" in t}


MEMORY_METHODS = (FLOOR, REFERENCE, "gradcam_loop")


def measure_memory(mc: ModelCase, batch: int, cfg: BenchConfig, names: Sequence[str],
                   device: Optional[torch.device] = None, model: Optional[nn.Module] = None) -> dict:
    """Peak extra memory of one call of each of ``names`` (the floor, the batch and the loop method) on
    one configuration (see ``peak_memory_mib``). On CPU this runs in a fresh process (``_in_fresh_process``)."""
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    _fixed_mmap_threshold(device)
    model = model if model is not None else _prepare_model(mc, cfg, device, train=False)
    case = make_case(model, mc, batch, cfg, device)
    methods = {n: METHOD_BUILDERS[n](case) for n in names}
    for m in methods.values():
        m.run()  # warm-up: lazy initialisation is not the method's memory
    available, why = (True, "") if cuda else _cpu_peak_probe()
    peaks = {n: peak_memory_mib(m.run, device) for n, m in methods.items()}
    out: dict[str, Any] = {"peak_mib": peaks, "method": CUDA_MEMORY_METHOD if cuda else CPU_MEMORY_METHOD}
    if peaks.get("gradcam_loop") and peaks.get(REFERENCE):
        out["loop_over_batch"] = peaks["gradcam_loop"] / peaks[REFERENCE]
    if not available:
        out["unavailable"] = why
    return out


def _in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict:
    """``fn(*args)`` in a newly spawned Python process (same torch thread count); its error is recorded."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    try:
        with ctx.Pool(1, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
            return pool.apply(fn, args)
    except Exception as err:  # noqa: BLE001 - a failed measurement must not lose the timings
        return {"peak_mib": {}, "error": f"{type(err).__name__}: {err}"}


def make_case(model: nn.Module, mc: ModelCase, batch: int, cfg: BenchConfig, device: torch.device) -> Case:
    """Random images in [0, 1] and random targets (seeded by ``cfg.seed`` and the batch size)."""
    amp = device.type == "cuda"
    x, y = _inputs(batch, mc.size, cfg.num_classes, cfg.seed + batch, device, channels_last=amp)
    return Case(model, MODEL_SPECS[mc.name].target_layer, x, y, amp)


def bench_cam(case: Case, mc: ModelCase, cfg: BenchConfig, device: torch.device) -> dict:
    """Time the five Grad-CAM methods on one batch and check their maps agree (peak memory is measured
    after all timings, in ``run_benchmark``)."""
    batch = case.x.shape[0]
    methods, skipped = build_methods(case)
    reps = {n: cfg.loop_reps_large if n == "gradcam_loop" and batch >= cfg.large_batch else cfg.reps
            for n in methods}
    fns = {n: m.run for n, m in methods.items()}
    timings, outputs = time_side_by_side(fns, device, reps=reps, warmup=cfg.warmup, min_rep_s=cfg.min_rep_s)
    maps = comparable_maps(methods, _check_outputs(case, methods, outputs))
    del outputs
    entry = {
        "model": mc.name, "image_size": mc.size, "batch_size": batch, "target_layer": case.layer_name,
        "timings": timings, "skipped_methods": skipped,
        "ratios": {"to_forward": _ratios(timings, FLOOR), "to_batch_gradcam": _ratios(timings, REFERENCE)},
        "equality": compare_maps(maps, REFERENCE, cfg.atol) if REFERENCE in maps else None,
        "floor_check": floor_check(case),
        "loop_leak_check": loop_leak_check(case),
        "notes": {n: m.note for n, m in methods.items() if m.note},
    }
    return entry

"""Timing, the training step, peak memory and the benchmark record.

Chapter 3 ("speed") reads the Grad-CAM timings: every method of :mod:`batchcam.bench.methods`
on the same batch, with the check that their maps agree. Chapter 6 ("cost of the losses")
reads the training steps: one optimiser step with each objective, timed against a ``ce`` step;
the step calls :func:`batchcam.losses.objective_loss`, the function training runs.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.benchmark import Measurement, Timer

from .._helpers import set_seed
from ..losses import OBJECTIVES, Objective, objective_loss
from ..models import MODEL_SPECS, create_model
from ..results import provenance
from .config import METHODS, BenchConfig, ModelCase
from .methods import COMPARED, Case, build_methods, check_maps, loop_frees_graph

SCHEMA_VERSION = 2
TIMING = ("torch.utils.benchmark.Timer.blocked_autorange(min_run_time / rounds) per method and round (its block-size "
          "estimate is the warm-up); the methods of a configuration take turns in an order rotated every round, so a "
          "change of machine load hits them alike; median and IQR of the per-call times of all blocks")
MEMORY = {
    "cuda": "torch.cuda.max_memory_allocated() - memory_allocated() before one call, after a warm-up call; MiB",
    "cpu": "in a fresh spawned process per configuration, glibc malloc returning blocks >= 128 KiB to the OS "
           "(mallopt M_MMAP_THRESHOLD), after a warm-up call: gc + malloc_trim, read VmRSS, reset the high-water "
           "mark (/proc/self/clear_refs), one call, VmHWM - VmRSS; MiB (Linux only)",
}
MEMORY_METHODS = ("forward", "batch_gradcam", "gradcam_loop")
LIBRARIES = ("torch", "torchvision", "timm", "torchmetrics", "numpy", "captum", "grad-cam", "opencv-python-headless")


def time_calls(fns: dict[str, Callable[[], Any]], rounds: int, min_run_time: float) -> dict[str, dict]:
    """Time each function of ``fns`` (``TIMING``); CUDA is synchronised around every block.

    Returns ``{name: {"median_ms", "iqr_ms", "times_ms", "rounds_ms"}}`` (``times_ms``: per-call time of
    each block; ``rounds_ms``: the median per-call time of each round, in round order, so that two methods
    can be paired by round: ``batchcam.timing``), or ``{name: {"error": message}}`` for a function that
    raised (the others still run).
    """
    timers = {n: Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()) for n, fn in fns.items()}
    runs: dict[str, list[Measurement]] = {n: [] for n in fns}
    out: dict[str, dict] = {}
    for r in range(rounds):
        names = [n for n in fns if n not in out]
        for n in (names[r % len(names):] + names[:r % len(names)]) if names else []:
            try:
                runs[n].append(timers[n].blocked_autorange(min_run_time=min_run_time / rounds))
            except Exception as err:  # noqa: BLE001 - recorded, the other methods still run
                out[n] = {"error": f"{type(err).__name__}: {err}"}
    for n in fns:
        if n not in out:
            (m,) = Measurement.merge(runs[n])
            out[n] = {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3,
                      "times_ms": [round(t * 1e3, 5) for t in m.times],
                      "rounds_ms": [round(r.median * 1e3, 5) for r in runs[n]]}
    return {n: out[n] for n in fns}


def _model(mc: ModelCase, cfg: BenchConfig, device: torch.device, train: bool) -> nn.Module:
    set_seed(cfg.seed)
    model = create_model(mc.name, num_classes=cfg.num_classes, image_size=mc.size).train(train)
    return model.to(device, memory_format=torch.channels_last) if device.type == "cuda" else model.to(device)


def _batch(batch: int, mc: ModelCase, cfg: BenchConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images [B, 1, S, S] in [0, 1] and labels [B], seeded by ``cfg.seed`` and ``batch``."""
    g = torch.Generator().manual_seed(cfg.seed + batch)
    x = torch.rand(batch, 1, mc.size, mc.size, generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    return (x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x), y


def make_case(mc: ModelCase, batch: int, cfg: BenchConfig, device: torch.device) -> Case:
    """A seeded model in eval mode and a random batch; bf16 autocast and channels_last on CUDA."""
    x, y = _batch(batch, mc, cfg, device)
    return Case(_model(mc, cfg, device, train=False), MODEL_SPECS[mc.name].target_layer, x, y, device.type == "cuda")


@dataclass
class TrainCase:
    """What one training step needs: a model in train mode, Adam (training's default optimiser), a batch
    ``x`` [B, 1, S, S] / ``y`` [B], random prototypes [C, S, S] in [0, 1], and bf16 autocast on CUDA."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    layer: str
    x: torch.Tensor
    y: torch.Tensor
    prototypes: torch.Tensor
    amp: bool

    @classmethod
    def build(cls, mc: ModelCase, cfg: BenchConfig, device: torch.device) -> "TrainCase":
        model = _model(mc, cfg, device, train=True)
        x, y = _batch(cfg.train_batch, mc, cfg, device)
        protos = torch.rand(cfg.num_classes, mc.size, mc.size, generator=torch.Generator().manual_seed(cfg.seed))
        return cls(model, torch.optim.Adam(model.parameters(), lr=1e-3), MODEL_SPECS[mc.name].target_layer, x, y,
                   protos.to(device), device.type == "cuda")


def train_step(case: TrainCase, objective: Objective) -> dict[str, torch.Tensor]:
    """One optimiser step, as training takes it: ``zero_grad``, :func:`batchcam.losses.objective_loss`,
    ``terms["total"].backward()``, ``step``. Returns the loss terms (detached scalars)."""
    case.optimizer.zero_grad(set_to_none=True)
    terms, _ = objective_loss(objective, case.model, case.x, case.y, layer=case.layer, prototypes=case.prototypes,
                              amp=case.amp)
    terms["total"].backward()
    case.optimizer.step()
    return {k: v.detach() for k, v in terms.items()}


def objectives(cfg: BenchConfig) -> dict[str, Objective]:
    """``{"ce": ..., "ce+proto:l1": ..., ...}``: ``ce`` once, every CAM objective with every distance."""
    make = lambda name, d: Objective.from_name(name, d, num_classes=cfg.num_classes)  # noqa: E731 - λ = 1
    return {"ce": make("ce", "l1"), **{f"{o}:{d}": make(o, d) for o in OBJECTIVES[1:] for d in cfg.distances}}


def peak_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Extra memory at the peak of one call of ``fn`` above what was in use before it (``MEMORY``)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is in use

    def status_kib(key: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))

    base = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    fn()
    return (status_kib("VmHWM") - base) / 1024


def measure_memory(mc: ModelCase, batch: int, cfg: BenchConfig, names: tuple[str, ...]) -> dict[str, float]:
    """``{method: peak MiB}`` of one call of each of ``names`` on a fresh model and batch (``MEMORY``).
    On CPU, run it in a fresh process (:func:`in_fresh_process`): the heap's history moves RSS peaks."""
    device = cfg.torch_device()
    if device.type == "cpu":
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: RSS follows the live tensors
    methods, _ = build_methods(make_case(mc, batch, cfg, device), names)
    for m in methods.values():
        m.run()  # warm-up: lazy initialisation is not the method's memory
    return {n: peak_mib(m.run, device) for n, m in methods.items()}


def in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict:
    """``fn(*args)`` in a newly spawned process with this process's torch thread count (a script that
    runs the benchmark must guard its entry point with ``if __name__ == "__main__":``, as spawn requires)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
        return pool.apply(fn, args)


def bench_cam(mc: ModelCase, batch: int, cfg: BenchConfig, device: torch.device) -> dict:
    """One Grad-CAM configuration: timings, the map check, the loop's graph check, peak memory."""
    case = make_case(mc, batch, cfg, device)
    methods, skipped = build_methods(case, cfg.methods)
    outputs: dict[str, Any] = {}
    fns = {n: (lambda n=n, m=m: outputs.__setitem__(n, m.run())) for n, m in methods.items()}
    entry = {"model": mc.name, "image_size": mc.size, "batch_size": batch, "target_layer": case.layer,
             "timings": time_calls(fns, cfg.rounds, cfg.min_run_time), "skipped_methods": skipped,
             "notes": {n: m.note for n, m in methods.items() if m.note}}
    entry["equality"] = check_maps(case, methods, outputs, cfg.atol)
    outputs.clear()  # the maps; the dict itself stays bound (the timing lambdas close over it)
    del fns, methods
    entry["loop_frees_graph"] = loop_frees_graph(case) if "gradcam_loop" in cfg.methods else None
    if cfg.memory:
        names = tuple(n for n in MEMORY_METHODS if "median_ms" in entry["timings"].get(n, {}))
        try:
            if device.type == "cuda":
                del case
                entry["memory"] = measure_memory(mc, batch, cfg, names)
            else:
                entry["memory"] = in_fresh_process(measure_memory, mc, batch, cfg, names)
        except Exception as err:  # noqa: BLE001 - a failed measurement must not lose the timings
            entry["memory"] = {"error": f"{type(err).__name__}: {err}"}
    return entry


def bench_training(mc: ModelCase, cfg: BenchConfig, device: torch.device) -> dict:
    """ms per training step (:func:`train_step`) of ``ce`` and of every CAM objective × distance;
    ``timings`` keys as in :func:`objectives`."""
    case, objs = TrainCase.build(mc, cfg, device), objectives(cfg)
    timings = time_calls({k: (lambda o=o: train_step(case, o)) for k, o in objs.items()}, cfg.rounds,
                         cfg.min_run_time)
    return {"model": mc.name, "image_size": mc.size, "batch_size": cfg.train_batch, "target_layer": case.layer,
            "optimizer": "Adam(lr=1e-3)", "lambda_proto": 1.0, "lambda_batchcam": 1.0, "timings": timings,
            "prototypes": "random [C, H, W] in [0, 1]"}


def _version(dist: str) -> Optional[str]:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def run_benchmark(cfg: BenchConfig, progress: bool = False) -> dict:
    """Run every configuration of ``cfg`` (Grad-CAM ones first, then the training steps) and return
    the record; writing it is :func:`batchcam.results.write_bench_record`'s job.

    A configuration that would start after ``cfg.budget_s`` seconds is skipped and listed in
    ``skipped`` with the reason. Record keys: ``kind, schema_version, config, provenance,
    environment, methods, compared, cam, training, skipped, summary, wall_s``.
    """
    device, start = cfg.torch_device(), time.perf_counter()
    jobs = [("cam", mc, b) for mc in cfg.models for b in cfg.batch_sizes]
    jobs += [("train", mc, cfg.train_batch) for mc in cfg.train_models]
    record: dict[str, Any] = {
        "kind": "batchcam-bench", "schema_version": SCHEMA_VERSION, "config": cfg.to_dict(),
        "provenance": {**provenance(device), "versions": {d: _version(d) for d in LIBRARIES}},
        "environment": {"device": str(device), "amp": "bf16 autocast" if device.type == "cuda" else None,
                        "channels_last": device.type == "cuda", "cudnn_benchmark": device.type == "cuda",
                        "torch_threads": cfg.threads or torch.get_num_threads(), "timing_method": TIMING,
                        "memory_method": MEMORY["cuda" if device.type == "cuda" else "cpu"] if cfg.memory else None,
                        "load_average": [list(os.getloadavg())]},
        "methods": {n: METHODS[n] for n in cfg.methods}, "compared": COMPARED,
        "cam": [], "training": [], "skipped": []}
    threads, cudnn = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(cfg.threads or threads)
    torch.backends.cudnn.benchmark = cudnn or device.type == "cuda"  # as training does
    try:
        for i, (kind, mc, batch) in enumerate(jobs):
            elapsed = time.perf_counter() - start
            where = {"kind": kind, "model": mc.name, "image_size": mc.size, "batch_size": batch}
            if elapsed > cfg.budget_s:
                record["skipped"].append({**where, "reason": f"the budget of {cfg.budget_s:g} s was spent "
                                          f"({elapsed:.0f} s elapsed); raise --budget-seconds to include it"})
                continue
            if progress:
                print(f"bench [{i + 1}/{len(jobs)}] {kind} {mc} B={batch} ({elapsed:.0f} s)", file=sys.stderr)
            t0 = time.perf_counter()
            entry = bench_cam(mc, batch, cfg, device) if kind == "cam" else bench_training(mc, cfg, device)
            record["cam" if kind == "cam" else "training"].append({**entry, "wall_s": time.perf_counter() - t0})
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn
    record["environment"]["load_average"].append(list(os.getloadavg()))
    eq = [e["equality"]["pass"] for e in record["cam"] if e["equality"]]
    frees = [e["loop_frees_graph"] for e in record["cam"] if e["loop_frees_graph"] is not None]
    record["summary"] = {"maps_equal": all(eq) if eq else None, "loop_frees_graph": all(frees) if frees else None}
    record["wall_s"] = time.perf_counter() - start
    return record

"""Provenance, the environment, and ``run_benchmark`` (writes the JSON record atomically)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .._helpers import atomic_write_json, resolve_device
from ..results import _cpu_name, _version, provenance as run_provenance
from .config import BenchConfig, METHODS, ModelCase, SCHEMA_VERSION
from .timing import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD, _cpu_peak_probe
from .methods import COMPARED
from .cam import MEMORY_METHODS, _in_fresh_process, measure_memory
from .schedule import _Scheduler, _run_job, plan_jobs
from .targets import evaluate_targets


BENCH_DISTRIBUTIONS = ("torch", "torchvision", "timm", "torchmetrics", "numpy", "captum", "grad-cam",
                       "opencv-python-headless", "opencv-python")


def provenance(device: torch.device) -> dict:
    """The run records' provenance (:func:`batchcam.results.provenance`) plus the versions of every
    library the benchmark compares (``versions``)."""
    return {**run_provenance(device), "source": "batchcam.results.provenance",
            "versions": {d: _version(d) for d in BENCH_DISTRIBUTIONS}}


def environment(device: torch.device) -> dict:
    """Device, threads, precision settings and load: what the timings depend on."""
    cuda = device.type == "cuda"
    return {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "amp": "bf16 autocast" if cuda else None, "channels_last": cuda,
        "load_average_start": list(os.getloadavg()),
        "memory_method": CUDA_MEMORY_METHOD if cuda else CPU_MEMORY_METHOD,
        "cpu_peak_rss_available": _cpu_peak_probe()[0] if not cuda else None,
    }


def _record_path(cfg: BenchConfig, device: torch.device, when: datetime) -> Path:
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    return Path(cfg.out) / f"bench-{device.type}-{stamp}{'-quick' if cfg.quick else ''}.json"


@contextlib.contextmanager
def _threads(n: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the duration (nothing when ``n`` is None)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_benchmark(cfg: BenchConfig, write: bool = True, progress: bool = True) -> tuple[dict, Optional[Path]]:
    """Run every job of ``cfg`` and write the record (atomically) under ``cfg.out``.

    Returns:
        ``(record, path)``; ``path`` is None when ``write`` is False.
    """
    with _threads(cfg.threads):
        return _run_benchmark(cfg, write, progress)


def _run_benchmark(cfg: BenchConfig, write: bool, progress: bool) -> tuple[dict, Optional[Path]]:
    device = resolve_device(cfg.device)
    when, sched = datetime.now(timezone.utc), _Scheduler(cfg)
    record: dict[str, Any] = {"kind": "batchcam-bench", "schema_version": SCHEMA_VERSION, "config": asdict(cfg),
                              "provenance": provenance(device), "environment": environment(device), "methods": METHODS,
                              "compared": COMPARED, "cam": [], "training": [], "skipped": []}
    models: dict[str, nn.Module] = {}
    jobs = plan_jobs(cfg)
    with tqdm(jobs, desc="bench", disable=not progress) as bar:
        for job in bar:
            bar.set_postfix_str(f"{job.kind} {job.case.label} B={job.batch}")
            entry, skip = _run_job(job, cfg, device, sched, models)
            if skip is not None:
                record["skipped"].append(skip)
            else:
                record["cam" if job.kind == "cam" else "training"].append(entry)
    if cfg.memory:  # after every timing (see CPU_MEMORY_METHOD)
        for entry in tqdm(record["cam"], desc="memory", disable=not progress):
            mc = ModelCase(entry["model"], entry["image_size"])
            names = [n for n in MEMORY_METHODS if "median_ms" in entry["timings"].get(n, {})]
            if device.type == "cuda":
                entry["memory"] = measure_memory(mc, entry["batch_size"], cfg, names, device,
                                                 models[mc.label])
            else:
                entry["memory"] = _in_fresh_process(measure_memory, mc, entry["batch_size"], cfg, names)
    _sort_entries(record)
    record["environment"]["load_average_end"] = list(os.getloadavg())
    record["wall_s"] = time.perf_counter() - sched.start
    record["targets"] = evaluate_targets(record, cfg)
    record["summary"] = _summary_flags(record)
    path = atomic_write_json(_record_path(cfg, device, when), record) if write else None
    return record, path


def _sort_entries(record: dict) -> None:
    key = lambda e: (e["model"], e["image_size"], e["batch_size"])
    record["cam"].sort(key=key)
    record["training"].sort(key=key)


def _summary_flags(record: dict) -> dict:
    rows = record["targets"]
    met = [r["met"] for r in rows if r["met"] is not None]
    eq = [e["equality"]["pass"] for e in record["cam"] if e["equality"]]
    return {"targets_met": sum(met), "targets_missed": len(met) - sum(met),
            "targets_not_measured": sum(r["met"] is None for r in rows),
            "all_measured_targets_met": all(met) if met else None,
            "maps_equal": all(eq) if eq else None,
            "floor_check_holds": all(e["floor_check"]["holds"] for e in record["cam"]) if record["cam"] else None,
            "gradcam_loop_frees_graph": (all(e["loop_leak_check"]["frees_graph_on_return"] for e in record["cam"])
                                         if record["cam"] else None)}

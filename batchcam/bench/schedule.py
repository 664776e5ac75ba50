"""What to run, in which order, and what to skip (time and memory estimates)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from .config import BenchConfig, CAM_COST_IN_FORWARDS, ModelCase, PEAK_OVER_MEASURED, TRAIN_COST_IN_CE_STEPS
from .timing import _time_calls
from .methods import METHOD_BUILDERS, _forward_method
from .cam import _prepare_model, bench_cam, make_case
from .training import _train_case, _train_variants, bench_training, train_step


@dataclass
class Job:
    kind: str  # "cam" or "train"
    case: ModelCase
    batch: int


def plan_jobs(cfg: BenchConfig) -> list[Job]:
    """Grad-CAM sizes up to the target batch first, then the training steps, then larger batches."""
    cams = [Job("cam", ModelCase.parse(m), b) for m in cfg.models for b in sorted(set(cfg.batch_sizes))]
    trains = [Job("train", ModelCase.parse(m), cfg.train_batch) for m in cfg.train_models]
    return ([j for j in cams if j.batch <= cfg.target_batch] + trains
            + [j for j in cams if j.batch > cfg.target_batch])


@dataclass
class _Scheduler:
    """Estimates each job's duration (and, for Grad-CAM jobs, memory) and decides whether it fits
    ``max_config_s``, ``budget_s`` and the memory available."""

    cfg: BenchConfig
    start: float = field(default_factory=time.perf_counter)
    per_call_s: dict = field(default_factory=dict)  # (label, kind) -> (batch, seconds per round of methods)
    peak_mib: dict = field(default_factory=dict)  # label -> (batch, largest measured peak, MiB)

    def record(self, job: Job, entry: dict) -> None:
        timed = entry["timings"].values() if job.kind == "cam" else entry["steps"]
        per_round = sum(t.get("median_ms", 0.0) for t in timed) / 1e3
        self.per_call_s[(job.case.label, job.kind)] = (job.batch, per_round)
        peaks = [v for v in entry.get("memory", {}).get("peak_mib", {}).values() if v is not None]
        if peaks:
            self.peak_mib[job.case.label] = (job.batch, max(peaks))

    def memory_reason(self, job: Job, device: torch.device) -> Optional[str]:
        """Why a Grad-CAM job would not fit in memory: its largest measured peak, scaled to the batch and
        doubled for pytorch-grad-cam's full backward, against the memory available now."""
        known, free = self.peak_mib.get(job.case.label), _available_mib(device)
        if job.kind != "cam" or known is None or free is None:
            return None
        need = known[1] * job.batch / known[0] * PEAK_OVER_MEASURED
        return f"estimated peak {need:.0f} MiB > 80% of {free:.0f} MiB available" if need > 0.8 * free else None

    def estimate(self, job: Job, probe: Callable[[], float]) -> float:
        """Seconds the job would take: scaled from an earlier batch size, else from one probe call."""
        # + 1 for the memory pass at the end (warm-up and one call of three methods, in a fresh process)
        calls = self.cfg.warmup + self.cfg.reps + (job.kind == "cam" and self.cfg.memory)
        n_fns = len(METHOD_BUILDERS) if job.kind == "cam" else len(_train_variants(self.cfg.distances))
        floor = self.cfg.min_rep_s * self.cfg.reps * n_fns
        known = self.per_call_s.get((job.case.label, job.kind))
        if known is not None:
            return known[1] * job.batch / known[0] * calls + floor
        factor = CAM_COST_IN_FORWARDS if job.kind == "cam" else TRAIN_COST_IN_CE_STEPS * n_fns
        return probe() * factor * calls + floor

    def skip_reason(self, est: float) -> Optional[str]:
        elapsed = time.perf_counter() - self.start
        if est > self.cfg.max_config_s:
            return f"estimated {est:.0f} s > max_config_s {self.cfg.max_config_s:.0f} s"
        if elapsed + est > self.cfg.budget_s:
            return f"estimated {est:.0f} s would end the run after the {self.cfg.budget_s:.0f} s budget " \
                   f"({elapsed:.0f} s used)"
        return None


def _available_mib(device: torch.device) -> Optional[float]:
    """Free memory of the device: CUDA's free memory, or MemAvailable from /proc/meminfo (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    return None


def _probe_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    return _time_calls(fn, device, 1)[0]


def _run_job(job: Job, cfg: BenchConfig, device: torch.device, sched: _Scheduler,
             models: dict[str, nn.Module]) -> tuple[Optional[dict], Optional[dict]]:
    """Run one job, or return why it was skipped: ``(entry, None)`` or ``(None, skip)``."""
    mc = job.case
    if job.kind == "cam":
        if mc.label not in models:
            models[mc.label] = _prepare_model(mc, cfg, device, train=False)
        case = make_case(models[mc.label], mc, job.batch, cfg, device)
        probe = lambda: _probe_seconds(_forward_method(case).run, device)
    else:
        tc = _train_case(mc, cfg, device)
        probe = lambda: _probe_seconds(lambda: train_step(tc, "ce", "l1"), device)
    est, reason = None, sched.memory_reason(job, device)
    if reason is None:
        est = sched.estimate(job, probe)
        reason = sched.skip_reason(est)
    if reason is not None:
        return None, {"kind": job.kind, "model": mc.name, "image_size": mc.size, "batch_size": job.batch,
                      "estimated_s": None if est is None else round(est, 1), "reason": reason}
    load, start = os.getloadavg(), time.perf_counter()
    entry = bench_cam(case, mc, cfg, device) if job.kind == "cam" else bench_training(mc, cfg, device, tc)
    entry.update(wall_s=time.perf_counter() - start, estimated_s=est, load_average_at_start=list(load))
    sched.record(job, entry)
    return entry, None

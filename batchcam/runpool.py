"""K training runs at once on one device, and the timings that calibrate the planner (chapter 7).

A small model on a big GPU waits for the CPU: eager PyTorch spends a few microseconds of CPU time
per op, and a ResNet-18 step at 28 px has about 500 ops for about 2 ms of arithmetic. Running K
runs at once lets one run's kernels fill the GPU while another's Python prepares the next ones.

The K runs are K worker *processes* (``spawn``), not threads or CUDA streams in one process, because
one process cannot run two ``fit`` calls side by side: ``fit`` seeds the global RNG
(``set_seed``) and builds its model from it, toggles the global ``cudnn.benchmark``, and
``clock`` synchronises the whole device; the autograd engine also runs every backward on the GPU
through one thread per device, so threads would still launch their backward kernels one at a
time. Processes share nothing: each run is exactly the run it would be alone (same seed, same
numbers on a CPU; the tests compare them). The cost is a CUDA context (~0.5 GB) and a copy of the
data (uint8, 47 MB for MNIST's training images) per worker, and about 10 s to start the workers.

:class:`RunPool` runs :func:`train_run` in K workers (K = 1: in this process, nothing spawned);
:func:`time_steps` and :func:`time_forward` measure one training step and one forward;
:func:`measure_concurrency` measures K = 1, 2, 4 runs at once (``gpu-run --calibrate``).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .config import NUM_CLASSES, TrainConfig

__all__ = ["RunPool", "train_run", "time_steps", "time_forward", "measure_concurrency", "worker_threads",
           "calibrate", "count_ops", "describe"]

_DATA: dict = {}  # per process: load_data results by data_key, reused by the runs of a session
BARRIER_TIMEOUT_S = 600.0


def worker_threads(k: int) -> int:
    """CPU threads per worker when ``k`` run at once: the cores shared out, at least one (chapter 7)."""
    return max(1, (os.cpu_count() or 1) // max(1, k))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _data_key(config: TrainConfig) -> tuple:
    """What ``load_data`` depends on (the seed only through a training subset)."""
    return (config.dataset, config.n_train, config.n_test, config.seed if config.n_train else None,
            config.n_val, config.data_root, config.permute_labels)


def train_run(config: TrainConfig, root: str, extra: Optional[dict] = None) -> dict:
    """Train ``config`` and write its record into ``root`` (chapter 7), with the top-level fields ``extra``;
    in a worker or in this process.
    Returns ``{"run_id", "files": [record, tensors], "seconds", "accuracy", "dead_fraction"}``. The data
    of a (dataset, subset) is loaded once per process and reused by the next runs."""
    from .runner import fit_and_record
    from .train import load_data

    key = _data_key(config)
    if key not in _DATA:
        _DATA[key] = load_data(config)
    t0 = time.perf_counter()
    run, path = fit_and_record(config, root=Path(root), resume=False, data=_DATA[key], extra=extra)
    tensors = path.parent / json.loads(path.read_text())["tensors"]["file"]
    return {"run_id": config.run_id, "files": [str(path), str(tensors)], "seconds": time.perf_counter() - t0,
            "accuracy": run.evaluation["accuracy"], "dead_fraction": run.evaluation["maps"]["dead_fraction"]}


class RunPool:
    """``k`` worker processes that run functions of this module (chapter 7); ``k = 1`` runs them in this
    process when submitted (the future is done on return). ``threads``: torch threads per worker."""

    def __init__(self, k: int, threads: Optional[int] = None) -> None:
        if k < 1:
            raise ValueError(f"--concurrency must be ≥ 1, got {k}")
        self.k = k
        self._ex = None if k == 1 else cf.ProcessPoolExecutor(
            k, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(threads or worker_threads(k),))

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        """``fn(*args)`` in a worker (``k > 1``) or now, here."""
        if self._ex is not None:
            return self._ex.submit(fn, *args)
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def close(self, cancel: bool = False) -> None:
        """Stop the workers; with ``cancel`` drop what has not started and kill what runs."""
        if self._ex is None:
            return
        if cancel:
            for proc in list(getattr(self._ex, "_processes", {}).values()):  # a run past the budget: stop it
                proc.kill()
        self._ex.shutdown(wait=not cancel, cancel_futures=cancel)

    def __enter__(self) -> "RunPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(cancel=exc[0] is not None)


def describe(device: torch.device) -> dict:
    """Device, driver and library versions (``gpu-run`` prints them first; chapter 7)."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": str(device)}
    for lib in ("torchvision", "timm", "torchmetrics"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            info[lib] = None
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


# --------------------------------------------------------------------------- timings (gpu-run --calibrate)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(model: str, size: int, device: torch.device, train: bool):
    from .models import create_model

    torch.manual_seed(0)
    net = create_model(model, NUM_CLASSES, 1, size).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return net.train(train)


def time_forward(model: str, size: int, device: str, amp: Any, batch: int = 256, seconds: float = 1.0) -> float:
    """Milliseconds per image of ``model``'s forward at ``size`` px, batch ``batch``, no gradients, under
    autocast ``amp`` on CUDA (chapter 7). The median of 5 timed groups after 3 warm-up calls (on a
    CPU, where nothing is autotuned: one group after one call)."""
    from ._helpers import amp_autocast

    dev = torch.device(device)
    net = _setup(model, size, dev, train=False)
    x = torch.rand(batch, 1, size, size, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    warm, groups = (3, 5) if dev.type == "cuda" else (1, 1)
    times = []
    with torch.no_grad(), amp_autocast(dev, amp):
        for i in range(warm + groups):
            _sync(dev)
            t0, n = time.perf_counter(), 0
            while n == 0 or (i >= warm and time.perf_counter() - t0 < seconds / groups):
                net(x)
                n += 1
                if i < warm:
                    break
            _sync(dev)
            times.append((time.perf_counter() - t0) / n)
    return sorted(times[warm:])[groups // 2] * 1e3 / batch


def time_steps(model: str, size: int, batch: int, objective: str, device: str, amp: Any, seconds: float = 2.0,
               barrier: Any = None) -> dict:
    """Training steps of ``model`` at ``size`` px with ``objective`` on random images [batch, 1, S, S]
    for ``seconds`` (at least 2 steps) after 3 warm-up steps (on a CPU 1 and 1), after ``barrier.wait()``
    when given: concurrent runs start together; chapter 7. Returns ``{"steps", "seconds", "step_ms"}``."""
    from .losses import objective_loss

    dev = torch.device(device)
    net = _setup(model, size, dev, train=True)
    config = TrainConfig(model=model, objective=objective, image_size=size, device="cpu").resolved()
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=g).to(dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y, protos = (torch.arange(batch) % NUM_CLASSES).to(dev), torch.rand(NUM_CLASSES, size, size, generator=g).to(dev)
    spec = config.objective_spec()

    def step() -> None:
        terms, _ = objective_loss(spec, net, x, y, layer=config.layer, prototypes=protos, amp=amp)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()

    warm, least = (3, 2) if dev.type == "cuda" else (1, 1)
    for _ in range(warm):
        step()
    _sync(dev)
    if barrier is not None:
        barrier.wait(BARRIER_TIMEOUT_S)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or n < least:
        step()
        n += 1
        if n % 4 == 0:
            _sync(dev)
    _sync(dev)
    elapsed = time.perf_counter() - t0
    return {"steps": n, "seconds": elapsed, "step_ms": elapsed / n * 1e3}


def measure_concurrency(cases: Sequence[dict], device: str, amp: Any, ks: Sequence[int] = (1, 2, 4),
                        seconds: float = 3.0, log: Callable[[str], None] = print) -> dict:
    """Throughput of k concurrent training runs over one, per model: ``{model: {k: speedup}}`` (chapter 7).
    Each case is ``{"model", "image_size", "batch_size", "objective"}``; k workers run
    :func:`time_steps` together (a barrier) and their steps per second are summed. K = 1 runs in a
    worker too, so every k pays the same process overheads."""
    out: dict = {}
    if max(ks) <= 1:
        return {c["model"]: {1: 1.0} for c in cases}
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, RunPool(max(ks)) as pool:
        for case in cases:
            rates = {}
            for k in ks:
                barrier = manager.Barrier(k)
                args = (case["model"], case["image_size"], case["batch_size"], case["objective"], device, amp,
                        seconds, barrier)
                results = [f.result() for f in [pool.submit(time_steps, *args) for _ in range(k)]]
                rates[k] = sum(r["steps"] / r["seconds"] for r in results)
                log(f"concurrency {case['model']}: k = {k}: {rates[k]:.1f} steps/s in all "
                    f"({rates[k] / rates[ks[0]]:.2f} × k = {ks[0]})")
            out[case["model"]] = {k: rates[k] / rates[ks[0]] for k in ks}
    return out


def calibrate(device: torch.device, models: Sequence[str], recipe: str, amp: Any, ks: Sequence[int] = (1, 2, 4),
              seconds: float = 2.0, log: Callable[[str], None] = print) -> Path:
    """Measure the planner's prices on ``device`` and write them as a record (chapter 7): per model of the
    recipe, the forward (ms per image, B = 256), the ce and ce+proto+batchcam training steps at the recipe's
    size and batch, and the speedup of K concurrent runs; ResNet-18 at 28 px always (the planner's device
    factor is its step over the anchor's). ``results/bench/bench-calibration-<device>-<UTC>.json``, with
    ``record_sha256`` and provenance. ``amp``: the autocast mode (False, "bf16", "fp16": the session's rule);
    ``log`` prints progress."""
    from . import plan as planner
    from ._helpers import atomic_write_json
    from .digest import with_hash
    from .provenance import provenance
    from .results import results_root

    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    key, cases = planner.device_key(name, strict=False), []
    shapes = [(m, planner.gpu_grid([0], recipe, [m], ["mnist"])[0].resolved()) for m in models]
    anchor = planner.ANCHORS["cpu" if device.type == "cpu" else "cuda"]
    if not any((c.model, c.image_size, c.batch_size) == (anchor.model, anchor.size, anchor.batch) for _, c in shapes):
        shapes.insert(0, (anchor.model, TrainConfig(model=anchor.model, device="cpu").resolved()))
    for model, c in shapes:
        case = {"model": model, "image_size": c.image_size, "batch_size": c.batch_size, "forward_batch": 256,
                "forward_ms_per_image": time_forward(model, c.image_size, str(device), amp, seconds=seconds / 2),
                "step_ms": {o: time_steps(model, c.image_size, c.batch_size, o, str(device), amp, seconds)["step_ms"]
                            for o in ("ce", "ce+proto+batchcam")}}
        cases.append(case)
        log(f"calibration {model} at {c.image_size} px: {json.dumps(case)}")
    speedup = measure_concurrency([dict(c, objective="ce+proto+batchcam") for c in cases if c["model"] in models],
                                  str(device), amp, ks, seconds, log=log) if len(ks) > 1 else {}
    mean = {k: statistics.mean(s.get(k, 1.0) for s in speedup.values()) for k in ks} if speedup else {1: 1.0}
    best = min(mean)
    for k in sorted(mean):
        best = k if mean[k] > 1.05 * mean[best] else best  # a larger K must gain 5 %
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"kind": "batchcam-calibration", "schema_version": 1, "device_key": key, "device_name": name,
              "amp_dtype": (amp if isinstance(amp, str) else "bf16") if amp else None, "recipe": recipe, "cases": cases,
              "concurrency": {m: {str(k): v for k, v in s.items()} for m, s in speedup.items()},
              "best_k": best, "method": "time_forward / time_steps / measure_concurrency of batchcam.runpool: "
              "random images, AdamW, channels_last and cudnn.benchmark on CUDA; medians (forward), mean step time "
              "over `seconds` after 3 warm-up steps (training); speedup = summed steps/s of k workers over one",
              "seconds": seconds, "provenance": provenance(device), "wall_s": time.perf_counter() - t0}
    path = results_root("bench") / f"{planner.CALIBRATION_PREFIX}{key}-{stamp}.json"
    return atomic_write_json(path, with_hash(record))


def count_ops(model: str, objective: str = "ce") -> int:
    """Non-view ATen ops of one training step of ``model`` with ``objective`` (B = 2, CPU, AdamW with
    ``foreach``); the numbers of :data:`STEP_OPS` (chapter 7). On a GPU each is about one kernel launch."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from .losses import objective_loss
    from .models import MODEL_SPECS, create_model

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += not getattr(func, "is_view", False)
            return func(*args, **(kwargs or {}))

    spec = MODEL_SPECS[model]
    size = max(spec.min_size, 16)
    net = create_model(model, 10, 1, size)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, foreach=True)
    x, y = torch.rand(2, 1, size, size), torch.arange(2)
    loss_spec = TrainConfig(model=model, objective=objective, device="cpu").objective_spec()
    with Count() as counter:
        terms, _ = objective_loss(loss_spec, net, x, y, layer=spec.target_layer, prototypes=torch.rand(10, size, size))
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
    return counter.n

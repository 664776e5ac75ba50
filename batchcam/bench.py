"""Speed benchmark: batch Grad-CAM against the per-image loop, pytorch-grad-cam and Captum, the cost of
the two losses in a training step, and peak memory (chapter 3, "speed"; chapter 5, "cost of the losses").

Everything is measured side by side in one process: the methods of one configuration are timed
round-robin (the order rotates every round), so a change of machine load hits all of them alike and
the ratios stay meaningful on a shared machine. Each timing is the median of ``reps`` repetitions
after warm-up; a repetition of a fast call repeats it until it lasts ``min_rep_s`` (like ``timeit``).

Grad-CAM methods, all on the same batch and the same targets, in eval mode:

- ``forward``: ``model(x)`` under ``torch.no_grad()`` — the floor;
- ``batch_gradcam``: :func:`batchcam.batch_gradcam` (one ``autograd.grad`` call; with
  ``create_graph=False`` the network up to the target layer runs without autograd);
- ``gradcam_loop``: :func:`batchcam.gradcam_loop` (one backward per image);
- ``pytorch_grad_cam``: PyPI ``grad-cam``'s ``GradCAM`` with ``ClassifierOutputTarget``;
- ``captum``: Captum's ``LayerGradCam`` + ``LayerAttribution.interpolate`` (bilinear).

The same run checks that the maps agree (see :func:`comparable_maps` for exactly what is compared).
The optional libraries are imported inside the functions; when one is missing its method is skipped
and the reason recorded. ``python -m batchcam bench`` (or ``python -m batchcam.bench``) writes one
JSON record per run under ``results/bench/``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._helpers import bf16_autocast, atomic_write_json, resolve_device, set_seed, unknown_choice
from .cam import batch_gradcam, batch_gradcam_with_logits, gradcam_loop, normalize_cam, resolve_layer
from .losses import DISTANCES, batchcam_loss, prototype_loss
from .models import MODEL_SPECS, create_model
from .results import _cpu_name, _version
from .results import provenance as run_provenance

__all__ = ["BenchConfig", "quick_config", "run_benchmark", "compare_maps", "comparable_maps", "time_side_by_side",
           "peak_memory_mib", "measure_memory", "floor_check", "loop_leak_check", "evaluate_targets", "format_summary",
           "add_bench_args", "config_from_args", "run_bench_cli", "main", "METHOD_BUILDERS", "METHODS", "OBJECTIVES",
           "TARGETS"]

SCHEMA_VERSION = 1
REFERENCE = "batch_gradcam"
FLOOR = "forward"
METHODS = {
    "forward": "(a) model(x) under torch.no_grad(): the floor",
    "batch_gradcam": "(b) batchcam.batch_gradcam: one forward, one torch.autograd.grad call",
    "gradcam_loop": "(c) batchcam.gradcam_loop: forward hook, one backward per image",
    "pytorch_grad_cam": "(d) pytorch_grad_cam.GradCAM with ClassifierOutputTarget (PyPI grad-cam)",
    "captum": "(e) captum LayerGradCam(relu_attributions=True) + LayerAttribution.interpolate(bilinear)",
}
OBJECTIVES = ("ce", "ce+proto", "ce+batchcam", "ce+proto+batchcam")
DEFAULT_MODELS = ("simplecnn:28", "resnet18:28", "resnet18:112", "convnextv2_tiny:112")
DEFAULT_TRAIN_MODELS = ("simplecnn:28", "resnet18:28", "convnextv2_tiny:112")
# Rough cost of one round of the five methods, in forward passes (the loop and pytorch-grad-cam
# record the whole graph; pytorch-grad-cam back-propagates to the parameters): used to skip sizes.
CAM_COST_IN_FORWARDS = 8.0
TRAIN_COST_IN_CE_STEPS = 1.5
PEAK_OVER_MEASURED = 2.0  # pytorch-grad-cam's peak over the largest measured one (floor, batch, loop)


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ModelCase:
    """A registered model at one input size (``"resnet18:112"``; the size defaults to the paper's)."""

    name: str
    size: int

    @classmethod
    def parse(cls, text: str) -> "ModelCase":
        name, _, size = text.partition(":")
        if name not in MODEL_SPECS:
            raise unknown_choice("model", name, MODEL_SPECS, "Write NAME or NAME:SIZE, e.g. resnet18:112.")
        spec = MODEL_SPECS[name]
        px = int(size) if size else spec.image_size
        if px < spec.min_size:
            raise ValueError(f"{name} needs inputs of at least {spec.min_size} px, got {px}")
        return cls(name, px)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.size}"


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures. Every field is recorded; see :func:`quick_config`."""

    models: tuple[str, ...] = DEFAULT_MODELS  # "name[:size]" for the Grad-CAM timings
    batch_sizes: tuple[int, ...] = (1, 16, 64, 256)
    train_models: tuple[str, ...] = DEFAULT_TRAIN_MODELS  # empty: no training-step benchmark
    train_batch: int = 64
    distances: tuple[str, ...] = DISTANCES
    reps: int = 5  # timed repetitions per method (median reported)
    warmup: int = 1  # untimed calls per method first
    min_rep_s: float = 0.25  # a repetition of a fast call repeats it until it lasts this long (noise on a shared CPU)
    large_batch: int = 256  # from this batch size on, the per-image loop gets loop_reps_large reps
    loop_reps_large: int = 5  # its reps from large_batch on (5: the minimum we report a median of)
    target_batch: int = 64  # batch size at which the speed targets are evaluated
    max_config_s: float = 300.0  # skip a configuration estimated to take longer
    budget_s: float = 900.0  # skip what would end the run after this many seconds
    memory: bool = True
    device: str = "cpu"
    threads: Optional[int] = None  # torch.set_num_threads for the run (None: leave as it is)
    seed: int = 0
    num_classes: int = 10
    lam: float = 1.0  # weight of each CAM loss in the training objective
    atol: float = 1e-5  # tolerance of the map equality check (maps min-max normalised)
    quick: bool = False
    out: str = "results/bench"

    def __post_init__(self) -> None:
        for text in self.models + self.train_models:
            ModelCase.parse(text)
        for d in self.distances:
            if d not in DISTANCES:
                raise unknown_choice("distance", d, DISTANCES)
        if self.reps < 1 or self.warmup < 0 or min(self.batch_sizes, default=1) < 1 or self.train_batch < 2:
            raise ValueError("reps ≥ 1, warmup ≥ 0, batch sizes ≥ 1 and train_batch ≥ 2 are required")


def quick_config(**overrides: Any) -> BenchConfig:
    """A tiny configuration (SimpleCNN, batches of 2 and 8) that runs in seconds; used by the tests."""
    base = dict(models=("simplecnn:28",), batch_sizes=(2, 8), train_models=("simplecnn:28",), train_batch=8,
                reps=5, min_rep_s=0.0, large_batch=8, loop_reps_large=3, target_batch=8, threads=1, quick=True)
    base.update(overrides)
    return BenchConfig(**base)


# --------------------------------------------------------------------------------------------------
# Timing and memory


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
    Slows allocation down (page faults), so it is set only after the timings (it cannot be undone)."""
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


# --------------------------------------------------------------------------------------------------
# The Grad-CAM methods


@dataclass
class Case:
    """One model, input size and batch, ready to be timed."""

    model: nn.Module
    layer_name: str
    x: torch.Tensor
    targets: torch.Tensor
    amp: bool  # bf16 autocast (CUDA only)

    @property
    def layer(self) -> nn.Module:
        return resolve_layer(self.model, self.layer_name)[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])

    def autocast(self) -> ContextManager:
        return bf16_autocast(self.x.device, self.amp)




@dataclass(frozen=True)
class Method:
    """A timed call, and how to turn its output into maps comparable with the reference."""

    run: Callable[[], Any]
    maps: Optional[Callable[[Any], dict[str, torch.Tensor]]] = None  # label -> [B, H, W], min-max normalised
    note: str = ""  # e.g. a precision the method had to keep


class MethodUnavailable(RuntimeError):
    """An optional library is missing: the method is skipped and the reason recorded."""


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation in float64 (all-constant maps give zeros)."""
    return normalize_cam(maps.detach().double().cpu(), "minmax")


def _forward_method(case: Case) -> Method:
    def run() -> torch.Tensor:
        with torch.no_grad(), case.autocast():
            return case.model(case.x)

    return Method(run)


@contextlib.contextmanager
def _layer_outputs(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every output of ``layer`` while the block runs (a forward hook, removed on exit)."""
    outputs: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, inp, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _free_graphs(tensors: Iterable[torch.Tensor]) -> None:
    """Detach each tensor in place, which frees an autograd graph that only a reference cycle keeps alive."""
    for t in tensors:
        with contextlib.suppress(RuntimeError):  # a view cannot be detached in place
            t.detach_()


LOOP_LEAK = ("gradcam_loop's target-layer output (and so its whole forward graph) is still alive after the "
             "call returned: a reference cycle through a tensor hook (the bug fixed in cam._keep_activations by "
             "clearing its store) is back, and every call leaks its graph.")


def _package_method(fn: Callable[..., torch.Tensor], label: str) -> Callable[[Case], Method]:
    """A batchcam function as a method, timed exactly as a user calls it."""
    def build(case: Case) -> Method:
        def run() -> torch.Tensor:
            with case.autocast():
                return fn(case.model, case.x, case.layer_name, case.targets)

        return Method(run, lambda out: {label: _minmax(out)})

    return build


def _pytorch_grad_cam_method(case: Case) -> Method:
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise MethodUnavailable(f"pytorch-grad-cam is not installed ({err}); pip install grad-cam") from None
    layer = case.layer
    targets = [ClassifierOutputTarget(int(t)) for t in case.targets]

    def run() -> tuple:
        with GradCAM(model=case.model, target_layers=[layer]) as cam:
            out = cam(input_tensor=case.x, targets=targets)
            store = cam.activations_and_grads
            return out, store.activations[0], store.gradients[0]

    def maps(result: tuple) -> dict[str, torch.Tensor]:
        out, acts, grads = result
        with GradCAM(model=case.model, target_layers=[layer]) as cam:  # its own weighting and channel sum
            raw = cam.get_cam_image(case.x, layer, targets, acts.float().numpy(), grads.float().numpy())
        raw = F.relu(torch.from_numpy(raw))[:, None]  # its ReLU (np.maximum(cam, 0)), at feature resolution
        upsampled = F.interpolate(raw, size=case.size, mode="bilinear", align_corners=False)[:, 0]
        return {"pytorch_grad_cam": _minmax(upsampled), "pytorch_grad_cam_output": _minmax(torch.from_numpy(out))}

    # pytorch-grad-cam converts activations to NumPy, which has no bfloat16: it always runs in float32.
    return Method(run, maps, note="float32 (NumPy has no bfloat16)" if case.amp else "")


def _captum_method(case: Case) -> Method:
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as err:
        raise MethodUnavailable(f"captum is not installed ({err}); pip install captum") from None
    explainer = LayerGradCam(case.model, case.layer)

    def run() -> torch.Tensor:
        with case.autocast():
            attr = explainer.attribute(case.x, target=case.targets, relu_attributions=True)
            return LayerAttribution.interpolate(attr, case.size, interpolate_mode="bilinear")

    return Method(run, lambda out: {"captum": _minmax(out[:, 0])})


METHOD_BUILDERS: dict[str, Callable[[Case], Method]] = {
    "forward": _forward_method,
    "batch_gradcam": _package_method(batch_gradcam, "batch_gradcam"),
    "gradcam_loop": _package_method(gradcam_loop, "gradcam_loop"),
    "pytorch_grad_cam": _pytorch_grad_cam_method,
    "captum": _captum_method,
}

COMPARED = {
    "reference": "batch_gradcam (normalize='max'), min-max normalised per sample, at input resolution",
    "gradcam_loop": "its output [B, H, W], min-max normalised",
    "pytorch_grad_cam": ("its raw CAM before resizing: ReLU(GradCAM.get_cam_image(...)) from the activations and "
                         "gradients its hooks stored in the timed call, upsampled with torch bilinear "
                         "(align_corners=False), min-max normalised"),
    "pytorch_grad_cam_output": ("its public output (per-image min-max with 1e-7 eps, cv2.resize bilinear, "
                                "min-max again), min-max normalised"),
    "captum": "LayerGradCam(relu_attributions=True) upsampled by LayerAttribution.interpolate(bilinear), min-max",
    "precision": "float32 calls (a separate float32 call per method when the timed calls used bf16 autocast); "
                 "differences computed in float64",
}


def build_methods(case: Case, names: Iterable[str] = METHOD_BUILDERS) -> tuple[dict[str, Method], dict[str, str]]:
    """The available methods for ``case`` and, for the others, why they were skipped."""
    methods, skipped = {}, {}
    for name in names:
        try:
            methods[name] = METHOD_BUILDERS[name](case)
        except MethodUnavailable as err:
            skipped[name] = str(err)
    return methods, skipped


# --------------------------------------------------------------------------------------------------
# Equality of the maps


def compare_maps(maps: dict[str, torch.Tensor], reference: str = REFERENCE, atol: float = 1e-5) -> dict:
    """Max abs difference of every map set in ``maps`` to ``maps[reference]``, and pass flags.

    Args:
        maps: label -> maps [B, H, W], already normalised the same way (min-max per sample).
        reference: the label the others are compared with.
        atol: a set passes when its max abs difference is ≤ ``atol``.
    Returns:
        ``{"reference", "atol", "methods": {label: {"max_abs_diff", "pass"}}, "pass"}``; a set of the
        wrong shape fails with ``max_abs_diff`` None.
    """
    ref = maps[reference].double()
    per = {}
    for label, m in maps.items():
        if label == reference:
            continue
        diff = float((m.double() - ref).abs().max()) if m.shape == ref.shape else None
        per[label] = {"max_abs_diff": diff, "pass": diff is not None and diff <= atol}
    return {"reference": reference, "atol": atol, "methods": per, "pass": all(v["pass"] for v in per.values())}


def comparable_maps(methods: dict[str, Method], outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The comparable maps of every method that has some (what is compared: ``COMPARED``)."""
    maps: dict[str, torch.Tensor] = {}
    for name, method in methods.items():
        if method.maps is not None and name in outputs:
            maps.update(method.maps(outputs[name]))
    return maps


def _check_outputs(case: Case, methods: dict[str, Method], outputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs to compare: the timed ones, or one float32 call per method when timed under autocast."""
    if not case.amp:
        return outputs
    fp32, _ = build_methods(replace(case, amp=False), outputs)
    return {name: m.run() for name, m in fp32.items() if m.maps is not None}


def floor_check(case: Case) -> dict:
    """Whether ``batch_gradcam`` (create_graph=False) runs the network up to the target layer without
    autograd, so that only the head is differentiated (checked on the first two samples)."""
    seen: list[bool] = []
    handle = case.layer.register_forward_pre_hook(lambda mod, inp: seen.append(torch.is_grad_enabled()))
    try:
        batch_gradcam(case.model, case.x[:2], case.layer_name, case.targets[:2])
    finally:
        handle.remove()
    return {"grad_enabled_up_to_target_layer": any(seen), "holds": bool(seen) and not any(seen)}


def loop_leak_check(case: Case) -> dict:
    """Whether ``gradcam_loop`` lets its target layer's output (and so its forward graph) be freed on
    return (checked on the first two samples; see ``LOOP_LEAK``)."""
    with _layer_outputs(case.layer) as outs:
        gradcam_loop(case.model, case.x[:2], case.layer_name, case.targets[:2])
    refs = [weakref.ref(t) for t in outs]
    del outs
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    _free_graphs(alive)
    return {"frees_graph_on_return": not alive, "problem": LOOP_LEAK if alive else None}


# --------------------------------------------------------------------------------------------------
# One Grad-CAM configuration


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


# --------------------------------------------------------------------------------------------------
# Training step


@dataclass
class TrainCase:
    """A model in train mode, its optimiser, a batch and random prototypes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    layer_name: str
    x: torch.Tensor
    y: torch.Tensor
    prototypes: torch.Tensor
    lam: float
    amp: bool


def objective_loss(tc: TrainCase, objective: str, distance: str) -> torch.Tensor:
    """The training loss: ``CE`` alone from a plain forward, or ``CE + λ L_P + λ L_B`` from
    ``batch_gradcam_with_logits(..., create_graph=True)`` (the terms the objective names)."""
    if objective == "ce":
        return F.cross_entropy(tc.model(tc.x), tc.y)
    cam, logits = batch_gradcam_with_logits(tc.model, tc.x, tc.layer_name, tc.y, create_graph=True)
    loss = F.cross_entropy(logits, tc.y)
    if "proto" in objective:
        loss = loss + tc.lam * prototype_loss(cam, tc.prototypes, tc.y, distance)
    if "batchcam" in objective:
        loss = loss + tc.lam * batchcam_loss(cam, tc.y, distance)
    return loss


def train_step(tc: TrainCase, objective: str, distance: str) -> torch.Tensor:
    """One optimiser step: zero_grad, forward (+ maps), loss, backward, step."""
    tc.optimizer.zero_grad(set_to_none=True)
    with bf16_autocast(tc.x.device, tc.amp):
        loss = objective_loss(tc, objective, distance)
    loss.backward()
    tc.optimizer.step()
    return loss.detach()


def _train_case(mc: ModelCase, cfg: BenchConfig, device: torch.device) -> TrainCase:
    model = _prepare_model(mc, cfg, device, train=True)
    amp = device.type == "cuda"
    x, y = _inputs(cfg.train_batch, mc.size, cfg.num_classes, cfg.seed, device, channels_last=amp)
    protos = torch.rand(cfg.num_classes, 1, mc.size, mc.size, generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # TrainConfig's default optimiser
    return TrainCase(model, opt, MODEL_SPECS[mc.name].target_layer, x, y, protos.to(device), cfg.lam, amp)


def _train_variants(distances: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [("ce", None)] + [(obj, d) for obj in OBJECTIVES[1:] for d in distances]


def bench_training(mc: ModelCase, cfg: BenchConfig, device: torch.device, tc: Optional[TrainCase] = None) -> dict:
    """ms per training step of every objective × distance, and the ratio to a ``ce`` step."""
    tc = tc or _train_case(mc, cfg, device)
    variants = _train_variants(cfg.distances)
    fns = {_variant_key(o, d): (lambda o=o, d=d: train_step(tc, o, d or "l1")) for o, d in variants}
    timings, _ = time_side_by_side(fns, device, reps={k: cfg.reps for k in fns}, warmup=cfg.warmup,
                                   min_rep_s=cfg.min_rep_s)
    ce = timings["ce"]["median_ms"]
    steps = [{"objective": o, "distance": d, **timings[_variant_key(o, d)],
              "ratio_to_ce": timings[_variant_key(o, d)]["median_ms"] / ce} for o, d in variants]
    return {"model": mc.name, "image_size": mc.size, "batch_size": cfg.train_batch, "target_layer": tc.layer_name,
            "optimizer": "Adam(lr=1e-3)", "lambda": cfg.lam, "mode": "train",
            "prototypes": "random [C, 1, H, W] in [0, 1]", "steps": steps}


def _variant_key(objective: str, distance: Optional[str]) -> str:
    return objective if distance is None else f"{objective}:{distance}"


# --------------------------------------------------------------------------------------------------
# Scheduling: what to run, in which order, and what to skip


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


# --------------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """One speed or correctness target of the issue."""

    name: str
    description: str
    op: str  # "<=" or ">="
    threshold: float

    def met(self, value: Optional[float]) -> Optional[bool]:
        if value is None:
            return None
        return value <= self.threshold if self.op == "<=" else value >= self.threshold


TARGETS = {
    "batch_vs_forward": Target("batch_vs_forward", "batch_gradcam / forward (no_grad) at the target batch",
                               "<=", 1.05),
    "pytorch_grad_cam_vs_batch": Target("pytorch_grad_cam_vs_batch",
                                        "pytorch_grad_cam / batch_gradcam at the target batch", ">=", 3.0),
    "batch_vs_captum": Target("batch_vs_captum", "batch_gradcam / captum at the target batch", "<=", 1.0),
    "train_overhead": Target("train_overhead", "ce+proto+batchcam step / ce step (SimpleCNN, ResNet-18)",
                             "<=", 1.15),
    "maps_equal": Target("maps_equal", "max abs difference of the min-max normalised maps to batch_gradcam",
                         "<=", 1e-5),
}
TRAIN_TARGET_MODELS = ("simplecnn", "resnet18")


def _target_row(target: Target, value: Optional[float], where: dict, reason: str = "") -> dict:
    row = {"target": target.name, "description": target.description, **where, "value": value, "op": target.op,
           "threshold": target.threshold, "met": target.met(value)}
    if reason:
        row["reason"] = reason
    return row


def _cam_target_rows(entry: Optional[dict], where: dict, reason: str) -> list[dict]:
    ratio = (lambda base, name: (entry or {}).get("ratios", {}).get(base, {}).get(name))
    values = {
        "batch_vs_forward": ratio("to_forward", REFERENCE),
        "pytorch_grad_cam_vs_batch": ratio("to_batch_gradcam", "pytorch_grad_cam"),
        "batch_vs_captum": (1 / ratio("to_batch_gradcam", "captum")) if ratio("to_batch_gradcam", "captum") else None,
    }
    return [_target_row(TARGETS[k], v, where, "" if v is not None else reason or "method not measured")
            for k, v in values.items()]


def evaluate_targets(record: dict, cfg: BenchConfig) -> list[dict]:
    """One row per target and configuration: the measured value, the threshold and whether it is met
    (``met`` None with a ``reason`` when the configuration was not measured)."""
    rows: list[dict] = []
    skipped = {(s["kind"], s["model"], s["image_size"], s["batch_size"]): s["reason"] for s in record["skipped"]}
    cams = {(e["model"], e["image_size"], e["batch_size"]): e for e in record["cam"]}
    for text in cfg.models:
        mc = ModelCase.parse(text)
        key, where = (mc.name, mc.size, cfg.target_batch), {"model": mc.name, "image_size": mc.size,
                                                            "batch_size": cfg.target_batch}
        reason = skipped.get(("cam",) + key, "" if cfg.target_batch in cfg.batch_sizes
                             else f"batch size {cfg.target_batch} not in this run")
        rows += _cam_target_rows(cams.get(key), where, reason)
    for e in record["cam"]:
        eq = e["equality"] or {}
        diffs = [v["max_abs_diff"] for v in eq.get("methods", {}).values()]
        value = None if not diffs or None in diffs else max(diffs)
        row = _target_row(replace(TARGETS["maps_equal"], threshold=cfg.atol), value,
                          {"model": e["model"], "image_size": e["image_size"], "batch_size": e["batch_size"]},
                          "" if value is not None else "no comparable maps (or a shape mismatch)")
        row["met"] = bool(eq.get("pass")) if eq else None
        rows.append(row)
    rows += _train_target_rows(record, cfg)
    return rows


def _train_target_rows(record: dict, cfg: BenchConfig) -> list[dict]:
    rows = []
    trains = {(e["model"], e["image_size"]): e for e in record["training"]}
    skipped = {(s["model"], s["image_size"]): s["reason"] for s in record["skipped"] if s["kind"] == "train"}
    for text in cfg.train_models:
        mc = ModelCase.parse(text)
        if mc.name not in TRAIN_TARGET_MODELS:
            continue
        entry = trains.get((mc.name, mc.size))
        for d in cfg.distances:
            where = {"model": mc.name, "image_size": mc.size, "batch_size": cfg.train_batch, "distance": d}
            step = next((s for s in (entry or {}).get("steps", [])
                         if s["objective"] == "ce+proto+batchcam" and s["distance"] == d), None)
            rows.append(_target_row(TARGETS["train_overhead"], step and step["ratio_to_ce"], where,
                                    "" if step else skipped.get((mc.name, mc.size), "not measured")))
    return rows


# --------------------------------------------------------------------------------------------------
# Provenance and the record


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


# --------------------------------------------------------------------------------------------------
# Report and CLI


def _fmt(value: Optional[float], spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_summary(record: dict) -> str:
    """A compact plain-text table of the ratios, the training overheads and the targets."""
    lines = ["model:size         B   fwd ms  batch/fwd loop/batch pgc/batch captum/batch  max|Δ| maps"]
    for e in record["cam"]:
        rf, rb = e["ratios"]["to_forward"], e["ratios"]["to_batch_gradcam"]
        eq = e["equality"] or {}
        diffs = [v["max_abs_diff"] for v in eq.get("methods", {}).values() if v["max_abs_diff"] is not None]
        lines.append(f"{e['model'] + ':' + str(e['image_size']):<16} {e['batch_size']:>4} "
                     f"{_fmt(e['timings'].get(FLOOR, {}).get('median_ms'), '8.1f')} "
                     f"{_fmt(rf.get(REFERENCE), '9.3f')} {_fmt(rb.get('gradcam_loop'), '10.2f')} "
                     f"{_fmt(rb.get('pytorch_grad_cam'), '9.2f')} {_fmt(rb.get('captum'), '12.2f')} "
                     f"{_fmt(max(diffs) if diffs else None, '7.1e')} {'ok' if eq.get('pass') else 'FAIL'}")
    for e in record["training"]:
        ce = next(s for s in e["steps"] if s["objective"] == "ce")
        parts = [f"{s['objective']}:{s['distance']} {s['ratio_to_ce']:.2f}" for s in e["steps"] if s["distance"]]
        lines.append(f"train {e['model']}:{e['image_size']} B={e['batch_size']} ce {ce['median_ms']:.1f} ms | "
                     + ", ".join(parts))
    for s in record["skipped"]:
        lines.append(f"skipped {s['kind']} {s['model']}:{s['image_size']} B={s['batch_size']}: {s['reason']}")
    for r in record["targets"]:
        where = f"{r['model']}:{r['image_size']} B={r['batch_size']}" + (f" {r['distance']}" if "distance" in r else "")
        verdict = {True: "met", False: "MISSED", None: "not measured"}[r["met"]]
        lines.append(f"target {r['target']:<26} {where:<28} {_fmt(r['value'], '.3g'):>8} {r['op']} "
                     f"{r['threshold']:g}: {verdict}" + (f" ({r['reason']})" if r["met"] is None else ""))
    return "\n".join(lines)


def add_bench_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``bench`` options to ``parser`` (unset options take the defaults of the chosen config)."""
    parser.add_argument("--models", nargs="+", metavar="NAME[:SIZE]",
                        help=f"models for the Grad-CAM timings (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--batch-sizes", nargs="+", type=int, metavar="B", help="default: 1 16 64 256")
    parser.add_argument("--reps", type=int, metavar="N", help="timed repetitions per method (default 5)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                        help="on CUDA, bf16 autocast and channels_last are used (and recorded)")
    parser.add_argument("--quick", action="store_true", help="tiny configuration that runs in seconds")
    parser.add_argument("--out", default="results/bench", help="folder of the JSON record (default results/bench)")
    parser.add_argument("--train-models", nargs="*", metavar="NAME[:SIZE]",
                        help="models for the training-step timings (default: those of --models, or "
                             f"{' '.join(DEFAULT_TRAIN_MODELS)}); give none to skip")
    parser.add_argument("--train-batch", type=int, metavar="B", help="training batch size (default 64)")
    parser.add_argument("--distances", nargs="+", choices=DISTANCES, help="default: l1 l2 ssim")
    parser.add_argument("--max-config-seconds", type=float, dest="max_config_s",
                        help="skip a configuration estimated to take longer (default 300)")
    parser.add_argument("--budget-seconds", type=float, dest="budget_s",
                        help="skip configurations that would end the run later than this (default 900)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads for the run (default: as is)")
    parser.add_argument("--seed", type=int)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the parsed options describe."""
    overrides = {k: getattr(args, k, None)
                 for k in ("reps", "train_batch", "max_config_s", "budget_s", "seed", "threads")}
    overrides.update(models=args.models, batch_sizes=args.batch_sizes, distances=args.distances,
                     train_models=args.train_models)
    if args.models is not None and args.train_models is None:
        overrides["train_models"] = args.models
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    overrides.update(device=args.device, out=args.out, memory=not args.no_memory)
    return quick_config(**overrides) if args.quick else BenchConfig(**overrides)


def run_bench_cli(args: argparse.Namespace) -> int:
    """Run the benchmark the options describe, print the summary and the record's path.

    Returns 0, or 1 when the maps of the methods disagree (the equality check failed).
    """
    record, path = run_benchmark(config_from_args(args))
    print(format_summary(record))
    print(f"record: {path}")
    return 1 if record["summary"]["maps_equal"] is False else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m batchcam.bench`` (the same as ``python -m batchcam bench``)."""
    parser = add_bench_args(argparse.ArgumentParser(prog="python -m batchcam bench", description=__doc__.split("\n")[0]))
    return run_bench_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

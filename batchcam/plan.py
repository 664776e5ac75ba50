"""The GPU planner and its cost model (chapter 7, "run it yourself").

``python -m batchcam gpu-run --plan [--budget-s S] [--device-name NAME]`` lists the pending runs of the
GPU grid (the ResNet-18 and ConvNeXt-V2 cells of :func:`batchcam.grid.paper_grid`, at the recipe of
:data:`GPU_RECIPES`, seeds 0-2 before any seed 3) in priority order, each with its estimated seconds,
the running total, and the command (a session of ``budget_s``) it falls into. Nothing here needs a GPU.

The cost model counts what a run does (training steps, the first run's warm-up, the evaluations after
each epoch and at the end, the per-image loop, the faithfulness scores) and prices each part from a
measured run, the anchor (:data:`ANCHORS`: ResNet-18 on an H200, from its run records), scaled to other
models and sizes by FLOPs or op counts (:func:`scale`) and to the device by the newest calibration
record of that device (``gpu-run --calibrate``, :mod:`batchcam.runpool`: measured steps and K
concurrent runs) or, without one, by a spec-sheet ratio (:data:`DEVICES`; the plan says
"extrapolated"). The benchmark record (inference at 112 px) is shown beside it: training runs at an
eighth of its throughput, so it cannot price runs by itself. Finished GPU run records of the same
device correct the estimate per model (measured / estimated), and so does every finished run of a
session. Every assumption is a named constant with its reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from .config import TrainConfig
from .data import DATASETS
from .grid import paper_grid
from .results import is_complete, results_root

__all__ = ["GPU_MODELS", "GPU_RECIPES", "DEFAULT_RECIPE", "DEVICES", "Device", "device_key", "amp_dtype",
           "amp_overrides",
           "gpu_grid", "CostModel", "cost_model", "plan", "format_plan", "flops", "STEP_OPS",
           "COMMAND_BUDGET_S", "session_overhead_s", "record_bytes", "latest_calibration", "CALIBRATION_PREFIX"]

GPU_MODELS = ("resnet18", "convnextv2_tiny")
#: The recipes of the GPU rows: per model, the ``TrainConfig`` fields that override ``MODEL_DEFAULTS``.
#: ``paper``: the grid's own (ResNet-18 at 28 px, ConvNeXt-V2 at 112 px, 3 epochs, all 60 000 images,
#: faithfulness on 500 test images). ``gpu`` (the default): the same epochs on a 20 000-image training
#: subset (drawn per seed, as chapter 9's decoy verdict grid), faithfulness on 100 test images, and
#: ConvNeXt-V2 at 96 px, which keeps 112 px's 3 × 3 Grad-CAM grid (stride 32: 96 / 32 = 3, 112 / 32 =
#: 3.5 → 3) at 77 % of its FLOPs. Why and what it costs: docs/colab_gpu.md; ``gpu-run --plan`` prices both.
GPU_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"resnet18": {}, "convnextv2_tiny": {}},
    "gpu": {"resnet18": dict(n_train=20_000, eval_faithfulness_samples=100),
            "convnextv2_tiny": dict(image_size=96, n_train=20_000, eval_faithfulness_samples=100)},
}
DEFAULT_RECIPE = "gpu"
#: The lent machine's limit per command (600 s) less a minute for start-up and the archive's return.
COMMAND_BUDGET_S = 540.0
CALIBRATION_PREFIX = "bench-calibration-"  # bench-*.json: unpack accepts it and checks its record_sha256


@dataclasses.dataclass(frozen=True)
class Device:
    """One kind of device (chapter 7): ``speed`` is its throughput under AMP relative to the H200 of the
    anchor runs, ``bf16`` whether it has bf16 natively, ``why`` where the number comes from."""

    name: str
    speed: Optional[float]
    bf16: bool
    why: str


#: The devices the planner knows, keyed by :func:`device_key`. Spec-sheet ratios to the H200 (989 dense
#: bf16 TFLOP/s, 4.8 TB/s); convolutions on 28-112 px images are partly memory-bound, so both count.
DEVICES: dict[str, Device] = {
    "h200": Device("H200", 1.0, True, "the benchmark record's GPU"),
    # SXM: the H200's compute, 70 % of its bandwidth; PCIe: 76 % of the compute, 42 % of the bandwidth
    "h100": Device("H100", 0.75, True, "H100 = H200 × 0.75 (by spec: SXM 0.7-1.0, PCIe 0.42-0.76)"),
    "a100": Device("A100", 0.4, True, "A100 = H200 × 0.4 (312 vs 989 TFLOP/s, 2.0 vs 4.8 TB/s)"),
    "l4": Device("L4", 0.1, True, "L4 = H200 × 0.1 (121 TFLOP/s, 0.3 TB/s)"),
    # Colab's T4: 65 fp16 TFLOP/s and 0.32 TB/s (both 1/15 of the H200), no bf16
    "t4": Device("T4", 0.065, False, "T4 = H200 × 0.065 (fp16: 65 vs 989 TFLOP/s, 0.32 vs 4.8 TB/s)"),
    "gpu": Device("other GPU", 0.3, True, "another GPU = H200 × 0.3 (assumed; calibrate it)"),
    "cpu": Device("CPU", None, False, "the CPU benchmark record"),
}

# --------------------------------------------------------------------------- assumptions of the cost model


@dataclasses.dataclass(frozen=True)
class Anchor:
    """What one run's parts cost on one device, measured (chapter 7): seconds per training step of
    ``model`` at ``size`` px and ``batch`` (ce), the first run's warm-up, and per image: evaluation with
    maps, faithfulness (trained and untrained model) and the per-image loop. ``source`` names the records."""

    device: str
    model: str
    size: int
    batch: int
    step_s: float
    warmup_s: float
    eval_s: float
    faith_s: float
    faith_untrained_s: float
    loop_s: float
    source: str


#: The measured anchors. CUDA: the H200 run records of commit 37ea4c8 (``git show 37ea4c8``; removed
#: from results/ in cec57a1 for their git metadata, their timings stand): ResNet-18 at 28 px, B = 128,
#: ce, all 60 000 MNIST images, 3 epochs, bf16, torch 2.11. Epochs of 13.36, 4.98 and 4.85 s (469
#: steps and 50 BatchNorm batches each: 10.4 ms a step, 8.4 s of warm-up in the first); evaluations
#: of 10 000 test images 0.26-0.35 s; the loop 0.0997 s for 256 images; the run 50.5 s, so 23 s for
#: faithfulness on 500 images (46 ms each); the untrained model's run 5.4 s (about 8 ms an image).
#: CPU: results/runs/mnist-simplecnn-ce-l1-s28-e2-seed2-ntr10000-nte2000-cpu-c6d1bd68.json (one thread).
ANCHORS = {
    "cuda": Anchor("NVIDIA H200", "resnet18", 28, 128, 10.4e-3, 8.4, 30e-6, 46e-3, 8e-3, 0.39e-3,
                   "the H200 run records of commit 37ea4c8 (ResNet-18, 28 px, ce, 3 epochs, all data)"),
    "cpu": Anchor("cpu", "simplecnn", 28, 128, 0.63, 0.0, 1.9e-3, 0.49, 0.49, 5.9e-3,
                  "results/runs/mnist-simplecnn-ce-l1-s28-e2-seed2-ntr10000-nte2000-cpu-c6d1bd68.json"),
}
#: Both anchors scored faithfulness with 5 map kinds and no ROAD; today's adds blur deletion/insertion
#: for 2 kinds (7 runs instead of 5) and ROAD (about a fifth more): × 1.6.
EXTENDED_FAITHFULNESS = 1.6
#: A CAM objective's step over a ce step (the double backprop through the maps), where no calibration
#: measured it: the CPU benchmark record's ResNet-18 steps give 0.97-1.21 (l1); we take the top.
CAM_STEP_RATIO = 1.2
#: Throughput per FLOP relative to ResNet-18. ConvNeXt-V2's depthwise 7×7 convolutions, LayerNorms and
#: GRN are memory-bound and mostly outside the FLOP count (convolutions and matmuls); SimpleCNN's 32-64
#: channels fill a GPU badly.
MODEL_EFFICIENCY = {"resnet18": 1.0, "convnextv2_tiny": 0.5, "simplecnn": 0.25}
#: Eager PyTorch ops (kernels; views left out) counted with :func:`batchcam.runpool.count_ops` (AdamW
#: with ``foreach``, as on CUDA): (ce training step, CAM training step, forward, batch Grad-CAM in eval
#: mode, one image of the per-image loop). On a GPU a small model waits for the CPU to launch them.
STEP_OPS = {"simplecnn": (114, 193, 19, 49, 51), "resnet18": (442, 521, 87, 117, 119),
            "convnextv2_tiny": (1685, 1833, 245, 276, 278)}
#: Until finished runs of the device correct the model, estimates are multiplied by this: what the model
#: leaves out (other image sizes, Python between ops, a run's files, the spread of the anchors).
PLAN_MARGIN = 1.25
RUN_OVERHEAD_S = 2.0  # per run: model and optimiser, prototypes, the record's files
#: Per command: Python, torch and CUDA start, data loading; the smoke test; the benchmark step
#: (gpu-short: "about a minute on an H200"); the calibration; starting K - 1 worker processes.
STARTUP_S, SMOKE_S, BENCH_S, CALIBRATE_S, WORKERS_S = 15.0, 30.0, 70.0, 60.0, 15.0
#: FLOPs of one forward (GFLOP, torch.utils.flop_counter on the meta device; convolutions and matmuls).
FLOPS_G = {("simplecnn", 28): 0.0366, ("resnet18", 28): 0.9116, ("resnet18", 112): 13.579,
           ("convnextv2_tiny", 112): 2.1222, ("convnextv2_tiny", 96): 1.6329, ("convnextv2_tiny", 64): 0.7258}


def device_key(name: str, strict: bool = True) -> str:
    """``"NVIDIA H100 80GB HBM3"`` → ``"h100"``, ``"Tesla T4"`` → ``"t4"``, ``"cpu"`` (chapter 7). Any other
    name: ValueError naming the known devices, or ``"gpu"`` (another GPU) when not ``strict``."""
    low = str(name).lower().replace("-", " ")
    for key in DEVICES:
        if key != "gpu" and re.search(rf"(^|[^a-z0-9]){key}($|[^a-z0-9])", low):
            return key
    if "xeon" in low or "epyc" in low or "processor" in low:
        return "cpu"
    if not strict:
        return "gpu"
    known = ", ".join(d.name for k, d in DEVICES.items() if k != "gpu")
    raise ValueError(f"unknown device {name!r}; the planner knows {known} (or calibrate it: gpu-run --calibrate)")


def amp_dtype(device: Any) -> Optional[str]:
    """The autocast dtype of training on ``device`` (chapter 7): ``"bf16"`` on a CUDA device with native
    bf16 (``torch.cuda.is_bf16_supported(including_emulation=False)``), ``"fp16"`` (with a GradScaler)
    on an older one (a T4), None on a CPU. ``device`` is a ``torch.device`` or a :data:`DEVICES` key."""
    import torch

    if isinstance(device, str):
        return None if device == "cpu" else ("bf16" if DEVICES[device].bf16 else "fp16")
    if device.type != "cuda":
        return None
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.5 has no including_emulation; sm 8.0 and newer have bf16
        native = torch.cuda.get_device_capability(device)[0] >= 8
    return "bf16" if native else "fp16"


def amp_overrides(dtype: str | None) -> tuple[dict, str]:
    """The ``TrainConfig`` fields of the autocast rule for ``dtype`` (:func:`amp_dtype`; chapter 7),
    and a note: bf16 where the GPU has it natively, else fp16 with a GradScaler (``amp_dtype="fp16"``;
    ``batchcam.loop`` scales each backward), nothing on a CPU."""
    if dtype == "bf16":
        return {"amp": True}, "bf16 autocast"
    if dtype == "fp16":
        return {"amp": True, "amp_dtype": "fp16"}, "fp16 autocast + GradScaler"
    return {}, "fp32 (CPU)"


@functools.lru_cache(maxsize=None)
def flops(model: str, size: int) -> float:
    """GFLOP of one forward of ``model`` on a [1, 1, size, size] image (chapter 7): :data:`FLOPS_G`, else
    counted with ``torch.utils.flop_counter`` on the meta device."""
    if (model, size) in FLOPS_G:
        return FLOPS_G[(model, size)]
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models import create_model

    with torch.device("meta"):
        net, x = create_model(model, 10, 1, size), torch.empty(1, 1, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 1e9


def gpu_grid(seeds: Sequence[int] = tuple(range(10)), recipe: str = DEFAULT_RECIPE,
             models: Sequence[str] = GPU_MODELS, datasets: Sequence[str] = DATASETS,
             **overrides: Any) -> list[TrainConfig]:
    """The GPU rows of the paper grid in priority order (chapter 7): seed → model → dataset → objective,
    each model at its :data:`GPU_RECIPES` fields (and ``overrides``), the untrained model (``epochs=0``)
    for seeds 0-2. ``recipe`` names the recipe; ValueError for an unknown one."""
    if recipe not in GPU_RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid recipes: {', '.join(map(repr, GPU_RECIPES))}")
    configs = []
    for seed in seeds:
        for model in models:
            fields = {**GPU_RECIPES[recipe].get(model, {}), **{k: v for k, v in overrides.items() if v is not None}}
            configs += paper_grid([seed], datasets, [model], random_baseline=seed < 3, **fields)
    return configs


# --------------------------------------------------------------------------- records the model reads


def _newest(paths: list[Path]) -> Optional[Path]:
    return max(paths, key=lambda p: p.name.rsplit("-", 1)[-1]) if paths else None


def latest_calibration(key: str, root: Optional[Path] = None) -> Optional[tuple[Path, dict]]:
    """The newest calibration record of device ``key`` in ``root`` (default ``results/bench``), with its
    path, or None (chapter 7)."""
    root = Path(root) if root is not None else results_root("bench")
    found = [p for p in root.glob(f"*calibration-{key}-*.json")
             if p.name.startswith(("calibration-", CALIBRATION_PREFIX))]
    path = _newest(found)
    return (path, json.loads(path.read_text())) if path else None


def _bench(device_type: str, root: Path) -> Optional[tuple[Path, dict]]:
    """The newest benchmark record of ``device_type`` whose Grad-CAM timings include a forward."""
    paths = sorted(root.glob(f"bench-{device_type}-*.json"), key=lambda p: p.name, reverse=True)
    for path in paths:
        record = json.loads(path.read_text())
        if any("forward" in c.get("timings", {}) for c in record.get("cam", [])):
            return path, record
    return None


def scale(model: str, size: int, part: str, device: str = "cuda") -> float:
    """Cost of ``model`` at ``size`` px over ResNet-18 at 28 px for ``part`` (``"train"`` or ``"infer"``), chapter 7.
    On a GPU the larger of two hypotheses: bound by arithmetic (FLOPs ratio over :data:`MODEL_EFFICIENCY`)
    or by launches (ops ratio, :data:`STEP_OPS`). For ConvNeXt-V2 at 96 px both give about 3.5. On a CPU: FLOPs."""
    flop = flops(model, size) / flops("resnet18", 28)
    if device == "cpu":
        return flop
    i = 1 if part == "train" else 2
    return max(flop / MODEL_EFFICIENCY.get(model, 1.0), STEP_OPS[model][i] / STEP_OPS["resnet18"][i])


@dataclasses.dataclass
class CostModel:
    """Prices of the parts of a run on one device (chapter 7); :meth:`run_s` estimates a run in seconds.

    ``anchor``: the measured run (:data:`ANCHORS`), priced on this device × ``factor``; other models and
    sizes by :func:`scale`. ``step_s[(model, size, batch, cam)]``: training steps a calibration measured.
    ``speedup[model][k]``: throughput of k concurrent runs over one. ``correction[model]``: measured /
    estimated seconds of finished runs (replaces :data:`PLAN_MARGIN`). ``faith_s[model]``: measured."""

    key: str
    source: str
    anchor: Anchor
    factor: float
    step_s: dict = dataclasses.field(default_factory=dict)
    faith_s: dict = dataclasses.field(default_factory=dict)
    speedup: dict = dataclasses.field(default_factory=dict)
    correction: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)

    def _rel(self, model: str, size: int, part: str) -> float:
        a = self.anchor
        return self.factor * scale(model, size, part, self.key) / scale(a.model, a.size, part, self.key)

    def step(self, model: str, size: int, batch: int, cam: bool) -> float:
        """Seconds of one training step (measured, else the anchor's scaled; ∝ batch)."""
        if (model, size, batch, cam) in self.step_s:
            return self.step_s[(model, size, batch, cam)]
        ratio = CAM_STEP_RATIO if cam else 1.0
        return self.anchor.step_s * self._rel(model, size, "train") * ratio * batch / self.anchor.batch

    def run_s(self, config: TrainConfig, k: int = 1, corrected: bool = True, warm: bool = True) -> dict[str, float]:
        """Seconds of each part of ``config``'s run and ``"total"``: wall seconds per run at ``k`` concurrent
        runs (``single × k / speedup``), × the model's correction (measured / estimated) where finished runs
        gave one, else × :data:`PLAN_MARGIN` (``corrected=False``: always the margin). ``warm=False`` adds
        the warm-up of the first run of a model in a process."""
        c, a = config.resolved(), self.anchor
        m, s, b = c.model, c.image_size, c.batch_size
        infer = self._rel(m, s, "infer")
        n_train, n_test = c.n_train or 60_000 - c.n_val, c.n_test or 10_000
        per_faith = self.faith_s.get(m) or (a.faith_s if c.epochs else a.faith_untrained_s) * infer
        parts = {"train": c.epochs * (n_train // b) * self.step(m, s, b, c.objective_spec().needs_cam),
                 "warmup": 0.0 if warm or not c.epochs else a.warmup_s * self._rel(m, s, "train"),
                 "eval": (c.epochs * (c.n_val or n_test) + n_test) * a.eval_s * infer,
                 "loop": c.eval_cam_loop_samples * a.loop_s * infer,
                 "faithfulness": c.eval_faithfulness_samples * per_faith * EXTENDED_FAITHFULNESS,
                 "overhead": RUN_OVERHEAD_S}
        factor = self.correction[m] if corrected and m in self.correction else PLAN_MARGIN
        parts["total"] = sum(parts.values()) * factor * k / self.speedup.get(m, {}).get(k, 1.0)
        return parts


def cost_model(device_name: str, root: Optional[Path] = None, runs: Optional[Path] = None,
               strict: bool = True) -> CostModel:
    """The cost model of ``device_name`` (chapter 7): the measured anchor run (:data:`ANCHORS`) priced on this
    device by its newest calibration record (its ResNet-18 step over the anchor's), else by the spec ratio
    of :data:`DEVICES` ("extrapolated"); corrected by finished run records of the same device. ``strict``:
    see :func:`device_key`."""
    key = device_key(device_name, strict)
    dev, root = DEVICES[key], Path(root) if root is not None else results_root("bench")
    anchor = ANCHORS["cpu" if key == "cpu" else "cuda"]
    found = latest_calibration(key, root)
    if found:
        path, cal = found
        model = CostModel(key, f"calibration {path.name} ({cal.get('device_name')}, {cal.get('amp_dtype') or 'fp32'})",
                          anchor, 1.0)
        for c in cal["cases"]:
            for objective, ms in c.get("step_ms", {}).items():
                model.step_s[(c["model"], c["image_size"], c["batch_size"], objective != "ce")] = ms / 1e3
            if c.get("faith_ms_per_image"):
                model.faith_s[c["model"]] = c["faith_ms_per_image"] / 1e3 / EXTENDED_FAITHFULNESS
        ref = model.step_s.get((anchor.model, anchor.size, anchor.batch, False))
        model.factor = ref / anchor.step_s if ref else 1.0 / dev.speed
        model.notes.append(f"device factor {model.factor:.2f} = " + (
            f"its ResNet-18 step {ref * 1e3:.1f} ms / the anchor's {anchor.step_s * 1e3:.1f} ms" if ref
            else f"1 / {dev.speed:g} (spec)"))
        model.speedup = {m: {int(k): v for k, v in s.items()} for m, s in cal.get("concurrency", {}).items()}
    else:
        factor = 1.0 if key == "cpu" else DEVICES[device_key(anchor.device)].speed / dev.speed
        model = CostModel(key, f"extrapolated from {anchor.source}" + ("" if key in ("cpu", "h200") else
                                                                        f"; {dev.why}"), anchor, factor)
        model.notes.append(f"anchor: {anchor.step_s * 1e3:.1f} ms per ResNet-18 step (B = {anchor.batch}, "
                           f"{anchor.size} px), {anchor.faith_s * 1e3:.0f} ms per faithfulness image")
    model.notes.append(f"other models and sizes by FLOPs (ConvNeXt-V2 at efficiency "
                       f"{MODEL_EFFICIENCY['convnextv2_tiny']:g}) or op count, whichever is larger; CAM step × "
                       f"{CAM_STEP_RATIO:g}; faithfulness × {EXTENDED_FAITHFULNESS:g} (blur and ROAD since the anchor)")
    bench = _bench_note(key, root, model)
    if bench:
        model.notes.append(bench)
    model.correction = _corrections(model, runs)
    return model


def _bench_note(key: str, root: Path, model: CostModel) -> Optional[str]:
    """What the benchmark record's inference throughput alone would predict for the anchor's step."""
    found = _bench("cpu" if key == "cpu" else "cuda", root)
    if found is None or key == "cpu":
        return None
    path, record = found
    case = max(record["cam"], key=lambda c: (c["model"] == "resnet18", c["batch_size"] * c["image_size"] ** 2))
    if case["model"] != "resnet18":
        return None
    fwd = case["timings"]["forward"]["median_ms"] / case["batch_size"] * flops("resnet18", 28) / \
        flops("resnet18", case["image_size"])
    a = model.anchor
    return (f"{path.name}: forward {case['timings']['forward']['median_ms']:.2f} ms for {case['batch_size']} images at "
            f"{case['image_size']} px; 3 forwards of {a.batch} at {a.size} px would be {3 * a.batch * fwd:.1f} ms, the "
            f"measured step is {a.step_s * 1e3:.1f} ms: training runs at 1/{a.step_s * 1e3 / (3 * a.batch * fwd):.0f} "
            "of inference throughput, so the plan prices runs from run records, not from the benchmark")


def _corrections(model: CostModel, runs: Optional[Path]) -> dict[str, float]:
    """Median of measured / estimated seconds per model over the finished run records of the device."""
    ratios: dict[str, list[float]] = {}
    root = Path(runs) if runs is not None else results_root("runs")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for path in root.glob("*-cuda-*.json") if model.key != "cpu" else ():
        try:
            rec = json.loads(path.read_text())
            if device_key(rec["provenance"].get("device_name", ""), strict=False) != model.key:
                continue
            config = TrainConfig(**{k: v for k, v in rec["config"].items() if k in fields and k != "device"})
            base = model.run_s(config, corrected=False)["total"] / PLAN_MARGIN
            ratios.setdefault(config.model, []).append(rec["timings"]["session_wall_s"] / base)
        except (ValueError, KeyError, TypeError):
            continue
    if ratios:
        model.notes.append("corrected by finished runs: " + ", ".join(
            f"{m} × {statistics.median(r):.2f} ({len(r)} runs)" for m, r in sorted(ratios.items())))
    return {m: statistics.median(r) for m, r in ratios.items()}


# --------------------------------------------------------------------------- the plan


def record_bytes(config: TrainConfig) -> int:
    """An upper bound of a run's files (chapter 7): three [10, S, S] float32 maps and the JSON."""
    return 3 * 10 * config.resolved().image_size ** 2 * 4 + 200_000


def session_overhead_s(bench: bool, calibrate: bool, k: int) -> float:
    """Seconds of a command that train nothing (chapter 7): start-up, smoke test, benchmark, calibration, workers."""
    return STARTUP_S + SMOKE_S + BENCH_S * bench + CALIBRATE_S * calibrate + WORKERS_S * (k > 1)


def plan(configs: Sequence[TrainConfig], model: CostModel, budget_s: float, first_s: float, rest_s: float,
         k: int = 1, runs: Optional[Path] = None) -> list[dict]:
    """The pending ``configs`` (no complete record in ``runs``) in their order, each with ``est_s`` (its share
    of the wall clock: K runs share it), ``cum_s`` and ``command``: the session of ``budget_s`` it falls
    into, the first losing ``first_s`` to overheads (calibration included), the others ``rest_s`` (chapter 7)."""
    root = Path(runs) if runs is not None else results_root("runs")
    if budget_s - max(first_s, rest_s) <= 0:
        raise ValueError(f"--budget-s {budget_s:g} leaves nothing for runs after {max(first_s, rest_s):.0f} s "
                         "of start-up, smoke test and calibration")
    rows, cum, command, used, warm = [], 0.0, 1, 0.0, set()
    for c in configs:
        if is_complete(c.run_id, root):
            continue
        est = model.run_s(c, k, warm=c.model in warm)["total"] / k
        if used + est > budget_s - (first_s if command == 1 else rest_s) and used > 0:
            command, used, warm = command + 1, 0.0, set()
            est = model.run_s(c, k, warm=False)["total"] / k
        warm.add(c.model)
        used += est
        cum += est
        rows.append({"run_id": c.run_id, "seed": c.seed, "model": c.model, "dataset": c.dataset,
                     "objective": c.objective, "epochs": c.epochs, "est_s": est, "cum_s": cum, "command": command,
                     "too_long": est > budget_s - rest_s})
    return rows


def format_plan(rows: list[dict], model: CostModel, budget_s: float, first_s: float, rest_s: float, recipe: str,
                k: int, dtype: Optional[str]) -> str:
    """The plan as text (chapter 7): device, calibration and assumptions, one line per run, totals by seed group."""
    dev = DEVICES[model.key]
    lines = [f"device {dev.name} ({dtype or 'fp32'}{' autocast' if dtype else ''}), K = {k} concurrent run(s); "
             f"recipe {recipe!r}: " + json.dumps(GPU_RECIPES[recipe]),
             f"cost model: {model.source}", *(f"  {n}" for n in model.notes),
             f"command: {budget_s:.0f} s − {first_s:.0f} s (start-up, smoke test, calibration/benchmark) = "
             f"{budget_s - first_s:.0f} s for runs in the first, {budget_s - rest_s:.0f} s in each next one",
             f"estimates × {PLAN_MARGIN:g} (margin) where no finished run of a model corrects them",
             f"{'#':>4} {'fits':>4} {'cmd':>3} {'est_s':>7} {'cum_s':>8}  run"]
    for i, r in enumerate(rows, 1):
        fits = "NO" if r["too_long"] else "yes" if r["command"] == 1 else ""  # NO: longer than any command
        lines.append(f"{i:>4} {fits:>4} {r['command']:>3} {r['est_s']:>7.1f} {r['cum_s']:>8.1f}  {r['run_id']}")
    last = 0
    for label, group in (("seeds 0-2", [r for r in rows if r["seed"] < 3]),
                         ("seeds 3-9", [r for r in rows if r["seed"] >= 3])):
        if group:
            trained = sum(r["epochs"] > 0 for r in group)
            lines.append(f"{label}: {len(group)} runs ({trained} trained), {sum(r['est_s'] for r in group):.0f} s of "
                         f"runs, commands {group[0]['command']}-{group[-1]['command']} "
                         f"({group[-1]['command'] - last} more command(s))")
            last = group[-1]["command"]
    return "\n".join(lines)

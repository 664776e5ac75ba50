"""What to benchmark: the model cases, the configuration dataclass and the constants (chapter 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .._helpers import unknown_choice
from ..losses import DISTANCES
from ..models import MODEL_SPECS


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

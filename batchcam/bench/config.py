"""What one benchmark run measures: model cases, presets, the configuration and its flags.

Chapter 3 ("speed") and chapter 6 ("cost of the losses"). A model case is written ``NAME`` or
``NAME:SIZE`` (``resnet18:112``); it is parsed once, here, into a :class:`ModelCase`, and every
value is checked when a :class:`BenchConfig` is built, before any work: a bad value raises a
``ValueError`` that names the problem and the fix.

Presets (``--preset``; ``--quick`` is ``--preset quick``):

- ``quick``: SimpleCNN at 28 px, batches of 2 and 8, one thread; under a minute on a CPU, and a
  smoke test of every CUDA path with ``--device cuda``. Its records are marked ``quick``.
- ``cpu`` (the default on a CPU): SimpleCNN and ResNet-18 at 28 px, batches 1–256, and their
  training steps; a few minutes on two cores.
- ``verdict``: SimpleCNN at 28 px, batch 128 (the verdict grid's), forward / batch Grad-CAM / loop and
  the four training steps with L1, 25 interleaved rounds each: the timing verdicts of chapter 7
  (:mod:`batchcam.timing`); about two minutes on two cores.
- ``gpu-short``: ResNet-18 and ConvNeXt-V2-Tiny at 112 px, batches 1, 64 and 256 (the batch
  against the per-image loop at B = 256), the ResNet-18 training step with L1 and SSIM; about
  a minute on an H200.
- ``gpu`` (the default on CUDA): all three models, batches 1–256, every training step.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from .._helpers import resolve_device, unknown_choice
from ..losses import DISTANCES
from ..models import MODEL_SPECS, create_model

#: The timed Grad-CAM methods; ``batch_gradcam`` is the reference of the ratios and of the map check.
METHODS = {
    "forward": "model(x) under torch.no_grad(): the floor",
    "batch_gradcam": "batchcam.batch_gradcam: one forward, one torch.autograd.grad call",
    "gradcam_loop": "batchcam.gradcam_loop: one forward with a hook, one backward per image",
    "pytorch_grad_cam": "pytorch_grad_cam.GradCAM with ClassifierOutputTarget (PyPI grad-cam)",
    "captum": "captum LayerGradCam(relu_attributions=True) + LayerAttribution.interpolate(bilinear)",
}
REFERENCE = "batch_gradcam"

_ALL_MODELS = ("simplecnn:28", "resnet18:28", "resnet18:112", "convnextv2_tiny:112")
#: Overrides of :class:`BenchConfig`'s defaults (which are the ``cpu`` preset).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(models=("simplecnn:28",), batch_sizes=(2, 8), train_models=("simplecnn:28",), train_batch=8,
                  rounds=3, min_run_time=0.05, budget_s=120.0, threads=1),
    "cpu": {},
    # the timing verdicts (chapter 7, batchcam.timing): the verdict grid's model, image size and batch, ≥ 20
    # interleaved rounds per method; no memory measurement (it would run between the timings)
    "verdict": dict(models=("simplecnn:28",), batch_sizes=(128,), methods=("forward", "batch_gradcam", "gradcam_loop"),
                    train_models=("simplecnn:28",), train_batch=128, distances=("l1",), rounds=25,
                    min_run_time=12.5, memory=False, budget_s=600.0),
    "gpu-short": dict(device="cuda", models=("resnet18:112", "convnextv2_tiny:112"), batch_sizes=(1, 64, 256),
                      train_models=("resnet18:112",), distances=("l1", "ssim"), min_run_time=0.5, budget_s=110.0),
    "gpu": dict(device="cuda", models=_ALL_MODELS, train_models=_ALL_MODELS, budget_s=540.0),
}


@dataclass(frozen=True)
class ModelCase:
    """A registered model at one input size, ``str(case) == "resnet18:112"``."""

    name: str
    size: int

    @classmethod
    def parse(cls, text: Any) -> "ModelCase":
        """``"resnet18:112"`` or ``"resnet18"`` (the registry's size) → a case the model accepts."""
        if isinstance(text, ModelCase):
            return text
        name, sep, size = str(text).partition(":")
        if name not in MODEL_SPECS:
            raise unknown_choice("model", name, MODEL_SPECS, "Write NAME or NAME:SIZE, e.g. resnet18:112.")
        if sep and not size.isdigit():
            raise ValueError(f"bad model case {text!r}: the size after ':' must be a whole number of pixels, "
                             f"e.g. {name}:{MODEL_SPECS[name].image_size}")
        case = cls(name, int(size) if sep else MODEL_SPECS[name].image_size)
        try:  # the constructor's own checks (the minimum size), allocating nothing
            with torch.device("meta"):
                create_model(case.name, image_size=case.size)
        except ValueError as err:
            raise ValueError(f"bad model case {text!r}: {err}; pick another size") from None
        return case

    def __str__(self) -> str:
        return f"{self.name}:{self.size}"


def _cases(values: Any, flag: str) -> tuple[ModelCase, ...]:
    if isinstance(values, (str, ModelCase)):
        raise ValueError(f"{flag} must be a sequence of NAME[:SIZE], got the single value {values!r}")
    return tuple(ModelCase.parse(v) for v in values)


def _whole(values: Any, flag: str, least: int = 1, example: str = "1 16 64") -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(b, bool) or not isinstance(b, int) or b < least for b in values):
        got, what = (values[0], "a whole number") if len(values) == 1 else (list(values), "whole numbers")
        raise ValueError(f"{flag} must be {what} ≥ {least}, got {got!r}; e.g. {flag} {example}")
    return values


def max_threads() -> int:
    """The most ``--threads`` a run may ask for: 4 × the CPUs here (chapter 3, "speed")."""
    return 4 * (os.cpu_count() or 1)


@dataclass(frozen=True)
class BenchConfig:
    """Everything one benchmark run measures (recorded whole in the record's ``config``).

    ``models`` and ``train_models`` are given as ``"name[:size]"`` strings or :class:`ModelCase`
    and stored as :class:`ModelCase`. Timing: each method is timed in ``rounds`` rounds, the
    methods of a configuration taking turns in a rotating order; each round is one
    ``torch.utils.benchmark.Timer.blocked_autorange(min_run_time=min_run_time / rounds)``.
    ``budget_s``: a configuration that would start later than this many seconds after the start
    is skipped (and listed in the record's ``skipped``).
    """

    models: tuple = ("simplecnn:28", "resnet18:28")  # Grad-CAM timings (chapter 3)
    batch_sizes: tuple = (1, 16, 64, 256)
    methods: tuple = tuple(METHODS)
    train_models: tuple = ("simplecnn:28", "resnet18:28")  # training steps (chapter 6); empty: none
    train_batch: int = 64
    distances: tuple = DISTANCES
    rounds: int = 3
    min_run_time: float = 1.0  # seconds of timing per method and configuration, all rounds together
    budget_s: float = 900.0
    memory: bool = True  # peak memory of forward / batch_gradcam / gradcam_loop
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto"; on CUDA bf16 autocast and channels_last
    threads: Optional[int] = None  # torch threads during the run (None: as they are)
    seed: int = 0
    num_classes: int = 10
    atol: float = 1e-5  # the map check: max abs difference of the min-max normalised maps
    preset: str = "cpu"

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        if self.preset not in PRESETS:
            raise unknown_choice("preset", self.preset, PRESETS)
        kind, _, index = self.device.partition(":")
        if self.device not in ("cpu", "auto") and not (kind == "cuda" and (not index or index.isdigit())):
            raise ValueError(f"unknown device {self.device!r}; use --device cpu, cuda, cuda:N or auto")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: CUDA is not available on this machine; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"--device {self.device}: there are {torch.cuda.device_count()} CUDA devices; "
                             "use --device cuda:0")
        put("models", _cases(self.models, "--models"))
        put("train_models", _cases(self.train_models, "--train-models"))
        if not self.models and not self.train_models:
            raise ValueError("nothing to measure: give --models and/or --train-models")
        put("batch_sizes", _whole(self.batch_sizes, "--batch-sizes") if self.models else ())
        for kind, values, valid in (("method", self.methods, METHODS), ("distance", self.distances, DISTANCES)):
            if not values:
                raise ValueError(f"give at least one {kind}: {', '.join(valid)}")
            for v in values:
                if v not in valid:
                    raise unknown_choice(kind, v, valid)
        if REFERENCE not in self.methods:
            raise ValueError(f"--methods must include {REFERENCE!r}: the ratios and the map check refer to it")
        put("methods", tuple(self.methods))
        put("distances", tuple(self.distances))
        _whole([self.train_batch], "--train-batch", 2, "64")  # the Batch-CAM Loss compares samples of a class
        _whole([self.rounds], "--rounds", 1, "3")
        _whole([self.seed], "--seed", 0, "0")
        if self.threads is not None:
            _whole([self.threads], "--threads", 1, "2")
            if self.threads > max_threads():  # torch.set_num_threads(100000) crashes the process
                raise ValueError(f"--threads must be at most {max_threads()} (4 × the {os.cpu_count() or 1} CPUs "
                                 f"here), got {self.threads}; e.g. --threads {os.cpu_count() or 1}")
        for flag, value in (("--min-run-time", self.min_run_time), ("--budget-seconds", self.budget_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{flag} must be a positive number of seconds, got {value!r}; e.g. {flag} 600")

    @classmethod
    def from_preset(cls, name: str = "cpu", **overrides: Any) -> "BenchConfig":
        """``BenchConfig.from_preset("gpu-short", batch_sizes=(256,))``: a preset, then ``overrides``."""
        if name not in PRESETS:
            raise unknown_choice("preset", name, PRESETS)
        return cls(**{**PRESETS[name], **overrides, "preset": name})

    def torch_device(self) -> torch.device:
        """The device of the run (``"auto"`` resolved)."""
        return resolve_device(self.device)

    @property
    def quick(self) -> bool:
        """Whether the record is a smoke test (``--quick``), which the book never shows."""
        return self.preset == "quick"

    def to_dict(self) -> dict:
        """JSON-ready: model cases as ``"name:size"`` strings, tuples as lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: [v if isinstance(v, (int, float, str)) else str(v) for v in val] if isinstance(val, tuple)
                else val for k, val in out.items()}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``bench`` flags to ``parser``; a flag not given keeps the preset's value."""
    p = parser.add_argument
    p("--preset", choices=list(PRESETS), help="what to run (default: cpu, or gpu with --device cuda)")
    p("--quick", action="store_true", help="the same as --preset quick: a tiny run, under a minute on a CPU")
    p("--device", help="cpu, cuda, cuda:N or auto (default: the preset's)")
    p("--models", nargs="+", metavar="NAME[:SIZE]", help="models for the Grad-CAM timings, e.g. resnet18:112")
    p("--batch-sizes", nargs="+", type=int, metavar="B", help="batch sizes of the Grad-CAM timings")
    p("--methods", nargs="+", metavar="NAME", help=f"Grad-CAM methods to time (default: {' '.join(METHODS)})")
    p("--train-models", nargs="*", metavar="NAME[:SIZE]", help="models for the training steps; none: skip them")
    p("--train-batch", type=int, metavar="B", help="batch size of the training steps")
    p("--distances", nargs="+", metavar="D", help=f"distances of the losses (default: {' '.join(DISTANCES)})")
    p("--rounds", type=int, metavar="N", help="rounds of timing per method (the methods take turns)")
    p("--min-run-time", type=float, metavar="S", help="seconds of timing per method, all rounds together")
    p("--budget-seconds", type=float, dest="budget_s", metavar="S",
      help="configurations that would start after S seconds are skipped")
    p("--no-memory", action="store_false", dest="memory", default=None, help="skip the peak-memory measurements")
    p("--threads", type=int, metavar="N", help=f"torch threads during the run (1 to {max_threads()})")
    p("--seed", type=int)
    p("--force", action="store_true", help="overwrite an existing record file")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the flags of :func:`add_arguments` describe (ValueError if invalid)."""
    if args.quick and args.preset not in (None, "quick"):
        raise ValueError(f"--quick is --preset quick; it cannot be combined with --preset {args.preset}")
    preset = "quick" if args.quick else args.preset
    if preset is None:
        device = args.device or "cpu"
        preset = "gpu" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"
    given = {f.name: getattr(args, f.name) for f in fields(BenchConfig) if getattr(args, f.name, None) is not None}
    return BenchConfig.from_preset(preset, **{k: v for k, v in given.items() if k != "preset"})

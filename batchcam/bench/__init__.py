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

Modules, one idea each: ``config`` (what to run), ``timing`` (round-robin medians, peak memory),
``methods`` (the five methods and the equality of their maps), ``cam`` (one Grad-CAM
configuration), ``training`` (the training step), ``schedule`` (order, skips), ``targets``,
``record`` (provenance, ``run_benchmark``) and ``cli``.
"""

from .cam import bench_cam, make_case, measure_memory
from .cli import add_bench_args, config_from_args, format_summary, main, run_bench_cli
from .config import (DEFAULT_MODELS, DEFAULT_TRAIN_MODELS, METHODS, OBJECTIVES, SCHEMA_VERSION, BenchConfig,
                     ModelCase, quick_config)
from .methods import (METHOD_BUILDERS, Case, Method, MethodUnavailable, build_methods, comparable_maps,
                      compare_maps, floor_check, loop_leak_check)
from .record import run_benchmark
from .targets import TARGETS, evaluate_targets
from .timing import peak_memory_mib, time_side_by_side
from .training import bench_training, train_step

__all__ = ["BenchConfig", "ModelCase", "quick_config", "run_benchmark", "compare_maps", "comparable_maps",
           "time_side_by_side", "peak_memory_mib", "measure_memory", "floor_check", "loop_leak_check",
           "evaluate_targets", "format_summary", "add_bench_args", "config_from_args", "run_bench_cli", "main",
           "METHOD_BUILDERS", "METHODS", "OBJECTIVES", "TARGETS", "SCHEMA_VERSION", "DEFAULT_MODELS",
           "DEFAULT_TRAIN_MODELS", "Case", "Method", "MethodUnavailable", "build_methods", "make_case", "bench_cam",
           "bench_training", "train_step"]

"""Per-method speed: every CAM method of ``batchcam.batch_cam`` against pytorch-grad-cam's class of the same name
(and Captum's LayerGradCam for Grad-CAM), on torchvision's ResNet-18 (random weights), 64 px, B = 32, CPU.

    python scripts/bench_methods.py                # writes results/bench/methods-cpu-<UTC>.json
    python scripts/bench_methods.py --rounds 3 --min-run-time 2 --out /tmp   # a quick look

Timing: ``batchcam.bench.measure.time_calls`` (torch.utils.benchmark ``blocked_autorange``, every callable
of the run taking turns in a rotating order each round, per-round medians kept), so two callables pair by
round; the appendix shows each ratio with a bootstrap interval (``batchcam.timing.ratio_interval``). The
forward pass with and without autograd is timed alongside, the floor of every method. Run it on a quiet
machine: the record keeps the load average at start and end and the thread count.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batchcam import batch_cam  # noqa: E402
from batchcam.bench.measure import time_calls  # noqa: E402
from batchcam.bench.methods import PGC_CLASSES  # noqa: E402
from batchcam.results import provenance, write_bench_record  # noqa: E402


def callables(model, x, targets, layer_name: str) -> dict:
    """name → zero-argument callable, each as its library's users call it."""
    import pytorch_grad_cam
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = model.get_submodule(layer_name)
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    size = tuple(x.shape[-2:])
    fns = {"forward (no grad)": lambda: _no_grad(model, x),
           "forward (grad)": lambda: model(x)}  # builds the autograd graph (the weights require grad)
    for method, cls_name in PGC_CLASSES.items():
        cls = getattr(pytorch_grad_cam, cls_name)
        fns[f"batchcam {method}"] = (lambda m=method: batch_cam(model, x, layer_name, targets, method=m))
        fns[f"pytorch-grad-cam {method}"] = (lambda c=cls: _pgc(c, model, layer, x, pgc_targets))
    explainer = LayerGradCam(model, layer)
    fns["captum gradcam"] = lambda: LayerAttribution.interpolate(
        explainer.attribute(x, target=targets, relu_attributions=True), size, interpolate_mode="bilinear")
    return fns


def _no_grad(model, x):
    with torch.no_grad():
        return model(x)


def _pgc(cls, model, layer, x, targets):
    with cls(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=targets)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--min-run-time", type=float, default=60.0, help="seconds per callable, all rounds together")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="folder (default: results/bench)")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.min_run_time <= 0 or args.batch < 1 or not 32 <= args.size <= 512:
        p.error("--rounds >= 2, --min-run-time > 0, --batch >= 1, 32 <= --size <= 512")
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    targets = torch.arange(args.batch) % 10
    load = [list(os.getloadavg())]
    t0 = time.perf_counter()
    timings = time_calls(callables(model, x, targets, "layer4"), args.rounds, args.min_run_time)
    load.append(list(os.getloadavg()))
    record = {"kind": "batchcam-bench-methods", "model": "torchvision resnet18 (random weights, 10 classes)",
              "layer": "layer4", "batch_size": args.batch, "image_size": args.size, "rounds": args.rounds,
              "min_run_time": args.min_run_time, "timings": timings, "wall_s": time.perf_counter() - t0,
              "environment": {"device": "cpu", "torch_threads": torch.get_num_threads(), "load_average": load},
              "provenance": provenance(torch.device("cpu"))}
    out = write_bench_record(record, device_type="cpu", root=args.out, name="methods")
    for name, t in timings.items():
        print(f"{name:32s} {t.get('median_ms', float('nan')):9.2f} ms  {t.get('error', '')}")
    print(f"record: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

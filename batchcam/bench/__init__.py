"""Speed benchmark: batch Grad-CAM against the per-image loop, pytorch-grad-cam and Captum (chapter 3,
"speed"), and the cost of the two losses in a training step (chapter 6, "cost of the losses").

``python -m batchcam bench [--quick | --preset NAME] [flags]`` runs :func:`run_benchmark` on a
:class:`BenchConfig` and hands the record to :func:`batchcam.results.write_bench_record`.
Modules: ``config`` (what to run, validated), ``methods`` (the Grad-CAM methods and the check
that their maps agree), ``measure`` (timing, the training step, memory, the record).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .config import BenchConfig, add_arguments, config_from_args

__all__ = ["BenchConfig", "run_benchmark", "add_arguments", "run", "rows", "format_summary"]


def run_benchmark(cfg: BenchConfig, progress: bool = False) -> dict:
    """The benchmark record of ``cfg``, a JSON-ready dict (chapter 3, "speed"; the appendix on the benchmark
    methodology explains its timing). Inputs: random images [B, 1, S, S] in [0, 1] and labels [B] per
    (model, S, B) configuration; see :func:`batchcam.bench.measure.run_benchmark`."""
    from .measure import run_benchmark as measure_run

    return measure_run(cfg, progress=progress)


def rows(record: dict, kind: str = "cam", model: Optional[str] = None, image_size: Optional[int] = None) -> list[dict]:
    """A record's timings as flat rows, with the ratios (the record stores each timing once).

    ``kind="cam"`` (chapter 3): ``{"model", "image_size", "batch_size", "method", "ms", "iqr_ms",
    "to_forward", "to_batch_gradcam"}``, ready for :func:`batchcam.plots.timing_plot`.
    ``kind="train"`` (chapter 6): the same with ``method`` = ``"ce"``, ``"ce+proto:l1"``, ... and
    ``to_ce`` (a step's time over a ``ce`` step). Failed methods are left out; a ratio to a failed
    base is None.
    """
    bases = {"cam": ("forward", "batch_gradcam"), "train": ("ce",)}[kind]
    out = []
    for e in record["cam" if kind == "cam" else "training"]:
        if (model or e["model"], image_size or e["image_size"]) != (e["model"], e["image_size"]):
            continue
        ms = {m: t["median_ms"] for m, t in e["timings"].items() if "median_ms" in t}
        out += [{"model": e["model"], "image_size": e["image_size"], "batch_size": e["batch_size"], "method": m,
                 "ms": ms[m], "iqr_ms": e["timings"][m]["iqr_ms"],
                 **{f"to_{b}": ms[m] / ms[b] if b in ms else None for b in bases}} for m in ms]
    return out


def format_summary(record: dict) -> str:
    """Plain text: per Grad-CAM configuration the forward time, the ratios to the batch Grad-CAM and
    the largest map difference (maps [B, H, W]); per training configuration each step's time over a
    ``ce`` step (chapter 3, "speed"; chapter 6 for the training steps)."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    table = {(r["model"], r["image_size"], r["batch_size"], r["method"]): r for r in rows(record)}
    lines = ["model:size            B   fwd ms  batch/fwd loop/batch pgc/batch captum/batch  max|Δ| maps"]
    for e in record["cam"]:
        get = lambda m, k, e=e: table.get((e["model"], e["image_size"], e["batch_size"], m), {}).get(k)  # noqa: E731
        eq = e["equality"] or {}
        diffs = [v["max_abs_diff"] for v in eq.get("methods", {}).values() if v["max_abs_diff"] is not None]
        lines.append(f"{e['model']}:{e['image_size']:<{18 - len(e['model'])}} {e['batch_size']:>4} "
                     f"{fmt(get('forward', 'ms'), '8.1f')} {fmt(get('batch_gradcam', 'to_forward'), '10.3f')} "
                     + " ".join(fmt(get(m, "to_batch_gradcam"), f"{w}.2f") for m, w in
                                (("gradcam_loop", 10), ("pytorch_grad_cam", 9), ("captum", 12)))
                     + f" {fmt(max(diffs) if diffs else None, '7.1e')} "
                     + ("ok" if eq.get("pass") else "FAIL" if eq else "-"))
    for e in record["training"]:
        steps = rows({"training": [e]}, "train")
        ce = next((s["ms"] for s in steps if s["method"] == "ce"), None)
        lines.append(f"train {e['model']}:{e['image_size']} B={e['batch_size']}: ce {fmt(ce, '.1f')} ms; "
                     "step / ce step: "
                     + ", ".join(f"{s['method']} {fmt(s['to_ce'], '.2f')}" for s in steps if s["method"] != "ce"))
    lines += [f"skipped {s['kind']} {s['model']}:{s['image_size']} B={s['batch_size']}: {s['reason']}"
              for s in record["skipped"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``python -m batchcam bench``: validate, run, write the record, print the summary (chapter 3).

    Returns 0; 1 when the maps of the methods disagree; 2 (one ``batchcam bench: error: ...``
    line on stderr, nothing run or written) when a flag's value is invalid.
    """
    from .. import results

    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"batchcam bench: error: {err}", file=sys.stderr)
        return 2
    from .measure import run_benchmark  # torch.utils.benchmark loads only when a benchmark runs

    write = results.write_bench_record  # looked up before the work, so a missing writer fails fast
    record = run_benchmark(cfg, progress=True)
    path = write(record, device_type=cfg.torch_device().type, quick=cfg.quick,
                 force=bool(getattr(args, "force", False)))
    print(format_summary(record))
    print(f"record: {path}")
    return 1 if record["summary"]["maps_equal"] is False else 0

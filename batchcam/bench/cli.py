"""The summary table and the command line (``python -m batchcam bench``)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..losses import DISTANCES
from .config import BenchConfig, DEFAULT_MODELS, DEFAULT_TRAIN_MODELS, FLOOR, REFERENCE, quick_config
from .record import run_benchmark

DESCRIPTION = ("speed benchmark: batch Grad-CAM against the per-image loop, pytorch-grad-cam and Captum, "
               "the cost of the two losses in a training step, and peak memory")


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
    parser = add_bench_args(argparse.ArgumentParser(prog="python -m batchcam bench", description=DESCRIPTION))
    return run_bench_cli(parser.parse_args(argv))


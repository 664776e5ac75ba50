"""Command line: ``python -m batchcam <command>`` (chapter 6 trains one run, chapter 7 the grid).

Commands::

    prepare-data  fetch and verify MNIST / Fashion-MNIST into data/ (the only command that fetches)
    train         one run; every TrainConfig field is a flag (--dataset, --objective, --amp/--no-amp, ...)
    reproduce     a grid, skipping recorded runs and resuming checkpointed ones (--launcher submitit:
                  one Slurm / local job per pending run, batchcam.launch)
    list-runs     a compact table of the run records (--stale: records whose code has changed)
    bench         the speed benchmark (chapter 3)

Every value is checked before any work starts: a bad one exits with code 2 and one line naming
the problem and the fix, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import typing
from pathlib import Path
from typing import Iterable, Optional

from . import bench, distributed, gpu, launch
from ._idx import ChecksumError
from .config import TrainConfig
from .data import DATASETS, DataMissingError
from .fetch import prepare_data
from .grid import GRIDS, pending
from .loop import NonFiniteLossError
from .losses import OBJECTIVES
from .models import list_models
from .results import (
    RecordExistsError,
    latest_bench_path,
    load_bench,
    load_record,
    load_runs,
    results_root,
    verify_records,
)
from .runner import fit_and_record
from .staleness import stale_records
from .train import checkpoint_path

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
#: TrainConfig fields that ``reproduce`` can override for the whole grid (the others are axes).
GRID_OVERRIDES = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "distance", "lambda_proto",
                  "lambda_batchcam", "device", "amp", "channels_last", "n_train", "n_test", "data_root",
                  "out_dir", "eval_cam_loop_samples", "eval_faithfulness_samples")


class UsageError(Exception):
    """A bad value: reported as one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ...``) and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# --------------------------------------------------------------------------- TrainConfig ↔ flags


def _flag_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def add_config_arguments(parser: argparse.ArgumentParser, fields: Optional[Iterable[str]] = None,
                         keep_defaults: bool = True) -> None:
    """One flag per ``TrainConfig`` field (``lambda_proto`` → ``--lambda-proto``); booleans get
    ``--amp/--no-amp``; choices are listed. ``keep_defaults=False``: every default is None."""
    hints = typing.get_type_hints(TrainConfig)
    wanted = set(fields) if fields is not None else None
    group = parser.add_argument_group("training configuration (batchcam.TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        if wanted is not None and f.name not in wanted:
            continue
        kind = _flag_type(hints[f.name])
        kwargs: dict = {"dest": f.name, "default": f.default if keep_defaults else None,
                        "help": f.metadata.get("help", "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, choices=f.metadata.get("choices"))
            if keep_defaults:
                kwargs["help"] += " (default: %(default)s)"
        group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


# --------------------------------------------------------------------------- running one fit


def _train_and_record(config: TrainConfig, *, resume: bool, force: bool, progress: bool,
                      rerun: str) -> Optional[int]:
    """``fit`` then write the record; on Ctrl-C say where the checkpoint is (→ 130)."""
    try:
        run, path = fit_and_record(config, resume=resume, force=force, progress=progress)
    except KeyboardInterrupt:
        ckpt = checkpoint_path(config)
        where = f"last complete checkpoint: {ckpt}" if ckpt.is_file() else "no checkpoint yet"
        print(f"\ninterrupted: {where}; continue with: {rerun}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if run is None:  # a torchrun rank other than 0: rank 0 writes the one record
        return None
    f = load_record(path)["final"]
    print(f"{config.run_id}: test accuracy {f['accuracy']:.4f}, L1 {f['l1']:.4f}, SSIM {f['ssim']:.4f}, "
          f"dead {f['dead_fraction']:.1%} -> {path}")
    return None


def _refuse_existing(config: TrainConfig, force: bool) -> None:
    path = Path(config.out_dir) / "runs" / f"{config.run_id}.json"
    if path.exists() and not force:
        raise UsageError(f"record {path} already exists; pass --force to replace it, "
                         "or write elsewhere with --out-dir")


# --------------------------------------------------------------------------- commands


def _add_prepare(p):
    p.add_argument("--root", default=None, help="data folder (default: batchcam.data.default_data_root())")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--force", action="store_true", help="fetch again even when the files verify")


def _run_prepare(args) -> int:
    prepare_data(args.root, datasets=args.datasets, force=args.force, verbose=True)
    return 0


def _add_progress(p):
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm bars")


def _add_train(p):
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from this run's checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing record with the same id")
    _add_progress(p)


def _run_train(args) -> int:
    config = config_from_args(args).check_ready()
    _refuse_existing(config, args.force)
    try:  # under torchrun every process runs this; fit joins the process group (batchcam.distributed)
        code = _train_and_record(config, resume=args.resume, force=args.force, progress=args.progress,
                                 rerun=_command_line(args.argv, ["--resume"]))
    finally:
        distributed.teardown()
    return code or 0


def _add_reproduce(p):
    p.add_argument("--grid", choices=sorted(GRIDS), default="paper", help="which grid (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="(default: the grid's: 0 1 2; verdict: 0-9; tuning: 100)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--models", nargs="+", choices=list_models(), help="(default: the grid's; paper: all three)")
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=None,
                   help="(default: the grid's; paper: all four)")
    p.add_argument("--no-random-baseline", dest="random_baseline", action="store_false",
                   help="skip the untrained-model (epochs 0) cells")
    p.add_argument("--dry-run", action="store_true", help="list the pending runs and stop")
    p.add_argument("--keep-going", action="store_true", help="after a failed run, continue with the next")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run although the working tree has uncommitted changes (records say so)")
    p.add_argument("--launcher", choices=("local", "submitit"), default="local",
                   help="local: the runs one after the other here; submitit: one job per pending run "
                        "(default: %(default)s)")
    _add_progress(p)
    add_config_arguments(p, GRID_OVERRIDES, keep_defaults=False)
    launch.add_arguments(p)


def _run_reproduce(args) -> int:
    if args.launcher != "submitit":
        return _reproduce(args)
    launch.check_installed()
    opts = launch.options_from_args(args)
    opts.cluster = launch.resolve_cluster(opts.cluster)
    with launch.assume_cuda(opts.cluster == "slurm" and opts.gpus_per_run > 0):  # login node without GPUs
        return _reproduce(args, submit=lambda todo: launch.submit_runs(todo, opts))


def _reproduce(args, submit=None) -> int:
    overrides = {name: getattr(args, name) for name in GRID_OVERRIDES}
    seeds = {} if args.seeds is None else {"seeds": args.seeds}
    configs = GRIDS[args.grid](datasets=args.datasets, models=args.models, objectives=args.objectives,
                               random_baseline=args.random_baseline, **seeds, **overrides)
    for config in {(c.model, c.image_size, c.layer, c.out_dir): c for c in configs}.values():
        config.check_ready()
    todo = pending(configs)
    print(f"grid {args.grid}: {len(configs)} runs, {len(configs) - len(todo)} recorded, {len(todo)} pending")
    for config in todo:
        print(f"  {config.run_id}" + ("  (resumes its checkpoint)" if checkpoint_path(config).is_file() else ""))
    if args.dry_run or not todo:
        return 0
    from .results import provenance

    if provenance().get("git_dirty") and not args.allow_dirty:
        raise UsageError("the working tree has uncommitted changes, so the records could not be traced to "
                         "a commit; commit first, or pass --allow-dirty")
    if submit is not None:  # --launcher submitit
        return submit(todo)
    failed = []
    for i, config in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {config.run_id}", flush=True)
        try:
            code = _train_and_record(config, resume=True, force=False, progress=args.progress,
                                     rerun=_command_line(args.argv))
        except Exception as exc:  # noqa: BLE001 - reported, then re-raised unless --keep-going
            if not args.keep_going:
                raise
            print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(config.run_id)
            continue
        if code is not None:
            return code
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _add_list_runs(p):
    p.add_argument("--out-dir", default=None, help="read OUT_DIR/runs (default: the committed records)")
    p.add_argument("--stale", action="store_true", help="list records whose code changed since their commit")
    p.add_argument("--verify", action="store_true",
                   help="check every record's record_sha256 and its tensors' SHA-256; name each file that fails")


def _run_list_runs(args) -> int:
    root = Path(args.out_dir) / "runs" if args.out_dir else results_root("runs")
    if args.stale:
        stale = stale_records(root)
        for s in stale:
            print(f"{s['run_id']}: {s['reason']}")
        print(f"{len(stale)} stale record(s) in {root}")
        return 1 if stale else 0
    if args.verify:
        bad = verify_records(root)
        for line in bad:
            print(line)
        print(f"{len(bad)} problem(s) in {root}")
        return 1 if bad else 0
    rows = load_runs(root)
    width = max([len("run_id")] + [len(r["run_id"]) for r in rows])
    print(f"{'run_id':<{width}}  {'scale':<10} {'acc':>7} {'l1':>7} {'ssim':>7} {'dead':>6}")
    for r in rows:
        print(f"{r['run_id']:<{width}}  {r['scale']:<10} {r['accuracy']:7.4f} {r['l1']:7.4f} "
              f"{r['ssim']:7.4f} {r['dead_fraction']:6.1%}")
    print(f"{len(rows)} run(s) in {root}")
    return 0


def _run_verdicts() -> int:
    from . import decoy_verdicts, grid, verdicts

    rows = load_runs()
    try:
        configs, note = grid.verdict_grid(), ""
    except ValueError as exc:  # the learning rate is not chosen yet: every cell is pending
        configs, note = [], str(exc)
    bench_path = latest_bench_path("cpu", preset="verdict")
    bench = load_bench(bench_path)
    content = verdicts.build(rows, configs, design=verdicts.design_from(rows), note=note, bench=bench,
                             bench_name=bench_path.name if bench_path else None)
    content["decoy"] = decoy_verdicts.from_records(rows)
    path = verdicts.write(content)
    counts: dict[str, int] = {}
    content = json.loads(path.read_text())
    for e in content["entries"] + content["timing"] + content["decoy"]["entries"]:
        counts[e["verdict"]] = counts.get(e["verdict"], 0) + 1
    print(f"{path}: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    return 0


def _run_status() -> int:
    from .status import status_markdown

    print(status_markdown(), end="")
    return 0


def _command_line(argv: list[str], extra: Iterable[str] = ()) -> str:
    return "python -m batchcam " + shlex.join(list(argv) + [a for a in extra if a not in argv])


COMMANDS = {
    "prepare-data": ("fetch and verify MNIST / Fashion-MNIST", _add_prepare, _run_prepare),
    "train": ("train one configuration and write its run record", _add_train, _run_train),
    "reproduce": ("run a grid (skips recorded runs, resumes checkpoints)", _add_reproduce, _run_reproduce),
    "list-runs": ("table of the run records", _add_list_runs, _run_list_runs),
    "verdicts": ("write results/verdicts.json from the verdict grid's records (chapter 7)",
                 lambda p: None, lambda args: _run_verdicts()),
    "status": ("where the reproduction stands, from the committed records and results/verdicts.json",
               lambda p: None, lambda args: _run_status()),
    "bench": ("speed benchmark: batch Grad-CAM vs the loop and libraries; cost of the losses",
              bench.add_arguments, bench.run),
    "gpu-run": ("one GPU session: smoke test, benchmark, pending grid runs within a budget, one archive",
                gpu.add_arguments, gpu.run),
    "unpack": ("verify a gpu-run archive and add its records to results/", gpu.add_unpack_arguments,
               gpu.run_unpack),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m batchcam", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (help_, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(run=run, command_name=name)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (2: bad input, 130: interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one line (2) or the help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.argv = argv
    try:
        return args.run(args)
    except (UsageError, ValueError, RecordExistsError, DataMissingError, ChecksumError,
            NonFiniteLossError) as exc:
        print(f"batchcam {args.command_name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

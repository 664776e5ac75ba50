"""Command line: ``python -m batchcam <command>`` (chapter 5 trains one run, chapter 6 reproduces the grid).

Commands::

    prepare-data  fetch and verify MNIST / Fashion-MNIST into data/
    train         one run; every TrainConfig field is a flag (--dataset, --objective, --amp/--no-amp, ...)
    reproduce     the paper grid, skipping recorded runs and resuming checkpointed ones
    list-runs     a compact table of the run records

A new command is one entry in ``COMMANDS``: a help line, a function adding its arguments and a
function running it (returning the exit code).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import bench
from .data import DATASETS, ChecksumError, prepare_data
from .grid import GRID_MODELS, paper_grid, pending
from .models import list_models
from .results import load_runs
from .train import OBJECTIVES, TrainConfig, checkpoint_path, fit

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
GRIDS = {"paper": paper_grid}
# TrainConfig fields that `reproduce` can override for the whole grid (the others are grid axes).
GRID_OVERRIDES = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "distance", "lambda_proto",
                  "lambda_batchcam", "device", "amp", "channels_last", "n_train", "n_test", "data_root",
                  "out_dir", "eval_cam_loop_samples")


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, how it adds its arguments, and how it runs (→ exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- TrainConfig ↔ flags


def _flag_type(hint) -> type:
    """``Optional[int]`` → ``int``; other hints unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def add_config_arguments(parser: argparse.ArgumentParser, fields: Optional[Iterable[str]] = None,
                         keep_defaults: bool = True) -> None:
    """Add one flag per ``TrainConfig`` field (``lambda_proto`` → ``--lambda-proto``).

    Booleans get ``--amp/--no-amp``; enumerations get ``choices`` so a bad value lists the valid
    ones. With ``keep_defaults=False`` every default is ``None`` ("not given").
    """
    hints = typing.get_type_hints(TrainConfig)
    wanted = set(fields) if fields is not None else None
    group = parser.add_argument_group("training configuration (batchcam.TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        if wanted is not None and f.name not in wanted:
            continue
        kind = _flag_type(hints[f.name])
        default = f.default if keep_defaults else None
        kwargs: dict = {"dest": f.name, "default": default, "help": f.metadata.get("help", "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, choices=f.metadata.get("choices"))
            if keep_defaults:
                kwargs["help"] += " (default: %(default)s)"
        group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` described by the flags of :func:`add_config_arguments`."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


# --------------------------------------------------------------------------- running fits


def _error(command: str, exc: BaseException) -> int:
    print(f"batchcam {command}: error: {exc}", file=sys.stderr)
    return 2


def _command_line(argv: list[str], extra: Iterable[str] = ()) -> str:
    args = list(argv) + [a for a in extra if a not in argv]
    return "python -m batchcam " + shlex.join(args)


def _fit_or_interrupt(config: TrainConfig, *, resume: bool, progress: bool, rerun: str) -> Optional[int]:
    """``fit`` with a one-line summary; on Ctrl-C print where the checkpoint is and how to resume (→ 130)."""
    try:
        run = fit(config, resume=resume, progress=progress)
    except KeyboardInterrupt:
        ckpt = checkpoint_path(config)
        where = (f"last complete checkpoint: {ckpt}" if ckpt.is_file()
                 else "no checkpoint yet (stopped during the first epoch)")
        print(f"\ninterrupted: {where}; continue with: {rerun}", file=sys.stderr)
        return EXIT_INTERRUPTED
    f = run.final
    print(f"{run.config.run_id}: test accuracy {f['accuracy']:.4f}, L1 {f['l1']:.4f}, L2 {f['l2']:.4f}, "
          f"SSIM {f['ssim']:.4f}, {f['train_time_per_epoch_s']:.1f} s/epoch -> {run.record_path}")
    return None


# --------------------------------------------------------------------------- commands


def _add_prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="data folder (default: batchcam.data.default_data_root())")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--force", action="store_true", help="fetch again even when the files verify")


def _run_prepare(args: argparse.Namespace) -> int:
    try:
        prepare_data(args.root, datasets=args.datasets, force=args.force, verbose=True)
    except (ChecksumError, RuntimeError) as exc:
        print(f"batchcam prepare-data: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def _add_train(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from this run's checkpoint if there is one")
    _add_progress(p)


def _run_train(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args).resolved()
    except ValueError as exc:
        return _error("train", exc)
    code = _fit_or_interrupt(config, resume=args.resume, progress=args.progress,
                             rerun=_command_line(args.argv, ["--resume"]))
    return code or 0


def _add_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", choices=sorted(GRIDS), default="paper", help="which grid (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(default: %(default)s)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--models", nargs="+", choices=list_models(), default=list(GRID_MODELS))
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--dry-run", action="store_true", help="list the pending runs and stop")
    p.add_argument("--keep-going", action="store_true", help="after a failed run, continue with the next")
    _add_progress(p)
    add_config_arguments(p, GRID_OVERRIDES, keep_defaults=False)


def _run_reproduce(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in GRID_OVERRIDES}
    try:
        configs = GRIDS[args.grid](seeds=args.seeds, datasets=args.datasets, models=args.models,
                                   objectives=args.objectives, **overrides)
    except ValueError as exc:
        return _error("reproduce", exc)
    todo = pending(configs)
    print(f"grid {args.grid}: {len(configs)} runs, {len(configs) - len(todo)} recorded, {len(todo)} pending")
    for config in todo:
        print(f"  {config.run_id}" + ("  (resumes its checkpoint)" if checkpoint_path(config).is_file() else ""))
    if args.dry_run:
        return 0
    failed = []
    for i, config in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {config.run_id}", flush=True)
        try:
            code = _fit_or_interrupt(config, resume=True, progress=args.progress, rerun=_command_line(args.argv))
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


def _add_list_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="results", help="records are read from OUT_DIR/runs (default: %(default)s)")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _run_list_runs(args: argparse.Namespace) -> int:
    root = Path(args.out_dir) / "runs"
    rows = load_runs(root)
    if not rows:
        print(f"no run records in {root}")
        return 0
    width = max(len("run_id"), *(len(r["run_id"]) for r in rows))
    print(f"{'run_id':<{width}}  {'scale':<10} {'device':<6} {'acc':>7} {'l1':>7} {'l2':>7} {'ssim':>7} "
          f"{'s/epoch':>8}")
    for r in rows:
        print(f"{r['run_id']:<{width}}  {r['scale']:<10} {str(r['device']):<6} {_fmt(r['accuracy'], '7.4f')} "
              f"{_fmt(r['l1'], '7.4f')} {_fmt(r['l2'], '7.4f')} {_fmt(r['ssim'], '7.4f')} "
              f"{_fmt(r['train_time_per_epoch_s'], '8.1f')}")
    print(f"{len(rows)} run(s) in {root}")
    return 0


#: Subcommand registry: adding a command (e.g. ``bench``) means adding one entry here.
COMMANDS: dict[str, Command] = {
    "prepare-data": Command("fetch and verify MNIST / Fashion-MNIST", _add_prepare, _run_prepare),
    "train": Command("train one configuration and write its run record", _add_train, _run_train),
    "reproduce": Command("run the paper grid (skips recorded runs, resumes checkpoints)", _add_reproduce,
                         _run_reproduce),
    "list-runs": Command("table of the run records", _add_list_runs, _run_list_runs),
    "bench": Command("speed benchmark: batch Grad-CAM vs loop, pytorch-grad-cam, Captum; cost of the losses",
                     bench.add_bench_args, bench.run_bench_cli),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batchcam", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (130 after Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

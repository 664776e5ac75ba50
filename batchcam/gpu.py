"""One prepared GPU session: smoke-test every CUDA path, calibrate or benchmark, then train pending runs of
the GPU grid until a time budget is spent, packing every new record into one archive (chapter 7, "run it
yourself"; docs/colab_gpu.md gives the commands).

``python -m batchcam gpu-run --out OUT`` (``scripts/gpu_run.sh``): the ResNet-18 and ConvNeXt-V2 rows
of the paper grid at the recipe of :data:`batchcam.plan.GPU_RECIPES`, seeds 0-2 of every cell before
any seed 3, K runs at once (:mod:`batchcam.runpool`). ``--plan`` prints what a session would run
and for how long, without a GPU (:mod:`batchcam.plan`); ``--calibrate`` measures the planner's prices
on this device into ``results/bench/bench-calibration-<device>-<UTC>.json``; ``--dry-run-tiny`` runs
the whole path on a tiny grid (the tests, on a CPU). ``python -m batchcam unpack OUT/records.tar.gz``
verifies the records and adds them to ``results/`` (:mod:`batchcam.archive`, re-exported here).

Provenance: the session refuses to start from a tree whose result files (:data:`RESULT_FILES`, the code
that can change a run's numbers) have uncommitted changes, unless their code equals that of the clean
commit ``gpu-run --stamp`` recorded in ``gpu-stamp.json`` (a lent GPU's copy of the git metadata can be
older than its code; the records then carry the stamp); records carry the commit and the code's
fingerprints; the archive is rewritten after each finished run (≤ 16 MiB, ≤ 16 MiB uncompressed), so a
session cut short still brings back what it finished.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import io
import json
import statistics
import tarfile
import time
from pathlib import Path

import torch

from . import plan as planner
from ._helpers import amp_autocast, atomic_write_json, resolve_device
from .archive import MAX_TOTAL_BYTES, add_unpack_arguments, run_unpack, unpack
from .config import NUM_CLASSES, TrainConfig
from .grid import GRID_MODELS, paper_grid, pending
from .launch import assume_cuda
from .losses import OBJECTIVES, objective_loss
from .models import MODEL_SPECS, create_model, default_target_layer
from .provenance import REPO, RESULT_FILES, code_hashes, git
from .results import is_complete, results_root
from .runpool import RunPool, calibrate, describe, train_run
from .train import load_data  # noqa: F401 - the tests' no_work fixture patches it here

__all__ = ["add_arguments", "run", "smoke_test", "dirty_result_files", "write_stamp", "matching_stamp", "unpack",
           "add_unpack_arguments", "run_unpack"]

ARCHIVE = "records.tar.gz"
MAX_ARCHIVE_BYTES = 16 * 2**20
STAMP = REPO / "gpu-stamp.json"  # written by gpu-run --stamp; not committed
MAX_FAILURES = 3  # failed runs before the session stops (a systematic error would burn the budget)
#: The tiny grid of ``--dry-run-tiny`` (chapter 7): the whole path in well under a minute on a CPU.
DRY_RUN = dict(n_train=200, n_test=100, epochs=1, eval_faithfulness_samples=4, eval_cam_loop_samples=4)


def _log(msg: str) -> None:
    print(f"[gpu-run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def smoke_test(device: torch.device, models=GRID_MODELS, sizes=None, amp=None) -> dict:
    """Every path a GPU run uses, on small inputs x [16, 1, S, S], y [16] (≤ 30 s on a GPU; chapter 7): autocast
    (``amp``: False, True / "bf16" or "fp16", as ``amp_autocast`` takes it; default: on CUDA) and channels_last
    forward, batch Grad-CAM equal to the per-image loop, one training step of each objective with
    ``create_graph`` (on CUDA under ``set_sync_debug_mode("error")``: a step that waits for the GPU fails),
    data resident on the device as uint8, peak memory. ``sizes``: model → S. Raises on failure."""
    from .cam import batch_gradcam, gradcam_loop
    from .data import TensorLoader

    cuda, out = device.type == "cuda", {}
    amp = cuda if amp is None else amp
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.arange(64) % NUM_CLASSES
    for name in models:
        size = (sizes or {}).get(name) or MODEL_SPECS[name].image_size
        torch.manual_seed(0)
        model = create_model(name, NUM_CLASSES, 1, size).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        layer = default_target_layer(name)
        loader = TensorLoader(images, labels, 16, image_size=size, device=device, channels_last=cuda)
        assert loader.images.dtype == torch.uint8 and loader.images.device.type == device.type, "data not resident"
        x, y = next(iter(loader))
        model.eval()
        a, b = batch_gradcam(model, x, layer, y), gradcam_loop(model, x, layer, y)
        out[f"{name}_max_diff_batch_vs_loop"] = diff = float((a - b).abs().max())
        if diff > 1e-3:
            raise AssertionError(f"{name}: batch Grad-CAM differs from the per-image loop by {diff:.2e}")
        with amp_autocast(device, amp):
            logits = model(x)
        assert logits.shape == (16, NUM_CLASSES) and torch.isfinite(logits.float()).all()
        model.train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        protos = torch.rand(NUM_CLASSES, size, size, device=device)
        for objective in OBJECTIVES:
            spec = TrainConfig(model=name, objective=objective, device=str(device)).objective_spec()
            for step in range(2):  # the second step runs with sync debugging on
                strict = cuda and step == 1
                if strict:
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    terms, _ = objective_loss(spec, model, x, y, layer=layer, prototypes=protos, amp=amp)
                    opt.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    opt.step()
                finally:
                    if strict:
                        torch.cuda.set_sync_debug_mode(0)
            if not torch.isfinite(terms["total"]).item():
                raise AssertionError(f"{name}/{objective}: non-finite loss")
        if cuda:
            out[f"{name}_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        del model, opt
    return out


def _pack(paths: list[Path], out: Path) -> Path:
    """Write ``out/records.tar.gz`` atomically with ``paths`` (flat names)."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in paths:
            tar.add(p, arcname=f"{p.parent.name}/{p.name}")
    if sum(p.stat().st_size for p in paths) > MAX_TOTAL_BYTES:  # what unpack accepts, uncompressed
        raise RuntimeError(f"records would be over {MAX_TOTAL_BYTES / 2**20:.0f} MiB uncompressed")
    if buf.tell() > MAX_ARCHIVE_BYTES:
        raise RuntimeError(f"archive would be {buf.tell() / 2**20:.1f} MiB > 16 MiB")
    tmp = out / f".{ARCHIVE}.tmp"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out / ARCHIVE)
    return out / ARCHIVE


def dirty_result_files() -> list[str] | None:
    """The result files (:data:`~batchcam.provenance.RESULT_FILES`) with uncommitted changes, untracked ones
    included (``git status --porcelain``); None when git cannot tell (no repository); chapter 7."""
    status = git("status", "--porcelain", "--", *RESULT_FILES)
    return None if status is None else [line.split(maxsplit=1)[-1] for line in status.splitlines() if line.strip()]


def write_stamp() -> Path:
    """``gpu-stamp.json`` at the repository's root (chapter 7): the commit and the fingerprints of the result
    files of a clean tree (ValueError if not clean). Untracked, it travels with the working tree to a lent
    GPU whose copy of the git metadata may be older than the code; there a session whose code matches the
    stamp starts, and its records name the stamp's commit (``"stamp"``)."""
    dirty = dirty_result_files()
    if dirty is None or dirty:
        raise ValueError("--stamp needs a clean tree: " + ("no git repository" if dirty is None else
                                                           f"uncommitted changes to {', '.join(dirty[:3])}"))
    return atomic_write_json(STAMP, {"commit": git("rev-parse", "HEAD"), "code_sha256": code_hashes(),
                                     "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat()})


def matching_stamp() -> dict | None:
    """The stamp (:func:`write_stamp`) when the result files' code equals the stamped code, else None (chapter 7)."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("code_sha256") == code_hashes() else None


def add_arguments(p) -> None:
    """The ``gpu-run`` flags on the argparse parser ``p`` (chapter 7, "run it yourself")."""
    p.add_argument("--budget-s", type=float, default=planner.COMMAND_BUDGET_S, help="wall-clock budget in seconds")
    p.add_argument("--out", default="gpu-out", help="folder for records.tar.gz and the log")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the tests)")
    p.add_argument("--models", nargs="+", choices=GRID_MODELS, default=None,
                   help=f"priority order of the models (default: {' '.join(planner.GPU_MODELS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="default: 0-9, in this order")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--recipe", choices=sorted(planner.GPU_RECIPES), default=planner.DEFAULT_RECIPE,
                   help="training subset, image sizes, faithfulness samples (batchcam.plan.GPU_RECIPES)")
    p.add_argument("--n-train", type=int, default=None, help="training subset")
    p.add_argument("--n-test", type=int, default=None, help="test subset")
    p.add_argument("--epochs", type=int, default=None, help="override the grid's epochs")
    p.add_argument("--faithfulness-samples", type=int, default=None, help="override the recipe's")
    p.add_argument("--bench", default="", help="arguments of a benchmark step, e.g. '--preset gpu-short' "
                   "(default: none)")
    p.add_argument("--calibrate", nargs="?", const="only", default="auto", choices=("auto", "only", "skip"),
                   help="measure the planner's prices: alone (--calibrate), when the device has none (auto), never")
    p.add_argument("--calibrate-k", type=int, nargs="+", default=[1, 2, 4], help="the K the calibration times")
    p.add_argument("--calibrate-s", type=float, default=2.0, help="seconds of each of its timed loops")
    p.add_argument("--concurrency", type=int, default=None,
                   help="K runs at once (default: the calibration's best, else 1)")
    p.add_argument("--plan", action="store_true", help="print the pending runs with estimated seconds; no GPU needed")
    p.add_argument("--device-name", default=None, help="the device --plan prices (default: this GPU, else H100)")
    p.add_argument("--allow-dirty", action="store_true", help="run although result files have uncommitted changes")
    p.add_argument("--stamp", action="store_true", help="write gpu-stamp.json (commit and code fingerprints of a "
                   "clean tree) for a GPU machine whose git metadata may be stale; then exit")
    p.add_argument("--dry-run-tiny", action="store_true", help="the whole path on 200/100 images, 1 epoch, seed 0, "
                   "ce and ce+proto+batchcam on MNIST (default models: simplecnn resnet18), 2 runs at once")
    p.add_argument("--work", default=None, help="records are written here first (default: OUT/work)")


def _configs(args, device: torch.device, work: Path, amp: dict) -> list[TrainConfig]:
    common = dict(out_dir=str(work), device=str(device), **amp)
    if args.dry_run_tiny:
        return paper_grid([0], ["mnist"], args.models or ["simplecnn", "resnet18"], ["ce", "ce+proto+batchcam"],
                          random_baseline=False, **{**DRY_RUN, **common})
    return planner.gpu_grid(args.seeds, args.recipe, args.models or planner.GPU_MODELS, args.datasets,
                            n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
                            eval_faithfulness_samples=args.faithfulness_samples, **common)


def _print_plan(args) -> int:
    name = args.device_name or (torch.cuda.get_device_name() if torch.cuda.is_available() else "H100")
    key = planner.device_key(name, strict=bool(args.device_name))
    cost = planner.cost_model(name, strict=bool(args.device_name))
    calibrated = planner.latest_calibration(key) is not None
    k = args.concurrency or ((planner.latest_calibration(key) or (None, {}))[1].get("best_k") or 1)
    first = planner.session_overhead_s(bool(args.bench), args.calibrate == "auto" and not calibrated, k)
    rest = planner.session_overhead_s(bool(args.bench), False, k)
    with assume_cuda(key != "cpu"):  # the run ids a session on that device writes, on any machine
        configs = _configs(args, torch.device("cpu" if key == "cpu" else "cuda"), Path("results"),
                           planner.amp_overrides(planner.amp_dtype(key))[0])
        rows = planner.plan(configs, cost, args.budget_s, first, rest, k)
    print(planner.format_plan(rows, cost, args.budget_s, first, rest, args.recipe, k, planner.amp_dtype(key)))
    return 0


def run(args) -> int:
    """The whole ``gpu-run`` session (chapter 7); exit code 0, or 3 when the smoke test failed."""
    if not 0 < args.budget_s < float("inf"):
        raise ValueError(f"--budget-s must be a finite number of seconds > 0, got {args.budget_s}")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError(f"--concurrency must be ≥ 1, got {args.concurrency}")
    if min(args.calibrate_k) < 1 or not 0 < args.calibrate_s < 60:
        raise ValueError("--calibrate-k must be ≥ 1 and --calibrate-s in (0, 60)")
    if args.plan:
        return _print_plan(args)
    if args.stamp:
        print(f"stamp: {write_stamp()}")
        return 0
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device {args.device!r}: {exc}") from None
    start, out, wall_start = time.perf_counter(), Path(args.out), time.time()
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    work = Path(args.work) if args.work else out / "work"
    amp, amp_note = planner.amp_overrides(planner.amp_dtype(device))
    mode = amp.get("amp_dtype", "bf16") if amp.get("amp") else False  # what amp_autocast(device, mode) gets
    configs = _configs(args, device, work, amp)  # validates every run before any work
    models = list(dict.fromkeys(c.model for c in configs))
    stamp = matching_stamp()
    if not (args.allow_dirty or args.dry_run_tiny or stamp):
        dirty = dirty_result_files()
        if dirty is None:
            raise ValueError("cannot read git status (no repository?); run gpu-run --stamp on a clean tree "
                             "first, or pass --allow-dirty")
        if dirty:
            raise ValueError(f"uncommitted changes to result files ({', '.join(dirty[:3])}"
                             f"{' …' if len(dirty) > 3 else ''}): commit them first, or pass --allow-dirty")
    info = {**describe(device), "amp": amp_note, "stamp": stamp}
    _log("versions: " + json.dumps(info))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        info["smoke"] = smoke_test(device, models, {c.model: c.resolved().image_size for c in configs},
                                   mode)
    except Exception as exc:  # noqa: BLE001 - a failed path stops the session before it spends the budget
        _log(f"SMOKE TEST FAILED, stopping: {type(exc).__name__}: {exc}")
        return 3
    _log(f"smoke test passed in {time.perf_counter() - t0:.1f} s: {json.dumps(info['smoke'])}")
    (out / "session.json").write_text(json.dumps(info, indent=1))
    new: list[Path] = []
    name = info.get("device_name", "cpu")
    if args.calibrate == "only" or (args.calibrate == "auto" and not args.dry_run_tiny
                                    and planner.latest_calibration(planner.device_key(name, False)) is None):
        try:
            new.append(calibrate(device, models, args.recipe, mode, args.calibrate_k,
                                 args.calibrate_s, log=_log))
            _log(f"calibration: {new[-1]}")
            _pack(new, out)
        except Exception as exc:  # noqa: BLE001 - the runs need no calibration: go on without one
            _log(f"CALIBRATION FAILED, going on with the extrapolated cost model: {type(exc).__name__}: {exc}")
            if args.calibrate == "only":
                return 3
        if args.calibrate == "only":
            return 0
    if args.bench:
        import argparse

        from . import bench
        parser = argparse.ArgumentParser(prog="gpu-run --bench")
        bench.add_arguments(parser)
        code = bench.run(parser.parse_args(["--device", str(device), *args.bench.split()]))
        new += sorted(p for p in results_root("bench").glob(f"bench-{device.type}-*.json")
                      if p.stat().st_mtime >= wall_start)
        _log(f"bench exit {code}")
        _pack(new, out)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _train(args, configs, new, out, work, left, name, {"stamp": stamp} if stamp else None)


def _train(args, configs, new: list[Path], out: Path, work: Path, left, name: str, extra) -> int:
    """Pending runs in priority order, K at once, each started only if its estimate fits what is left."""
    cost = planner.cost_model(name, strict=False)
    found = planner.latest_calibration(planner.device_key(name, False))
    k = args.concurrency or (2 if args.dry_run_tiny else (found[1].get("best_k", 1) if found else 1))
    todo = pending([c for c in configs if not is_complete(c.run_id, results_root("runs"))], work / "runs")
    _log(f"{len(todo)} pending runs, {left():.0f} s left, K = {k}; cost model: {cost.source}")
    ratios: dict[str, list[float]] = {}
    running, done_n, failures, warm, full = {}, 0, 0, set(), False
    with RunPool(min(k, max(1, len(todo)))) as pool:
        while todo or running:
            while todo and len(running) < pool.k and failures < MAX_FAILURES and not full:
                config = todo[0]
                room = MAX_TOTAL_BYTES - sum(p.stat().st_size for p in new)
                full = (len(running) + 1) * planner.record_bytes(config) > room
                if full:
                    _log(f"the archive is full ({MAX_TOTAL_BYTES / 2**20:.0f} MiB uncompressed): no more runs")
                    break
                todo.pop(0)
                hot = config.model in warm and pool.k == 1  # K workers each warm up once per model
                est = cost.run_s(config, pool.k, warm=hot)["total"]
                if est > left() - 5:
                    _log(f"skip {config.run_id}: needs ~{est:.0f} s, {left():.0f} s left")
                    continue
                warm.add(config.model)
                base = cost.run_s(config, pool.k, corrected=False, warm=hot)["total"] / planner.PLAN_MARGIN
                running[pool.submit(train_run, config, str(work / "runs"), extra)] = (config, est, base)
            if not running:
                break
            finished, _ = cf.wait(running, timeout=max(1.0, left()), return_when=cf.FIRST_COMPLETED)
            if not finished:
                _log(f"budget spent with {len(running)} run(s) in flight: stopping them")
                pool.close(cancel=True)
                break
            for future in finished:
                config, est, base = running.pop(future)
                try:
                    res = future.result()
                except Exception as exc:  # noqa: BLE001 - one failed run does not end the session
                    failures += 1
                    _log(f"{config.run_id} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                    continue
                new += [Path(p) for p in res["files"]]
                _pack(new, out)
                done_n += 1
                ratios.setdefault(config.model, []).append(res["seconds"] / base)
                cost.correction[config.model] = statistics.median(ratios[config.model])
                _log(f"{config.run_id}: acc {res['accuracy']:.4f}, dead {res['dead_fraction']:.1%}, "
                     f"{res['seconds']:.0f} s (est. {est:.0f}), {left():.0f} s left")
    _log(f"done: {done_n} new records, {len(todo)} left pending, {left():.0f} s left"
         + (f"; stopped after {failures} failed runs" if failures >= MAX_FAILURES else ""))
    return 0

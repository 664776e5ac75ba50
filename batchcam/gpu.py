"""One prepared GPU session: smoke-test every CUDA path, benchmark, then train pending grid runs
until a time budget is spent, packing every new record into one archive (chapter 6, "run it
yourself"; the README gives the commands).

``python -m batchcam gpu-run --budget-s 500 --out OUT`` (``--device cpu`` runs the same code
path on a CPU, as the tests do) and ``python -m batchcam unpack OUT/records.tar.gz`` to verify
and add the records to ``results/`` (:mod:`batchcam.archive`, re-exported here). The archive is
rewritten after each finished run, so a session cut short still brings back what it finished.
"""

from __future__ import annotations

import dataclasses
import io
import json
import platform
import subprocess
import tarfile
import time
from pathlib import Path

import torch

from ._helpers import resolve_device
from .archive import MAX_TOTAL_BYTES, add_unpack_arguments, run_unpack, unpack
from .config import NUM_CLASSES, TrainConfig
from .grid import GRID_MODELS, paper_grid, pending
from .losses import OBJECTIVES, objective_loss
from .models import create_model, default_target_layer
from .results import is_complete, results_root
from .runner import fit_and_record
from .train import load_data

__all__ = ["add_arguments", "run", "smoke_test", "unpack", "add_unpack_arguments", "run_unpack"]

ARCHIVE = "records.tar.gz"
MAX_ARCHIVE_BYTES = 16 * 2**20


def _log(msg: str) -> None:
    print(f"[gpu-run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def describe(device: torch.device) -> dict:
    """Device, driver and library versions (printed first)."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": str(device)}
    for lib in ("torchvision", "timm", "torchmetrics"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            info[lib] = None
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def smoke_test(device: torch.device, models=GRID_MODELS) -> dict:
    """Every path a GPU run uses, on small inputs x [16, 1, S, S], y [16] (≤ 30 s on a GPU; chapter 6): bf16
    autocast and channels_last forward, batch Grad-CAM equal to the per-image loop, one training step of each
    objective with ``create_graph`` (on CUDA under ``set_sync_debug_mode("error")``: a step that waits for the
    GPU fails), data resident on the device, peak memory. Raises on failure."""
    from .cam import batch_gradcam, gradcam_loop
    from .data import TensorLoader

    cuda, out = device.type == "cuda", {}
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.arange(64) % NUM_CLASSES
    for name in models:
        size = 112 if name == "convnextv2_tiny" else 28
        torch.manual_seed(0)
        model = create_model(name, NUM_CLASSES, 1, size).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        layer = default_target_layer(name)
        loader = TensorLoader(images, labels, 16, image_size=size, device=device, channels_last=cuda)
        x, y = next(iter(loader))
        assert x.device.type == device.type, "batches are not on the device"
        model.eval()
        a, b = batch_gradcam(model, x, layer, y), gradcam_loop(model, x, layer, y)
        out[f"{name}_max_diff_batch_vs_loop"] = diff = float((a - b).abs().max())
        if diff > 1e-3:
            raise AssertionError(f"{name}: batch Grad-CAM differs from the per-image loop by {diff:.2e}")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
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
                    terms, _ = objective_loss(spec, model, x, y, layer=layer, prototypes=protos, amp=cuda)
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


def _estimate_s(config: TrainConfig, measured: dict, data) -> float:
    """Seconds a run will take: from a finished run of the same model and objective family, else
    from 5 timed training steps (× steps per epoch × epochs, plus evaluation), with 30 % margin."""
    key = (config.model, config.objective == "ce", config.epochs)
    if key in measured:
        return 1.3 * measured[key]
    if config.epochs == 0:
        return 20.0
    device = torch.device(config.device)
    c = config.resolved()
    model = create_model(c.model, NUM_CLASSES, 1, c.image_size).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(c.batch_size, 1, c.image_size, c.image_size, device=device)
    y = torch.arange(c.batch_size, device=device) % NUM_CLASSES
    protos = torch.rand(NUM_CLASSES, c.image_size, c.image_size, device=device)
    spec = c.objective_spec()
    for i in range(7):
        if i == 2:
            t0 = time.perf_counter()
        terms, _ = objective_loss(spec, model, x, y, layer=c.layer, prototypes=protos, amp=device.type == "cuda")
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step = (time.perf_counter() - t0) / 5
    steps = len(data[0][1]) // c.batch_size
    return 1.3 * step * steps * c.epochs * 1.5 + 30


def add_arguments(p) -> None:
    """The ``gpu-run`` flags on the argparse parser ``p`` (chapter 6, "run it yourself")."""
    p.add_argument("--budget-s", type=float, default=500, help="wall-clock budget in seconds")
    p.add_argument("--out", default="gpu-out", help="folder for records.tar.gz and the log")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the tests)")
    p.add_argument("--models", nargs="+", choices=GRID_MODELS, default=list(GRID_MODELS),
                   help="priority order of the grid's models (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--n-train", type=int, default=None, help="training subset (the CPU tests)")
    p.add_argument("--n-test", type=int, default=None, help="test subset (the CPU tests)")
    p.add_argument("--epochs", type=int, default=None, help="override the grid's epochs")
    p.add_argument("--faithfulness-samples", type=int, default=None, help="override the grid's (500)")
    p.add_argument("--bench", default="--preset gpu-short", help="arguments of the benchmark step ('' to skip)")
    p.add_argument("--work", default=None, help="records are written here first (default: OUT/work)")


def run(args) -> int:
    """The whole ``gpu-run`` session (chapter 6); exit code 0, or 3 when the smoke test failed."""
    if not 0 < args.budget_s < float("inf"):
        raise ValueError(f"--budget-s must be a finite number of seconds > 0, got {args.budget_s}")
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device {args.device!r}: {exc}") from None
    start, out, wall_start = time.perf_counter(), Path(args.out), time.time()
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    work = Path(args.work) if args.work else out / "work"
    configs = [dataclasses.replace(c, out_dir=str(work), device=str(device))
               for c in paper_grid(seeds=args.seeds, datasets=args.datasets, models=args.models,
                                   n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
                                   eval_faithfulness_samples=args.faithfulness_samples)]
    info = describe(device)
    _log("versions: " + json.dumps(info))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        info["smoke"] = smoke_test(device, args.models)
    except Exception as exc:  # noqa: BLE001 - a failed path stops the session before it spends the budget
        _log(f"SMOKE TEST FAILED, stopping: {type(exc).__name__}: {exc}")
        return 3
    _log(f"smoke test passed in {time.perf_counter() - t0:.1f} s: {json.dumps(info['smoke'])}")
    (out / "session.json").write_text(json.dumps(info, indent=1))
    new: list[Path] = []
    if args.bench:
        import argparse

        from . import bench
        t0 = time.perf_counter()
        parser = argparse.ArgumentParser(prog="gpu-run --bench")
        bench.add_arguments(parser)
        code = bench.run(parser.parse_args(["--device", str(device), *args.bench.split()]))
        bench_dir = results_root("bench")
        new += sorted(p for p in bench_dir.glob(f"bench-{device.type}-*.json") if p.stat().st_mtime >= wall_start)
        _log(f"bench exit {code} in {time.perf_counter() - t0:.1f} s")
        if new:
            _pack(new, out)
    todo = [c for c in configs if not is_complete(c.run_id, results_root("runs"))]
    todo = pending(todo, work / "runs")
    _log(f"{len(todo)} pending runs, {left():.0f} s left")
    measured, data_cache = {}, {}
    for config in todo:
        if left() < 5:
            _log(f"budget spent; {len(todo) - len(measured)} runs left pending")
            break
        key = (config.dataset, config.n_train, config.n_test, config.seed)
        if key not in data_cache:
            data_cache[key] = load_data(config)
        estimate = _estimate_s(config, measured, data_cache[key])
        if estimate > left():
            _log(f"skip {config.run_id}: needs ~{estimate:.0f} s, {left():.0f} s left")
            continue
        t0 = time.perf_counter()
        run_, path = fit_and_record(config, root=work / "runs", resume=False, data=data_cache[key])
        record = {"final": {"accuracy": run_.evaluation["accuracy"], **run_.evaluation["maps"]}}
        new += [path, path.parent / json.loads(path.read_text())["tensors"]["file"]]  # the pair, as named
        measured[(config.model, config.objective == "ce", config.epochs)] = time.perf_counter() - t0
        _log(f"{config.run_id}: acc {record['final']['accuracy']:.4f}, dead "
             f"{record['final']['dead_fraction']:.1%}, {time.perf_counter() - t0:.0f} s (est. {estimate:.0f})")
        _pack(new, out)
    _log(f"done: {len([p for p in new if p.suffix == '.json'])} new records, {left():.0f} s left")
    return 0

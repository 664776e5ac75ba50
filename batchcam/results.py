"""Run records: one JSON file per training run, with its provenance, and the tables built from them.

Chapter 6 builds the paper's tables and figures from these records only, so every number in the
book can be traced to a run (its configuration, per-epoch history, final metrics, timings, the
machine and the code version). Layout under ``<out_dir>/runs`` (committed to git)::

    <run_id>.json         the record (``REQUIRED_KEYS``), written last: its presence marks a finished run
    <run_id>.tensors.pt   average reconstruction [C, H, W] and prototypes [C, 1, H, W], float16
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.nn.functional as F

from ._helpers import atomic_torch_save, atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    from .train import Run

__all__ = ["SCHEMA_VERSION", "REQUIRED_KEYS", "FINAL_KEYS", "provenance", "scale_label", "build_record",
           "write_record", "record_path", "load_record", "validate_record", "is_complete", "load_runs",
           "load_tensors"]

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "run_id", "config", "history", "final", "timings", "scale", "runtime",
                 "tensors", "provenance")
FINAL_KEYS = ("accuracy", "l1", "l2", "ssim", "per_class", "train_time_per_epoch_s", "gradcam_batch_s",
              "gradcam_loop_s", "gradcam_loop_s_scaled")
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "test_accuracy", "train_time_s", "eval_time_s")
MAX_STORED_SIZE = 56  # tensors larger than this (ConvNeXt-V2 at 112 px) are stored area-downsampled to 56 px
_REPO = Path(__file__).resolve().parent.parent


def default_results_root() -> Path:
    """Where the committed run records are: ``$BATCHCAM_RESULTS`` if set, else ``<repo>/results/runs``
    in a source checkout (so notebooks running in ``book/`` find them), else ``./results/runs``."""
    if os.environ.get("BATCHCAM_RESULTS"):
        return Path(os.environ["BATCHCAM_RESULTS"]).expanduser()
    if (_REPO / "pyproject.toml").is_file():
        return _REPO / "results" / "runs"
    return Path("results") / "runs"


DEFAULT_ROOT = default_results_root()


# --------------------------------------------------------------------------- provenance


def _git(*args: str) -> Optional[str]:
    """Output of ``git args`` in the package's repository, or None (no git, not a repo, no commit)."""
    try:
        proc = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: Union[str, torch.device, None] = None) -> dict:
    """Where and with what a run was made: code version, library versions, machine, UTC date.

    Fails soft: a value that cannot be found is ``None``. ``device`` names the device the run
    used (its CUDA name is reported; otherwise the CPU model).
    """
    from . import __version__

    device = torch.device(device) if device is not None else None
    commit = _git("rev-parse", "HEAD")
    # dirty: a tracked file changed, or a file of the package itself is not committed yet
    status = [_git("status", "--porcelain", "--untracked-files=no"),
              _git("status", "--porcelain", "--", Path(__file__).parent.name)] if commit else [None]
    on_cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
    return {
        "git_commit": commit,
        "git_dirty": any(status) if None not in status else None,
        "batchcam": __version__,
        "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "torchvision", "timm", "torchmetrics")},
        "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda": torch.version.cuda,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def scale_label(device_type: str, subset: bool) -> str:
    """``"cpu-full"``, ``"cpu-subset"``, ``"gpu-full"``, ``"gpu-subset"`` (``mps-…`` etc. for other devices)."""
    kind = "gpu" if device_type == "cuda" else device_type
    return f"{kind}-{'subset' if subset else 'full'}"


# --------------------------------------------------------------------------- writing


def record_path(run_id: str, root: Union[str, Path] = DEFAULT_ROOT) -> Path:
    """``<root>/<run_id>.json``."""
    return Path(root) / f"{run_id}.json"


def _tensors_path(run_id: str, root: Union[str, Path]) -> Path:
    return Path(root) / f"{run_id}.tensors.pt"


def _for_storage(t: torch.Tensor) -> torch.Tensor:
    """float16, area-downsampled to ``MAX_STORED_SIZE`` px when larger. [C, H, W] or [C, 1, H, W]."""
    t = t.detach().float().cpu()
    if t.shape[-1] > MAX_STORED_SIZE:
        x = t if t.dim() == 4 else t.unsqueeze(1)
        x = F.interpolate(x, size=(MAX_STORED_SIZE, MAX_STORED_SIZE), mode="area")
        t = x if t.dim() == 4 else x[:, 0]
    return t.half()


def build_record(run: "Run") -> dict:
    """The JSON-serialisable record of a finished :class:`~batchcam.train.Run`."""
    config = run.config
    size = run.average_reconstruction.shape[-1]
    stored = min(size, MAX_STORED_SIZE)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": config.run_id,
        "config": asdict(config),
        "history": run.history,
        "final": run.final,
        "timings": run.timings,
        "scale": scale_label(run.runtime["device_type"], bool(config.n_train or config.n_test)),
        "runtime": run.runtime,
        "tensors": {"file": _tensors_path(config.run_id, ".").name, "keys": ["average_reconstruction", "prototypes"],
                    "dtype": "float16", "image_size": size, "stored_size": stored,
                    "note": (f"downsampled from {size} px to {stored} px (area) for storage" if stored != size
                             else "stored at the training image size")},
        "provenance": provenance(run.runtime["device"]),
    }


def write_record(run: "Run") -> Path:
    """Write ``<out_dir>/runs/<run_id>.json`` and ``<run_id>.tensors.pt`` atomically; return the JSON path.

    The tensors are written first and the JSON last, so a record on disk always has its tensors.
    """
    record = build_record(run)
    validate_record(record)
    root = Path(run.config.out_dir) / "runs"
    atomic_torch_save({"average_reconstruction": _for_storage(run.average_reconstruction),
                       "prototypes": _for_storage(run.prototypes)}, _tensors_path(record["run_id"], root))
    return atomic_write_json(record_path(record["run_id"], root), record)


# --------------------------------------------------------------------------- reading


def validate_record(record: Any) -> dict:
    """Raise ValueError naming what is missing or malformed; return ``record``."""
    if not isinstance(record, dict):
        raise ValueError(f"a run record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"run record {record.get('run_id', '?')!r} lacks keys {missing}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"run record {record['run_id']!r} has schema_version {record['schema_version']}, "
                         f"expected {SCHEMA_VERSION}")
    missing = [k for k in FINAL_KEYS if k not in record["final"]]
    if missing:
        raise ValueError(f"run record {record['run_id']!r}: 'final' lacks {missing}")
    if not isinstance(record["history"], list) or not record["history"]:
        raise ValueError(f"run record {record['run_id']!r}: 'history' must be a non-empty list of epochs")
    missing = sorted({k for row in record["history"] for k in HISTORY_KEYS if k not in row})
    if missing:
        raise ValueError(f"run record {record['run_id']!r}: history rows lack {missing}")
    return record


def load_record(path: Union[str, Path]) -> dict:
    """Read and validate one record."""
    return validate_record(json.loads(Path(path).read_text()))


def is_complete(run_id: str, root: Union[str, Path] = DEFAULT_ROOT) -> bool:
    """True when ``<root>/<run_id>.json`` exists and is a valid record."""
    try:
        load_record(record_path(run_id, root))
    except (OSError, ValueError):
        return False
    return True


def _row(record: dict) -> dict:
    """Flatten a record into one table row."""
    config, final, runtime, prov = record["config"], record["final"], record["runtime"], record["provenance"]
    keys = ("dataset", "model", "objective", "distance", "lambda_proto", "lambda_batchcam", "seed", "epochs",
            "image_size", "batch_size", "optimizer", "lr", "n_train", "n_test")
    row = {"run_id": record["run_id"], **{k: config.get(k) for k in keys}, "scale": record["scale"],
           "device": runtime.get("device_type"), "device_name": prov.get("device_name")}
    for k in ("accuracy", "l1", "l2", "ssim", "train_accuracy", "train_time_per_epoch_s", "gradcam_batch_s",
              "gradcam_loop_s", "gradcam_loop_samples", "gradcam_loop_s_scaled", "gradcam_speedup"):
        row[k] = final.get(k)
    row.update(git_commit=prov.get("git_commit"), date_utc=prov.get("date_utc"))
    return row


def load_runs(root: Union[str, Path] = DEFAULT_ROOT, as_frame: bool = False):
    """All records under ``root`` as flattened rows, sorted by run id (chapter 6).

    Each row has ``run_id, dataset, model, objective, distance, seed, epochs, image_size, scale,
    device, accuracy, l1, l2, ssim, train_time_per_epoch_s, gradcam_batch_s, gradcam_loop_s_scaled``
    and a few more. Invalid files are skipped with a warning. With ``as_frame=True`` and pandas
    importable, a ``pandas.DataFrame`` is returned instead of a list of dicts.
    """
    rows = []
    for path in sorted(Path(root).glob("*.json")):
        try:
            rows.append(_row(load_record(path)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
    if as_frame:
        try:
            import pandas as pd
        except ImportError:
            warnings.warn("pandas is not installed; returning a list of dicts", stacklevel=2)
        else:
            return pd.DataFrame(rows)
    return rows


def load_tensors(run_id: str, root: Union[str, Path] = DEFAULT_ROOT) -> dict[str, torch.Tensor]:
    """``{"average_reconstruction": [C, H, W], "prototypes": [C, 1, H, W]}`` as float32 (H ≤ 56, see the record)."""
    data = torch.load(_tensors_path(run_id, root), map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in data.items()}

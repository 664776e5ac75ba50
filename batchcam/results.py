"""Records: the one module that owns their format, where they live, writing and loading.

Chapter 7 (and chapters 3, 6, 8) read every number from these records, so each one carries its
configuration, per-epoch history, final metrics, timings, machine and code version. Layout::

    <root>/runs/<run_id>.json          a training run (schema ``SCHEMA_VERSION``)
    <root>/runs/<run_id>.tensors.pt    average map per class and prototypes [C, H, W], float16
    <root>/bench/bench-<device>-<UTC>.json   a benchmark run (``python -m batchcam bench``)

A run's JSON holds the SHA-256 of its tensors file and is written last, so the pair is one unit:
a JSON whose tensors do not match is not complete. A record is never replaced unless asked
(``force=True``, ``--force``), and only records whose numbers are all finite are written.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from ._helpers import atomic_write_bytes, atomic_write_json, fsynced_temp
from .digest import RECORD_HASH_FIELD, record_hash_ok, with_hash
from .provenance import REPO, provenance

__all__ = ["SCHEMA_VERSION", "RecordExistsError", "results_root", "provenance", "record_from_run", "write_run",
           "load_record", "is_complete", "load_runs", "load_tensors", "write_bench_record", "latest_bench",
           "latest_bench_path", "verify_records"]

SCHEMA_VERSION = 2
REQUIRED_KEYS = ("schema_version", "run_id", "config", "config_hash", "history", "final", "timings",
                 "scale", "runtime", "tensors", "provenance")
FINAL_KEYS = ("accuracy", "l1", "l2", "ssim", "dead_fraction", "per_class")
MAX_STORED_SIZE = 56  # larger maps (ConvNeXt-V2 at 112 px) are stored area-downsampled to 56 px
PathLike = Union[str, Path]
_REPO = REPO


class RecordExistsError(FileExistsError):
    """A record with this id is already there and ``force`` was not given (chapter 7: replaced only on request)."""


def results_root(kind: str = "runs") -> Path:
    """Folder of the committed records of ``kind`` (``"runs"`` or ``"bench"``), found at call time (chapter 7).

    In order: ``$BATCHCAM_RESULTS/<kind>``; the repository this package was imported from (a
    source checkout, also in Colab after the install cell's clone); the first ``results/<kind>``
    in the working directory or one of its parents (a notebook in ``book/``); the records
    fetched by ``batchcam.records.fetch_records`` (an installed package); else ``./results/<kind>``.
    """
    if os.environ.get("BATCHCAM_RESULTS"):
        return Path(os.environ["BATCHCAM_RESULTS"]).expanduser() / kind
    if (_REPO / "pyproject.toml").is_file() and (_REPO / "results").is_dir():
        return _REPO / "results" / kind
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "results" / kind).is_dir():
            return folder / "results" / kind
    from .records import CACHE
    return CACHE / kind if (CACHE / kind).is_dir() else Path("results") / kind


# --------------------------------------------------------------------------- run records


def _finite(obj: Any, where: str = "record") -> None:
    """Raise ValueError naming the first NaN or infinite number in ``obj``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{where} is {obj}: a record is complete only if every number is finite")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _finite(v, f"{where}[{i}]")


def _for_storage(t: torch.Tensor) -> torch.Tensor:
    """[C, H, W] as float16, area-downsampled to ``MAX_STORED_SIZE`` px when larger."""
    t = t.detach().float().cpu()
    if t.shape[-1] > MAX_STORED_SIZE:
        t = F.interpolate(t[:, None], size=(MAX_STORED_SIZE, MAX_STORED_SIZE), mode="area")[:, 0]
    return t.half()


def write_run(record: dict, tensors: dict[str, torch.Tensor], root: Optional[PathLike] = None, *,
              force: bool = False) -> Path:
    """Publish a run record: ``<root>/<run_id>.<sha12>.tensors.pt`` (``tensors``: [C, H, W] each), then
    ``<root>/<run_id>.json``, which names the tensors file with its SHA-256 and carries ``record_sha256``,
    the SHA-256 of its own canonical JSON (chapter 7). ``root`` defaults to ``results_root()``.

    The JSON is the one switch that publishes a record: it is written to a temporary file, fsynced,
    then hard-linked to its name (``os.link`` fails if the name exists, so of two concurrent writers
    exactly one wins and the other gets :class:`RecordExistsError`). The tensors file is named by its
    content, so no writer ever overwrites another's. With ``force`` the new JSON replaces the old one in
    one ``os.replace`` after everything else is on disk: a writer killed before that leaves the old
    record intact. An incomplete record (invalid JSON, no ``final``, a hash that does not match) is
    pending: it is replaced without ``force``.

    Raises :class:`RecordExistsError` if a complete record with this id exists and ``force`` is False,
    and ValueError if the record is malformed or holds a non-finite number.
    """
    root = Path(root) if root is not None else results_root("runs")
    run_id = record["run_id"]
    path = root / f"{run_id}.json"
    if not force and is_complete(run_id, root):
        raise RecordExistsError(f"record {path} already exists; pass --force (force=True) to replace it, "
                                "or write elsewhere with --out-dir")
    buf = io.BytesIO()
    torch.save({k: _for_storage(v) for k, v in tensors.items()}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    record = {**record, "tensors": {"file": f"{run_id}.{digest[:12]}.tensors.pt", "keys": sorted(tensors),
                                    "dtype": "float16", "sha256": digest,
                                    "stored_size": min(next(iter(tensors.values())).shape[-1],
                                                       MAX_STORED_SIZE)}}
    record = with_hash(record)
    validate_record(record)
    tensors_path = atomic_write_bytes(root / record["tensors"]["file"], data)
    tmp = fsynced_temp(root, f"{run_id}.json", (json.dumps(record, indent=1) + "\n").encode())
    try:
        _publish(tmp, path, run_id, root, force)
    except RecordExistsError:
        winner = _peek_tensors_file(path)
        if winner != tensors_path.name:
            tensors_path.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _publish(tmp: Path, path: Path, run_id: str, root: Path, force: bool) -> None:
    """Put ``tmp`` at ``path``: replace with ``force``; else move an incomplete record aside and link,
    which fails when another writer got there first."""
    old = _peek_tensors_file(path)
    if force:
        os.replace(tmp, path)
    else:
        if path.exists() and not is_complete(run_id, root):
            try:  # only one of two writers can rename the same incomplete record
                os.rename(path, root / f".{run_id}.json.incomplete-{os.getpid()}")
            except FileNotFoundError:
                pass
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise RecordExistsError(f"record {path} was written by another process meanwhile; "
                                    "keep that one, or pass --force to replace it") from None
    _fsync_dir(root)
    if old and old != _peek_tensors_file(path):  # the replaced record's tensors
        (root / old).unlink(missing_ok=True)


def _fsync_dir(root: Path) -> None:
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _peek_tensors_file(path: Path) -> Optional[str]:
    """The tensors file a record JSON names (a plain file name), or None."""
    try:
        name = json.loads(path.read_text())["tensors"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and Path(name).name == name else None


def validate_record(record: Any) -> dict:
    """Raise ValueError naming what is missing, malformed or not finite; return ``record``."""
    if not isinstance(record, dict):
        raise ValueError(f"a run record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"run record {record.get('run_id', '?')!r} lacks keys {missing}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"run record {record['run_id']!r} has schema_version {record['schema_version']}, "
                         f"expected {SCHEMA_VERSION}")
    if record_hash_ok(record) is False:
        raise ValueError(f"run record {record['run_id']!r}: its content does not match its record_sha256 "
                         "(edited or corrupted); restore it with git, or re-make the run")
    missing = [k for k in FINAL_KEYS if k not in record["final"]]
    if missing:
        raise ValueError(f"run record {record['run_id']!r}: 'final' lacks {missing}")
    if not isinstance(record["history"], list):
        raise ValueError(f"run record {record['run_id']!r}: 'history' must be a list of epochs")
    _finite(record, record["run_id"])
    return record


def _strict_json(text: str) -> Any:
    def refuse(token: str):
        raise ValueError(f"non-finite number {token} in a record")
    return json.loads(text, parse_constant=refuse)


def load_record(path: PathLike) -> dict:
    """Read and validate one run record (NaN / Infinity tokens are refused; its ``record_sha256`` must be
    there and match its content); chapter 7. ValueError names the file."""
    record = _strict_json(Path(path).read_text())
    if isinstance(record, dict) and RECORD_HASH_FIELD not in record:
        raise ValueError(f"{path}: no record_sha256 (a record from before records hashed themselves); "
                         "add it with scripts/migrate_records.py")
    try:
        return validate_record(record)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def is_complete(run_id: str, root: Optional[PathLike] = None) -> bool:
    """True when ``<root>/<run_id>.json`` is valid and its tensors file matches its SHA-256 (chapter 7)."""
    root = Path(root) if root is not None else results_root("runs")
    try:
        record = load_record(root / f"{run_id}.json")
        name = record["tensors"]["file"]
        if record["run_id"] != run_id or not isinstance(name, str) or Path(name).name != name:
            return False
        data = (root / name).read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return hashlib.sha256(data).hexdigest() == record["tensors"]["sha256"]


def verify_records(root: Optional[PathLike] = None) -> list[str]:
    """One line per problem under ``root`` (default ``results_root()``): a record whose JSON does not
    load (bad ``record_sha256``, malformed, non-finite), whose tensors file is missing or does not match its
    SHA-256, and tensors files no record names (chapter 7: ``list-runs --verify``). Empty when all is well."""
    root = Path(root) if root is not None else results_root("runs")
    problems, named = [], set()
    for path in sorted(root.glob("*.json")):
        try:
            record = load_record(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            continue
        name = record["tensors"].get("file")
        named.add(name)
        if not is_complete(path.stem, root):
            problems.append(f"{root / str(name)}: missing, outside the folder, or not matching the SHA-256 in "
                            f"{path.name}")
    problems += [f"{p}: no record names this tensors file" for p in sorted(root.glob("*.tensors.pt"))
                 if p.name not in named]
    return problems


def _row(record: dict) -> dict:
    """Flatten a record into one table row (config fields, scale, final metrics, timings)."""
    config, final, prov = record["config"], record["final"], record["provenance"]
    row = {"run_id": record["run_id"], **config, "scale": record["scale"],
           "device": record["runtime"].get("device_type"), "device_name": prov.get("device_name"),
           "git_commit": prov.get("git_commit"), "git_dirty": prov.get("git_dirty"),
           "date_utc": prov.get("date_utc")}
    row.update({k: v for k, v in final.items() if not isinstance(v, dict)})
    for kind, metrics in final.get("baselines", {}).items():
        row.update({f"{kind}_{k}": v for k, v in metrics.items() if not isinstance(v, dict)})
    row.update({f"decoy_{k}": v for k, v in final.get("decoy", {}).items()})
    for kind, metrics in final.get("faithfulness", {}).items():
        if isinstance(metrics, dict):
            row.update({f"{k}_{kind}": v for k, v in metrics.items()})  # e.g. deletion_maps
    row.update({k: v for k, v in record["timings"].items() if not isinstance(v, (dict, list))})
    return row


def load_runs(root: Optional[PathLike] = None) -> list[dict]:
    """Every complete run record under ``root`` (default ``results_root()``) as a flat row, sorted
    by run id (chapter 7). Invalid or incomplete pairs are skipped with a warning.

    Each row has the config's fields (``run_id, dataset, model, objective, distance, seed, epochs,
    image_size, lr, n_train, n_val, ...``), ``scale`` and ``device``, the final metrics (``accuracy,
    l1, l2, ssim, ssim_valid, dead_fraction, dispersion, corr_image, corr_prototype``, the
    baselines as ``blank_*`` / ``input_*``, faithfulness as ``deletion_<map>`` / ``insertion_<map>``),
    the timings (``train_time_per_epoch_s, gradcam_batch_s, gradcam_loop_s_scaled, session_wall_s``)
    and provenance (``git_commit, git_dirty, date_utc, device_name``); a field a record predates is
    absent from its row."""
    root = Path(root) if root is not None else results_root("runs")
    rows = []
    for path in sorted(root.glob("*.json")):
        if not is_complete(path.stem, root):
            warnings.warn(f"skipping {path}: not a complete record (invalid JSON, non-finite number, "
                          "or tensors that do not match)", stacklevel=2)
            continue
        rows.append(_row(load_record(path)))
    return rows


def load_tensors(run_id: str, root: Optional[PathLike] = None) -> dict[str, torch.Tensor]:
    """``{"average_reconstruction": [C, H, W], "prototypes": [C, H, W], ...}`` of a run, as float32 (chapter 7).

    The file is the one the record names, checked against the record's SHA-256 before it is read:
    ValueError names the file that fails."""
    root = Path(root) if root is not None else results_root("runs")
    record = load_record(root / f"{run_id}.json")
    path = root / record["tensors"]["file"]
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != record["tensors"]["sha256"]:
        raise ValueError(f"{path}: tensors do not match the SHA-256 in {run_id}.json; restore the pair with git "
                         "or re-make the run")
    tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in tensors.items()}


def scale_label(device_type: str, subset: bool) -> str:
    """``"cpu-full"``, ``"cpu-subset"``, ``"gpu-full"``, ``"gpu-subset"`` (the data a run saw)."""
    return f"{'gpu' if device_type == 'cuda' else device_type}-{'subset' if subset else 'full'}"


def record_from_run(run: Any) -> tuple[dict, dict[str, torch.Tensor]]:
    """The record and tensors (``average_reconstruction``, ``prototypes``: [C, H, W]) of a finished ``Run``
    (``batchcam.train``, chapter 6) for :func:`write_run`. Metrics are stored once (``final``), times once."""
    config, ev = run.config, run.evaluation
    last = run.history[-1] if run.history else {}
    final = {"accuracy": ev["accuracy"], **ev["maps"], "baselines": ev["baselines"],
             "faithfulness": ev.get("faithfulness", {}), **({"decoy": ev["decoy"]} if "decoy" in ev else {}),
             "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_total"),
             "epochs_completed": len(run.history)}
    record = {"schema_version": SCHEMA_VERSION, "run_id": config.run_id, "config": asdict(config),
              "config_hash": config.config_hash, "history": run.history, "final": final,
              "timings": run.timings, "scale": scale_label(run.runtime["device_type"],
                                                           bool(config.n_train or config.n_test)),
              "runtime": run.runtime, "provenance": provenance(run.runtime["device"])}
    tensors = {"average_reconstruction": run.average_reconstruction, "prototypes": run.prototypes}
    return record, {**tensors, **({"target_prototypes": run.target_prototypes}
                                  if getattr(run, "target_prototypes", None) is not None else {})}


# --------------------------------------------------------------------------- benchmark records


def write_bench_record(record: dict, *, device_type: str, quick: bool = False,
                       root: Optional[PathLike] = None, force: bool = False, name: str = "bench") -> Path:
    """Write ``<root>/<name>-<device>-<UTC>[-quick|-verdict].json`` (chapter 3; ``-verdict``: a record of the
    ``verdict`` preset, which the timing verdicts read and chapter 3's plots do not); never replaces a file
    unless ``force``. ``root`` defaults to ``results_root("bench")``. ``name`` other than ``"bench"`` keeps a
    record out of :func:`latest_bench_path` (``scripts/bench_methods.py`` writes ``methods-…``)."""
    root = Path(root) if root is not None else results_root("bench")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = "-quick" if quick else "-verdict" if (record.get("config") or {}).get("preset") == "verdict" else ""
    path = root / f"{name}-{device_type}-{stamp}{tag}.json"
    if path.exists() and not force:
        raise RecordExistsError(f"benchmark record {path} already exists; pass --force to replace it")
    _finite({k: v for k, v in record.items() if k != "provenance"}, "bench record")
    return atomic_write_json(path, with_hash(record))


def latest_bench_path(device_type: str = "cpu", root: Optional[PathLike] = None, *,
                      preset: Optional[str] = None) -> Optional[Path]:
    """The newest full benchmark record file for ``device_type``, or None: with ``preset="verdict"`` the newest
    record of that preset (the timing verdicts, chapter 7), else the newest that is neither ``--quick`` nor
    ``verdict`` (chapter 3's speed plot)."""
    root = Path(root) if root is not None else results_root("bench")
    tags = ("-quick", "-verdict")
    paths = sorted(p for p in root.glob(f"bench-{device_type}-*.json")
                   if (p.stem.endswith("-verdict") if preset == "verdict" else not p.stem.endswith(tags)))
    return paths[-1] if paths else None


def latest_bench(device_type: str = "cpu", root: Optional[PathLike] = None, *,
                 preset: Optional[str] = None) -> Optional[dict]:
    """The record of :func:`latest_bench_path` (chapter 3's speed plot; ``preset="verdict"``: chapter 7's
    timing verdicts), or None."""
    return load_bench(latest_bench_path(device_type, root, preset=preset))


def load_bench(path: Optional[PathLike]) -> Optional[dict]:
    """The benchmark record at ``path`` (strict JSON: no NaN), or None for None: a caller that needs both the
    file name and the record globs once, ``load_bench(latest_bench_path(...))``."""
    return _strict_json(Path(path).read_text()) if path else None

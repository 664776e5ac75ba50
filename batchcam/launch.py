"""The grid on a cluster: one submitit job per pending run (chapter 7, "run it yourself").

``python -m batchcam reproduce --launcher submitit ...`` hands the pending runs to submitit
(``pip install batchcam[cluster]``). Each job calls :class:`TrainJob`: ``fit`` then ``write_run``
(the atomic record), so a job that dies leaves no half record, and re-running the command submits
only what is still missing (``batchcam.grid.pending``) and not yet queued or running here.

* ``--submitit-cluster slurm`` (what ``auto`` picks where ``sbatch`` exists): one Slurm job array,
  ``--array-parallelism`` tasks at a time, ``--gpus-per-run`` GPUs each. With more than one GPU a
  run is one DDP job of that many tasks (``batchcam.distributed``: one process per GPU). On a
  timeout or preemption submitit requeues the job and ``fit(resume=True)`` continues from the
  last epoch's checkpoint. On a login node without GPUs the runs are named as the GPU nodes will
  name them (``--device auto`` means CUDA there), see :func:`assume_cuda`.
* ``local``: submitit's LocalExecutor on a workstation: ``--array-parallelism`` background jobs
  (default 1), each running its share of the runs one after the other; they outlive the command.
* ``debug``: in this process, one run after the other (submitit's DebugExecutor; it opens pdb on
  an error).

Job logs, pickles and the ``submitted/`` markers go to ``--submitit-folder`` (default
``<out-dir>/checkpoints/submitit``, git-ignored with the checkpoints). Without ``--wait`` the
command prints the job ids and log paths and returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from . import config as config_module
from . import distributed
from .config import TrainConfig
from .results import RecordExistsError, is_complete
from .runner import fit_and_record

__all__ = ["CLUSTERS", "TrainJob", "SubmititOptions", "assume_cuda", "submit_runs", "add_arguments",
           "options_from_args"]

CLUSTERS = ("auto", "slurm", "local", "debug")
#: The largest ``--mem-gb`` accepted: more than any node has; a larger value is a typo (MB for GB).
MAX_MEM_GB = 4096
#: Slurm states of a job that may still write its record (UNKNOWN, e.g. purged from sacct, is not one).
ALIVE_SLURM = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
               "REQUEUE_HOLD", "REQUEUE_FED"}


class TrainJob:
    """What one submitit job runs: ``fit`` + ``write_run`` for each of its configurations, in order (chapter 7).

    Skips a run already recorded (another job may have written it). With several tasks (one per GPU)
    it exports submitit's torch.distributed environment, so ``fit`` trains with DDP and rank 0
    writes the record. Returns the record paths (rank 0; other ranks return []).
    """

    def __call__(self, configs: Sequence[TrainConfig]) -> list[str]:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:  # one DDP process per task (and GPU)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        paths = []
        try:
            for config in configs:
                root = Path(config.out_dir) / "runs"
                path = root / f"{config.run_id}.json"
                if not is_complete(config.run_id, root):
                    try:
                        run, written = fit_and_record(config, root=root, fit_fn=distributed_fit)
                    except RecordExistsError:  # written meanwhile by a duplicate job: keep that one
                        run, written = True, path
                    if run is None:  # a DDP rank other than 0
                        continue
                    path = written
                print(f"{config.run_id} -> {path}", flush=True)
                paths.append(str(path))
        finally:
            distributed.teardown()
        return paths

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On timeout or preemption: requeue the same call; ``fit(resume=True)`` continues."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def distributed_fit(config: TrainConfig):
    """``batchcam.train.fit(config, resume=True)`` without progress bars (imported late: jobs only)."""
    from .train import fit

    return fit(config, resume=True, progress=False)


@dataclasses.dataclass
class SubmititOptions:
    """Where and how the jobs run (the ``reproduce --launcher submitit`` flags; chapter 7)."""

    cluster: str = "auto"  # one of CLUSTERS; auto: submitit's choice (slurm if available, else local)
    folder: Optional[str] = None  # logs; default <out_dir>/checkpoints/submitit
    slurm_partition: Optional[str] = None
    slurm_account: Optional[str] = None
    timeout_min: int = 240
    array_parallelism: Optional[int] = None  # Slurm: concurrent array tasks; local: parallel jobs (default 1)
    gpus_per_run: int = 1  # > 1: one DDP run over that many GPUs (processes: --device cpu gives gloo DDP)
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    wait: bool = False


def resolve_cluster(cluster: str) -> str:
    """``auto`` → what submitit detects here (``slurm`` where Slurm's ``srun`` exists, else ``local``);
    ``slurm`` where ``sbatch`` is not on ``PATH`` raises a ValueError naming the fix (chapter 7)."""
    if cluster == "auto":
        import submitit

        cluster = submitit.AutoExecutor.which()
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ValueError("--submitit-cluster slurm needs Slurm, but sbatch is not on PATH here: run on the "
                         "cluster's login node (or add Slurm's bin folder to PATH), or use --submitit-cluster "
                         "local to run the jobs on this machine")
    return cluster


@contextlib.contextmanager
def assume_cuda(enabled: bool = True) -> Iterator[None]:
    """Name and validate runs as on a GPU node, on a machine without CUDA (a Slurm login node; chapter 7).

    A run's id holds the device type its ``--device`` resolves to, and ``--device cuda`` is refused
    where CUDA is missing. Inside this block ``auto`` and ``cuda[:i]`` resolve to CUDA without
    checking, so the pending check and the records the jobs write agree. No-op with CUDA present.
    """
    if not enabled or torch.cuda.is_available():
        yield
        return
    real = config_module.resolve_device

    def as_on_gpu_node(device=None):
        if device is None or device == "auto" or str(device).startswith("cuda"):
            return torch.device("cuda" if device in (None, "auto") else device)
        return real(device)

    config_module.resolve_device = as_on_gpu_node
    try:
        yield
    finally:
        config_module.resolve_device = real


def _markers(folder: Path) -> Path:
    return folder / "submitted"


def _alive(marker: Path) -> Optional[str]:
    """The job id of a submission that is still queued or running, else None."""
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if info.get("cluster") == "slurm":
        import submitit

        state = submitit.SlurmJob(folder=info["folder"], job_id=info["job_id"]).state
        return info["job_id"] if state.split()[0].upper() in ALIVE_SLURM else None
    if info.get("cluster") == "local":
        try:  # the LocalExecutor's controller process
            cmd = Path(f"/proc/{int(info['job_id'])}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return info["job_id"] if b"submitit" in cmd else None
    return None


@contextlib.contextmanager
def _importable_here() -> Iterator[None]:
    """``PYTHONPATH`` starts with this package's folder while jobs are submitted (they copy the
    environment), so every job imports this very ``batchcam``."""
    old = os.environ.get("PYTHONPATH")
    here = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _executor(opts: SubmititOptions, cluster: str, folder: Path, gpus: int, tasks: int):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = dict(name="batchcam", timeout_min=opts.timeout_min, gpus_per_node=gpus,
                                  tasks_per_node=tasks, nodes=1, cpus_per_task=opts.cpus_per_task,
                                  mem_gb=opts.mem_gb, slurm_partition=opts.slurm_partition,
                                  slurm_account=opts.slurm_account,
                                  slurm_array_parallelism=opts.array_parallelism)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit_runs(configs: Sequence[TrainConfig], opts: SubmititOptions) -> int:
    """Submit the pending ``configs`` (validated; see ``batchcam.grid.pending``); return an exit code (chapter 7).

    Runs with a job still queued or running here are left out. Prints one line per job: its id,
    its runs and its log. With ``opts.wait`` (always for ``debug``) waits and reports the records.
    """
    if not configs:
        return 0
    cluster = resolve_cluster(opts.cluster)
    folder = Path(opts.folder or Path(configs[0].out_dir) / "checkpoints" / "submitit").resolve()
    todo = []
    for c in configs:
        job_id = _alive(_markers(folder) / f"{c.run_id}.json")
        if job_id:
            print(f"  {c.run_id}: already submitted as job {job_id}, still queued or running")
        else:
            todo.append(dataclasses.replace(
                c, out_dir=str(Path(c.out_dir).resolve()),
                data_root=str(Path(c.data_root).resolve()) if c.data_root else None))
    if not todo:
        return 0
    gpus = opts.gpus_per_run if any(c.device_type == "cuda" for c in todo) else 0  # CPU runs: processes only
    lanes = min(len(todo), opts.array_parallelism or 1) if cluster == "local" else len(todo)
    groups = [todo[i::lanes] for i in range(lanes)]
    with _importable_here():
        jobs = _executor(opts, cluster, folder, gpus, max(1, opts.gpus_per_run)).map_array(TrainJob(), groups)
    _markers(folder).mkdir(parents=True, exist_ok=True)
    print(f"submitted {len(todo)} run(s) as {len(jobs)} {cluster} job(s); logs under {folder}")
    for job, group in zip(jobs, groups):
        for c in group:
            (_markers(folder) / f"{c.run_id}.json").write_text(json.dumps(
                {"job_id": str(job.job_id), "cluster": cluster, "folder": str(folder),
                 "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        print(f"  job {job.job_id}: {', '.join(c.run_id for c in group)}\n    log: {job.paths.stdout}")
    if not (opts.wait or cluster == "debug"):
        print("re-run the same command to submit what is still missing (it skips recorded and queued runs); "
              "add --wait to wait for the records")
        return 0
    failed = 0
    for job in jobs:
        try:
            for path in job.results()[0]:
                print(f"  done: {path}")
        except Exception as exc:  # noqa: BLE001 - reported with the job's log
            failed += 1
            last = (str(exc).strip().splitlines() or [""])[-1]
            print(f"  job {job.job_id} failed: {type(exc).__name__}: {last}; log: {job.paths.stderr}")
    return 1 if failed else 0


# --------------------------------------------------------------------------- command line


def add_arguments(p) -> None:
    """The ``reproduce`` flags of this launcher, added to the argparse parser ``p`` (chapter 7)."""
    g = p.add_argument_group("cluster (--launcher submitit; pip install batchcam[cluster])")
    g.add_argument("--submitit-cluster", choices=CLUSTERS, default="auto",
                   help="slurm job array, local background jobs, or debug (in this process); "
                        "auto: slurm where sbatch exists, else local (default: %(default)s)")
    g.add_argument("--submitit-folder", default=None,
                   help="job logs and pickles (default: OUT_DIR/checkpoints/submitit)")
    g.add_argument("--slurm-partition", default=None, help="Slurm partition")
    g.add_argument("--slurm-account", default=None, help="Slurm account")
    g.add_argument("--timeout-min", type=int, default=240,
                   help="time limit per job in minutes; a run cut off is requeued and resumes (default: %(default)s)")
    g.add_argument("--array-parallelism", type=int, default=None,
                   help="Slurm: array tasks at once (default: submitit's 256); local: jobs at once (default: 1)")
    g.add_argument("--gpus-per-run", type=int, default=1,
                   help="GPUs per run; >1 trains each run with DDP, one process per GPU (with --device cpu: "
                        "that many CPU processes, no GPU); 0: CPU jobs (default: %(default)s)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per task")
    g.add_argument("--mem-gb", type=float, default=None, help=f"memory per node in GB (> 0, ≤ {MAX_MEM_GB})")
    g.add_argument("--wait", action="store_true", help="wait for the jobs and report their records")


def options_from_args(args) -> SubmititOptions:
    """The :class:`SubmititOptions` of parsed ``reproduce`` arguments (positive integers and ``--mem-gb``
    checked; chapter 7)."""
    for name in ("timeout_min", "array_parallelism", "cpus_per_task"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
    if args.gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run must be ≥ 0, got {args.gpus_per_run}")
    if args.mem_gb is not None and not (math.isfinite(args.mem_gb) and 0 < args.mem_gb <= MAX_MEM_GB):
        raise ValueError(f"--mem-gb must be a number of GB > 0 and ≤ {MAX_MEM_GB}, got {args.mem_gb:g}; "
                         "e.g. --mem-gb 32 (or leave it out: the cluster's default)")
    return SubmititOptions(cluster=args.submitit_cluster, folder=args.submitit_folder,
                           slurm_partition=args.slurm_partition, slurm_account=args.slurm_account,
                           timeout_min=args.timeout_min, array_parallelism=args.array_parallelism,
                           gpus_per_run=args.gpus_per_run, cpus_per_task=args.cpus_per_task,
                           mem_gb=args.mem_gb, wait=args.wait)


def check_installed() -> None:
    """A clear error when submitit is missing."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ValueError("--launcher submitit needs submitit: pip install 'submitit>=1.5' "
                         "(or pip install -e '.[cluster]')") from None

"""One run on several GPUs: ``torchrun`` + DistributedDataParallel (chapter 7, "run it yourself").

``torchrun --nproc_per_node N -m batchcam train ...`` starts N processes; :func:`setup` sees
torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, joins the process group (NCCL on CUDA,
gloo on CPU) and returns a :class:`Context` that ``batchcam.train.fit`` asks for everything that
differs from one process. Without torchrun the context is the single process and every method
is a no-op, so ``fit`` has one code path. The math is the single-process math on the global
batch of ``batch_size`` samples:

* **Data.** Every rank builds the same seeded global batch order (``TensorLoader``'s) and keeps
  the strided shard ``idx[rank::world]`` of each global batch ``idx`` [B] (:class:`ShardedLoader`),
  so a rank sees ``B_r ∈ {⌊B/W⌋, ⌈B/W⌉}`` samples. A last global batch with fewer samples than
  processes is dropped (single process: only a last batch of 1 sample is dropped).
* **Gradient.** Each rank's losses are means over its shard; DDP *averages* gradients over the W
  ranks. The loss of rank r is multiplied by ``W·B_r/B`` (:attr:`ShardedLoader.shard_weight`,
  1 when the shards are equal), so ``(1/W) Σ_r W·B_r/B · ∇mean_r = ∇ (1/B) Σ_b loss_b``: the
  gradient of the full batch, also for a last batch that does not split evenly.
* **Batch-CAM Loss.** Its class means ``R̄_c`` [C, H, W] must be those of the global batch:
  :attr:`Context.reduce` all-reduces (SUM) the detached per-class sums [C, H, W] and counts [C]
  (``batchcam.losses.class_means``). Exact, because ``R̄`` is a stop-gradient constant: no
  gradient has to flow through the collective.
* **BatchNorm.** Converted to SyncBatchNorm on CUDA (statistics of the global batch). SyncBatchNorm
  needs CUDA; on CPU (gloo, the tests) BatchNorm stays per-rank, so only models without BatchNorm
  in train mode reproduce one process exactly there.
* **Once, on rank 0.** Prototypes are computed on rank 0 and broadcast; evaluation, checkpoints
  and the record happen on rank 0 (the other ranks wait at a barrier, then ``fit`` returns None
  on them); the record's ``runtime`` says ``world_size``.

**Double backward under DDP.** The Batch-CAM step differentiates twice: ``torch.autograd.grad(Σ_b
z_b[t_b], A, create_graph=True)`` for the maps, then ``.backward()`` of the loss through them. DDP's
default settings (``find_unused_parameters=False, static_graph=False``) are right, and
:meth:`Context.wrap` states them: DDP all-reduces from hooks on the parameters' gradient
accumulators, and ``autograd.grad`` with ``inputs=A`` never runs those, so the reducer sees one
backward, the ``.backward()`` of the total loss, in which every parameter's gradient (first- and
second-order paths together) is accumulated once and all-reduced once. ``static_graph=True`` is
wrong here, silently: on the first iteration it queues the delayed all-reduce at the end of the
first backward pass that reaches the model's output, which is the ``autograd.grad`` of the maps,
before any parameter gradient exists (measured: gradients off by 0.19 on a tiny model).
Evaluation uses the unwrapped model (``model.module``), which runs no collective.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from ._helpers import resolve_device
from .data import TensorLoader, epoch_seed

__all__ = ["Context", "ShardedLoader", "setup", "teardown", "launched_by_torchrun", "shard"]

#: Minutes a collective may wait (rank 0 evaluates while the others wait at a barrier).
TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN = "BATCHCAM_DIST_TIMEOUT_MIN", 60


def launched_by_torchrun() -> bool:
    """Whether torchrun (or Slurm via ``submitit``'s ``TorchDistributedEnvironment``) set ``RANK`` and
    ``WORLD_SIZE`` for this process (chapter 7, "run it yourself")."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def shard(idx: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, float]:
    """This rank's part of a global batch ``idx`` [B] and its loss weight (chapter 7, torchrun).

    Returns ``(idx[rank::world_size], W·B_r/B)``: the shard [B_r] and a float; the weight makes DDP's
    gradient mean equal the gradient of the mean over the whole batch (module docstring).
    """
    mine = idx[rank::world_size]
    return mine, world_size * len(mine) / len(idx)


class ShardedLoader(TensorLoader):
    """:class:`~batchcam.data.TensorLoader` that yields this rank's shard of every global batch (chapter 7).

    Same arguments as ``TensorLoader`` (``batch_size`` is the *global* B) plus ``rank`` and
    ``world_size``. Every rank draws the same permutation (``seed + epoch``, CPU generator), cuts
    the same global batches and keeps ``idx[rank::world_size]``: x float32 [B_r, 1, S, S], y int64
    [B_r]. After each yield :attr:`shard_weight` holds ``W·B_r/B`` for that batch. A last batch
    with fewer than ``world_size`` samples is always dropped (a rank would have none).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, rank: int,
                 world_size: int, **kwargs: Any) -> None:
        super().__init__(images, labels, batch_size, **kwargs)
        if batch_size < world_size:
            raise ValueError(f"--batch-size {batch_size} is the global batch, shared by {world_size} "
                             f"processes: use at least {world_size}")
        self.rank, self.world_size, self.shard_weight = rank, world_size, 1.0

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        last = n % b
        return n // b + int(bool(last) and not self.drop_last and last >= self.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:  # the permutation of TensorLoader.__iter__, on every rank
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch,
                                                                                          self.order)))
        else:
            order = torch.arange(n)
        order = order.to(self.device)
        self.epoch += 1
        for i in range(len(self)):
            mine, self.shard_weight = shard(order[i * self.batch_size:(i + 1) * self.batch_size],
                                            self.rank, self.world_size)
            yield self._batch(mine)


@dataclass(frozen=True)
class Context:
    """Who this process is in a run (chapter 7). The default is one process on ``device``.

    ``backend`` is ``"nccl"`` / ``"gloo"`` when a process group is in use (also for
    ``torchrun --nproc_per_node 1``), else None; ``device`` is ``cuda:LOCAL_RANK`` under torchrun
    on CUDA.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def active(self) -> bool:
        """Whether a process group is in use (DDP)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: computes the prototypes, evaluates, checkpoints and writes the record."""
        return self.rank == 0

    @property
    def reduce(self) -> Optional[Callable[[torch.Tensor, torch.Tensor], None]]:
        """``reduce(sums, counts)`` for ``batchcam.losses.class_means`` (all-reduce SUM in place,
        one collective), or None for one process."""
        return self.all_reduce_ if self.active else None

    def all_reduce_(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Sum ``a`` and ``b`` in place over every process (fused into one all-reduce when they share
        dtype and device)."""
        if not self.active:
            return
        if a.dtype != b.dtype or a.device != b.device:
            dist.all_reduce(a)
            dist.all_reduce(b)
            return
        buf = torch.cat([a.reshape(-1), b.reshape(-1)])
        dist.all_reduce(buf)
        a.copy_(buf[:a.numel()].view_as(a))
        b.copy_(buf[a.numel():].view_as(b))

    def layer(self, name: str) -> str:
        """The Grad-CAM layer's dotted name inside the wrapped model (``"module." + name`` under DDP)."""
        return f"module.{name}" if self.active else name

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """BatchNorm → SyncBatchNorm under DDP on CUDA (same parameters and buffers, same state-dict
        keys, so checkpoints load into the plain model); the model itself otherwise."""
        if self.active and self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (already on :attr:`device`), or ``model`` itself.

        DDP's defaults, spelled out: ``static_graph=True`` would give wrong gradients with the
        double backward of the Batch-CAM losses (module docstring).
        """
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False,
                                                   static_graph=False)

    def drop_last(self, n: int, batch_size: int) -> bool:
        """Drop a last batch of 1 sample (BatchNorm needs two) or of fewer samples than processes."""
        return n % batch_size in range(1, max(2, self.world_size))

    def loader(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, **kwargs: Any) -> TensorLoader:
        """:class:`ShardedLoader` under DDP, else a plain ``TensorLoader`` (same arguments)."""
        if not self.active:
            return TensorLoader(images, labels, batch_size, **kwargs)
        return ShardedLoader(images, labels, batch_size, rank=self.rank, world_size=self.world_size, **kwargs)

    def from_main(self, make: Callable[[], Any]) -> Any:
        """``make()`` on rank 0, broadcast to every rank (pickled; tensors arrive on the CPU)."""
        if not self.active:
            return make()
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        elif self.active:
            dist.barrier()


def _device(device: str | torch.device | None, local_rank: int) -> torch.device:
    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                         "visible; start at most that many processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)  # one GPU per process, whatever index --device named


def setup(device: str | torch.device | None = "auto") -> Context:
    """The :class:`Context` of this process; joins the process group on first call under torchrun (chapter 7).

    ``device`` is ``TrainConfig.device``: on CUDA each process takes ``cuda:LOCAL_RANK`` and NCCL,
    on CPU gloo. A process group that is already initialised (e.g. by a test, or by the caller) is
    used as it is. Without torchrun and without a process group: one process on ``device``.
    Collectives time out after ``$BATCHCAM_DIST_TIMEOUT_MIN`` minutes (default 60).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Context(rank, world, local, _device(device, local), dist.get_backend())
    if not launched_by_torchrun():
        return Context(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = _device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=minutes))
    return Context(rank, world, local, dev, backend)


def teardown() -> None:
    """Leave the process group, if this process joined one (end of ``python -m batchcam train``; chapter 7)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""One run on several processes (``batchcam.distributed``, chapter 7), on CPU with gloo.

Two processes with half of each batch must give the loss and the parameter gradients of one
process with the whole batch, for every objective: the Batch-CAM Loss's class means come from the
global batch (all-reduce of sums and counts), unequal shards are weighted by ``W·B_r/B``. The
model is ``_tiny.TinyCNN`` (no BatchNorm: SyncBatchNorm needs CUDA). Workers are started with
``torch.multiprocessing`` and meet through a file (``file://``), so no port is needed; the
end-to-end test runs the real ``torchrun --nproc_per_node 2 -m batchcam train``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _tiny import TinyCNN

from batchcam import distributed
from batchcam.data import TensorLoader
from batchcam.loop import train_one_epoch
from batchcam.losses import OBJECTIVES, Objective, objective_loss

REPO = Path(__file__).resolve().parent.parent
WORLD = 2
LABELS = torch.tensor([0, 0, 1, 1, 2, 3, 0, 1, 1, 2, 0, 2])  # strided shards split classes 1 and 2


def _batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 8, 8, generator=g, dtype=dtype)
    prototypes = torch.rand(4, 8, 8, generator=g, dtype=dtype)
    return x, LABELS.clone(), prototypes


def _epoch_data():
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (21, 1, 16, 16), generator=g, dtype=torch.uint8),
            torch.randint(0, 4, (21,), generator=g), torch.rand(4, 16, 16, generator=g))


def _step(model, layer, objective, x, y, prototypes, reduce=None, weight=1.0):
    """Loss of one batch and the parameter gradients of its backward (as train_one_epoch does it)."""
    model.zero_grad(set_to_none=True)
    terms, _ = objective_loss(objective, model, x, y, layer=layer, prototypes=prototypes, reduce=reduce)
    (terms["total"] * weight).backward()
    return terms["total"].detach(), [p.grad.detach().clone() for p in model.parameters()]


def _one_epoch(model, loader, layer, prototypes, reduce=None):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    objective = Objective.from_name("ce+proto+batchcam", num_classes=4).bind(layer, prototypes, reduce=reduce)
    stats = train_one_epoch(model, objective, loader, opt)
    return stats, [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, folder: str) -> None:
    """One of WORLD processes: every objective on its shard of a 12- and an 11-sample batch (float64),
    then one float32 epoch of train_one_epoch over a ShardedLoader. Rank 0 saves what it saw."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.active) == (rank, WORLD, "gloo", True)
    out = {"protos": ctx.from_main(lambda: torch.full((2,), float(rank)))}
    torch.manual_seed(0)
    net = ctx.wrap(TinyCNN().double())
    x, y, prototypes = _batch()
    for n in (12, 11):
        idx, weight = distributed.shard(torch.arange(n), rank, WORLD)
        for name in OBJECTIVES:
            objective = Objective.from_name(name, num_classes=4)
            loss, grads = _step(net, ctx.layer("features"), objective, x[idx], y[idx], prototypes,
                                ctx.reduce, weight)
            mean = loss * len(idx) / n  # the global loss: Σ_r B_r · mean_r / B
            dist.all_reduce(mean)
            out[n, name] = (mean, grads)
        local, _ = _step(net, ctx.layer("features"), Objective.from_name("ce+batchcam", num_classes=4),
                         x[idx], y[idx], prototypes, None, weight)  # class means of the shard only
        dist.all_reduce(local.mul_(len(idx) / n))
        out[n, "no-reduce"] = local
    images, labels, protos = _epoch_data()
    torch.manual_seed(0)
    model = TinyCNN()
    loader = ctx.loader(images, labels, 6, shuffle=True, seed=3, drop_last=ctx.drop_last(21, 6))
    out["epoch"] = _one_epoch(ctx.wrap(model), loader, ctx.layer("features"), protos, ctx.reduce)
    out["epoch_batches"] = len(loader)
    if rank == 0:
        torch.save(out, Path(folder) / "rank0.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(folder),), nprocs=WORLD, start_method="spawn", join=True)
    return torch.load(folder / "rank0.pt", weights_only=False)


@pytest.mark.parametrize("n", [12, 11], ids=["equal-shards", "unequal-shards"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_processes_give_the_loss_and_gradients_of_one(ddp_results, objective, n):
    """DDP with B/2 per process (or 6 / 5 of 11) = one process with B: loss (float32 terms) and
    parameter gradients (float64 model)."""
    torch.manual_seed(0)
    model = TinyCNN().double()
    x, y, prototypes = _batch()
    loss, grads = _step(model, "features", Objective.from_name(objective, num_classes=4), x[:n], y[:n], prototypes)
    ddp_loss, ddp_grads = ddp_results[n, objective]
    assert abs(float(ddp_loss - loss)) < 1e-6  # objective_loss computes the loss terms in float32
    for g, h in zip(grads, ddp_grads):  # the float64 model's gradients: measured ≤ 1e-16
        torch.testing.assert_close(h, g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [12, 11])
def test_without_the_all_reduce_the_batchcam_loss_differs(ddp_results, n):
    """The shards split classes, so the local class means are not the global ones: the test above
    would catch a missing ``reduce``."""
    torch.manual_seed(0)
    model = TinyCNN().double()
    x, y, prototypes = _batch()
    loss, _ = _step(model, "features", Objective.from_name("ce+batchcam", num_classes=4), x[:n], y[:n], prototypes)
    assert abs(float(ddp_results[n, "no-reduce"] - loss)) > 1e-3


def test_one_epoch_on_two_processes_matches_one_process(ddp_results):
    """train_one_epoch over a ShardedLoader (21 samples, batches 6, 6, 6, 3: the last splits 2 / 1)
    ends with the parameters and epoch statistics of one process (float32)."""
    images, labels, protos = _epoch_data()
    torch.manual_seed(0)
    model = TinyCNN()
    loader = TensorLoader(images, labels, 6, shuffle=True, seed=3, drop_last=False)
    stats, params = _one_epoch(model, loader, "features", protos)
    ddp_stats, ddp_params = ddp_results["epoch"]
    assert ddp_results["epoch_batches"] == len(loader) == 4
    assert ddp_stats.keys() == stats.keys()
    for k in stats:
        assert ddp_stats[k] == pytest.approx(stats[k], abs=1e-5), k
    for p, q in zip(params, ddp_params):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-5)


def test_prototypes_come_from_rank_0(ddp_results):
    assert ddp_results["protos"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loader_splits_every_global_batch(world):
    """The shards of every rank put together are exactly TensorLoader's global batches; a last batch
    smaller than the number of processes is dropped."""
    images = torch.arange(22, dtype=torch.uint8).view(22, 1, 1, 1).expand(22, 1, 2, 2).contiguous()
    labels = torch.arange(22)
    ref = [y for _, y in TensorLoader(images, labels, 5, shuffle=True, seed=7)]  # 5, 5, 5, 5, 2
    shards = [list(distributed.ShardedLoader(images, labels, 5, rank=r, world_size=world, shuffle=True, seed=7))
              for r in range(world)]
    kept = ref if world <= 2 else ref[:-1]
    assert all(len(s) == len(kept) for s in shards)
    for i, y in enumerate(kept):
        for r in range(world):
            x_r, y_r = shards[r][i]
            assert torch.equal(y_r, y[r::world])
            assert torch.equal((x_r[:, 0, 0, 0] * 255).round().long(), y_r)


def test_one_process_context_is_a_no_op():
    ctx = distributed.setup("cpu")
    model = TinyCNN()
    assert not ctx.active and ctx.is_main and ctx.reduce is None and ctx.world_size == 1
    assert ctx.wrap(model) is model and ctx.sync_batchnorm(model) is model and ctx.layer("features") == "features"
    assert type(ctx.loader(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3), 2)) is TensorLoader
    assert ctx.drop_last(33, 32) and not ctx.drop_last(34, 32)


def _mnist_available() -> bool:
    from batchcam.data import DataMissingError, load_split
    try:
        load_split("mnist", False, n=1)
    except (DataMissingError, FileNotFoundError, OSError):
        return False
    return True


def test_torchrun_train_writes_one_record_with_world_size_2(tmp_path):
    """``torchrun --nproc_per_node 2 -m batchcam train`` on CPU: one record, by rank 0, saying so."""
    if not _mnist_available():
        pytest.skip("MNIST is not in data/ (python -m batchcam prepare-data)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "batchcam", "train", "--objective", "ce+proto+batchcam", "--n-train", "64", "--n-test", "32",
           "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--eval-cam-loop-samples", "2",
           "--no-progress", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = list((tmp_path / "runs").glob("*.json"))
    assert len(records) == 1, records
    record = json.loads(records[0].read_text())
    assert record["runtime"]["world_size"] == 2
    assert record["final"]["epochs_completed"] == 1
    assert proc.stdout.count("test accuracy") == 1, proc.stdout

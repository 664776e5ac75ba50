"""One epoch of training and the BatchNorm recalibration after it (chapter 6).

One step: ``terms, logits = objective(model, x, y)`` (a :class:`~batchcam.losses.BoundObjective`,
the one objective of ``batchcam.losses`` bound to its layer and prototypes once per run),
``terms["total"].backward()``, ``optimizer.step()``. Nothing in a step reads a tensor value, so on
CUDA a step never waits for the GPU; the sums of the loss terms stay on the device until the end
of the epoch. ``batchcam.train.fit`` runs the epochs, evaluates and checkpoints.
"""

from __future__ import annotations

import itertools
import math
from typing import Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import TensorLoader
from .losses import BoundObjective

__all__ = ["NonFiniteLossError", "train_one_epoch", "recalibrate_batchnorm", "BN_BATCHES"]

BN_BATCHES = 50  # training batches used to recompute BatchNorm statistics after each epoch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; no record is written (chapter 6)."""


def train_one_epoch(model: nn.Module, objective: BoundObjective, loader: TensorLoader,
                    optimizer: torch.optim.Optimizer, progress: Union[bool, str] = False) -> dict:
    """One pass over ``loader`` (chapter 6); the loss is a parameter (``objective``).

    Args:
        model: the network (in train mode after the call); under DDP (chapter 7) the DDP wrapper.
        objective: ``Objective.bind(layer, prototypes, amp=..., reduce=..., scaler=...)``: the loss
            terms, their λ, the Grad-CAM layer (outputs [B, K, h, w]), the prototypes [C, S, S], and
            with fp16 autocast the GradScaler that scales each backward.
        loader: yields x [B, 1, S, S], y int64 [B] (and bool masks [B, S, S] for the mask
            objectives); under DDP a ``ShardedLoader`` whose ``shard_weight`` scales each rank's loss.
        optimizer: stepped once per batch.
        progress: False for no bar; True for a tqdm bar; a string for a bar with that description.

    Returns the sample-weighted mean of each loss term (``"total"``, ``"ce"``, ``"proto"``,
    ``"batchcam"`` as present) and ``"accuracy"`` on the training batches. Raises
    :class:`NonFiniteLossError` at the end of an epoch whose loss was not finite. Under DDP the
    bound ``reduce`` (``Context.reduce``) gives the global batch's Batch-CAM class means and the
    epoch's statistics over every process.
    """
    if not isinstance(objective, BoundObjective):
        raise TypeError(f"train_one_epoch needs a bound objective, got {type(objective).__name__}; pass "
                        "objective.bind(layer, prototypes) (batchcam.losses.Objective.bind)")
    model.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    seen = 0
    desc = progress if isinstance(progress, str) else "train"
    for x, y, *masks in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        terms, logits = objective(model, x, y, masks[0] if masks else None)
        optimizer.zero_grad(set_to_none=True)
        weight = getattr(loader, "shard_weight", 1.0)  # DDP: W·B_r/B (batchcam.distributed.ShardedLoader)
        loss = terms["total"] if weight == 1.0 else terms["total"] * weight
        if objective.scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16 autocast: scaled backward; the step is skipped where the gradients overflowed
            objective.scaler.scale(loss).backward()
            objective.scaler.step(optimizer)
            objective.scaler.update()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.detach() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
    if objective.reduce is not None and sums:  # DDP: the epoch's sums over every process (one all-reduce)
        totals = torch.stack(list(sums.values()))
        counts = torch.stack([correct.double(), correct.new_tensor(seen).double()])
        objective.reduce(totals, counts)
        sums, correct, seen = dict(zip(sums, totals)), counts[0], float(counts[1])
    out = {k: float(v) / seen for k, v in sums.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise NonFiniteLossError(f"the training loss is not finite ({out}); lower the learning rate "
                                 "or the λ weights. No record was written.")
    return {**out, "accuracy": int(correct) / seen}


def recalibrate_batchnorm(model: nn.Module, loader: TensorLoader, epoch: int,
                          batches: int = BN_BATCHES) -> None:
    """Recompute BatchNorm's running statistics with the final weights of an epoch (chapter 6).

    During training the running mean and variance are moving averages over the last ~10
    batches, computed with weights that were still changing; with a global-average-pooling
    head the logits depend directly on those per-channel statistics, and SimpleCNN lost
    4 points of test accuracy in eval mode against train mode. A forward pass over ``batches``
    training batches in train mode, without gradients, with a cumulative average
    (``torch.optim.swa_utils.update_bn``; "precise BN", Wu & Johnson 2021) removes the gap.
    Models without BatchNorm are untouched. The batches (x [B, 1, S, S], y [B]) follow the epoch's
    seeded order.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    loader.set_epoch(epoch)
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(itertools.islice(loader, batches), model)
    loader.set_epoch(epoch + 1)

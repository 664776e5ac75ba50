"""The training step with each objective and distance, timed against cross-entropy (chapter 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._helpers import bf16_autocast
from ..cam import batch_gradcam_with_logits
from ..losses import batchcam_loss, prototype_loss
from ..models import MODEL_SPECS
from .config import BenchConfig, ModelCase, OBJECTIVES
from .timing import time_side_by_side
from .cam import _inputs, _prepare_model


@dataclass
class TrainCase:
    """A model in train mode, its optimiser, a batch and random prototypes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    layer_name: str
    x: torch.Tensor
    y: torch.Tensor
    prototypes: torch.Tensor
    lam: float
    amp: bool


def objective_loss(tc: TrainCase, objective: str, distance: str) -> torch.Tensor:
    """The training loss: ``CE`` alone from a plain forward, or ``CE + λ L_P + λ L_B`` from
    ``batch_gradcam_with_logits(..., create_graph=True)`` (the terms the objective names)."""
    if objective == "ce":
        return F.cross_entropy(tc.model(tc.x), tc.y)
    cam, logits = batch_gradcam_with_logits(tc.model, tc.x, tc.layer_name, tc.y, create_graph=True)
    loss = F.cross_entropy(logits, tc.y)
    if "proto" in objective:
        loss = loss + tc.lam * prototype_loss(cam, tc.prototypes, tc.y, distance)
    if "batchcam" in objective:
        loss = loss + tc.lam * batchcam_loss(cam, tc.y, distance)
    return loss


def train_step(tc: TrainCase, objective: str, distance: str) -> torch.Tensor:
    """One optimiser step: zero_grad, forward (+ maps), loss, backward, step."""
    tc.optimizer.zero_grad(set_to_none=True)
    with bf16_autocast(tc.x.device, tc.amp):
        loss = objective_loss(tc, objective, distance)
    loss.backward()
    tc.optimizer.step()
    return loss.detach()


def _train_case(mc: ModelCase, cfg: BenchConfig, device: torch.device) -> TrainCase:
    model = _prepare_model(mc, cfg, device, train=True)
    amp = device.type == "cuda"
    x, y = _inputs(cfg.train_batch, mc.size, cfg.num_classes, cfg.seed, device, channels_last=amp)
    protos = torch.rand(cfg.num_classes, 1, mc.size, mc.size, generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # TrainConfig's default optimiser
    return TrainCase(model, opt, MODEL_SPECS[mc.name].target_layer, x, y, protos.to(device), cfg.lam, amp)


def _train_variants(distances: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [("ce", None)] + [(obj, d) for obj in OBJECTIVES[1:] for d in distances]


def bench_training(mc: ModelCase, cfg: BenchConfig, device: torch.device, tc: Optional[TrainCase] = None) -> dict:
    """ms per training step of every objective × distance, and the ratio to a ``ce`` step."""
    tc = tc or _train_case(mc, cfg, device)
    variants = _train_variants(cfg.distances)
    fns = {_variant_key(o, d): (lambda o=o, d=d: train_step(tc, o, d or "l1")) for o, d in variants}
    timings, _ = time_side_by_side(fns, device, reps={k: cfg.reps for k in fns}, warmup=cfg.warmup,
                                   min_rep_s=cfg.min_rep_s)
    ce = timings["ce"]["median_ms"]
    steps = [{"objective": o, "distance": d, **timings[_variant_key(o, d)],
              "ratio_to_ce": timings[_variant_key(o, d)]["median_ms"] / ce} for o, d in variants]
    return {"model": mc.name, "image_size": mc.size, "batch_size": cfg.train_batch, "target_layer": tc.layer_name,
            "optimizer": "Adam(lr=1e-3)", "lambda": cfg.lam, "mode": "train",
            "prototypes": "random [C, 1, H, W] in [0, 1]", "steps": steps}


def _variant_key(objective: str, distance: Optional[str]) -> str:
    return objective if distance is None else f"{objective}:{distance}"

"""Evaluation: accuracy and reconstruction quality (L1, L2, SSIM against the class prototype).

Explained in chapter 4. "Reconstruction quality" compares each test map ``R_b`` (targets = true
labels) with ``P_{y_b}``: L1 and L2 are distances (lower is better), SSIM is a similarity (higher
is better). The meter also keeps the average map per class, the paper's Figures 2–7.
"""

from __future__ import annotations

from typing import Optional

import torch

from .losses import as_maps, check_targets, distance

__all__ = ["accuracy", "ReconstructionMeter", "reconstruction_quality"]


def _ssim_torchmetrics(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [B] of [B, 1, H, W] maps by torchmetrics (the reported metric; the training
    loss uses the equal, faster separable form in ``batchcam._ssim``)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a, b.to(a.dtype), data_range=1.0, reduction="none")


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of correct argmax predictions; logits [B, C], targets [B]."""
    return (logits.argmax(1) == targets).float().mean().item()


class ReconstructionMeter:
    """Streams reconstruction quality over many batches.

    ``update(recon [B, H, W], targets [B])`` accumulates per-class sums of L1, L2 and SSIM against
    ``prototypes`` [C, 1, H, W] and the per-class sum of maps; ``compute()`` returns the dict of
    :func:`reconstruction_quality`; ``average_reconstruction()`` returns [C, H, W].
    """

    def __init__(self, prototypes: torch.Tensor) -> None:
        self.prototypes = prototypes
        c = prototypes.shape[0]
        self.sums = {k: torch.zeros(c, dtype=torch.float64) for k in ("l1", "l2", "ssim")}
        self.count = torch.zeros(c, dtype=torch.float64)
        self.map_sum = torch.zeros((c,) + tuple(prototypes.shape[-2:]), dtype=torch.float64)

    @torch.no_grad()
    def update(self, recon: torch.Tensor, targets: torch.Tensor) -> None:
        r = as_maps(recon).float()
        if r.shape[-2:] != self.prototypes.shape[-2:]:
            raise ValueError(f"maps are {tuple(r.shape[-2:])} but prototypes {tuple(self.prototypes.shape[-2:])}")
        t = check_targets(targets, r.shape[0], self.prototypes.shape[0]).to(r.device)
        p = self.prototypes.to(r)[t]
        t_cpu = t.cpu()
        for kind in ("l1", "l2"):
            self.sums[kind].index_add_(0, t_cpu, distance(r, p, kind).double().cpu())
        self.sums["ssim"].index_add_(0, t_cpu, _ssim_torchmetrics(r, p).double().cpu())
        self.count.index_add_(0, t_cpu, torch.ones_like(t_cpu, dtype=torch.float64))
        self.map_sum.index_add_(0, t_cpu, r[:, 0].double().cpu())

    def compute(self) -> dict:
        n = self.count.sum().item()
        if n == 0:
            raise RuntimeError("no maps were added to the meter")
        per_class = {k: (v / self.count.clamp_min(1)).tolist() for k, v in self.sums.items()}
        per_class["n"] = [int(c) for c in self.count.tolist()]
        out = {k: v.sum().item() / n for k, v in self.sums.items()}
        out["per_class"] = per_class
        return out

    def average_reconstruction(self) -> torch.Tensor:
        """Mean map per class [C, H, W] (zeros for a class never seen)."""
        return (self.map_sum / self.count.clamp_min(1).view(-1, 1, 1)).float()


def reconstruction_quality(recon: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                           num_classes: Optional[int] = None) -> dict:
    """L1, L2 (lower is better) and SSIM (higher is better) of maps against their class prototypes.

    Args:
        recon: maps [B, H, W] or [B, 1, H, W] in [0, 1].
        prototypes: [C, 1, H, W].
        targets: true labels int [B].
    Returns:
        ``{"l1": float, "l2": float, "ssim": float, "per_class": {"l1": [C], "l2": [C], "ssim": [C], "n": [C]}}``;
        overall values are means over samples, per-class values means over that class's samples.
    """
    meter = ReconstructionMeter(prototypes if num_classes is None else prototypes[:num_classes])
    meter.update(recon, targets)
    return meter.compute()

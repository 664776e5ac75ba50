"""Distances between maps and the two losses of the paper: Prototype Loss and Batch-CAM Loss.

Explained in chapter 5. Maps ("reconstructions") are the normalised Grad-CAM maps ``R`` [B, H, W]
(or [B, 1, H, W]) in [0, 1].
"""

from __future__ import annotations

import torch

from ._helpers import unknown_choice
from ._ssim import ssim

__all__ = ["DISTANCES", "distance", "prototype_loss", "batchcam_loss"]

DISTANCES = ("l1", "l2", "ssim")


def as_maps(x: torch.Tensor, what: str = "recon") -> torch.Tensor:
    """View [B, H, W] or [B, 1, H, W] as [B, 1, H, W]."""
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"{what} must be [B, H, W] or [B, 1, H, W], got shape {tuple(x.shape)}")


def check_targets(targets: torch.Tensor, batch: int, num_classes: int | None = None) -> torch.Tensor:
    """Targets as int64 [B]; raises if the length or the range is wrong."""
    t = torch.as_tensor(targets)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() != batch:
        raise ValueError(f"targets has {t.numel()} entries but the batch has {batch} maps")
    if num_classes is not None and t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes - 1}] ({num_classes} prototypes), "
                         f"got min {int(t.min())}, max {int(t.max())}")
    return t


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-sample distance between maps ``a`` and ``b`` ([B, H, W] or [B, 1, H, W]) → [B].

    ``"l1"``: mean absolute difference; ``"l2"``: mean squared difference; ``"ssim"``: ``1 − SSIM``
    (torchmetrics' definition: Gaussian window 11, σ = 1.5, reflect padding, data range 1; computed
    by the separable form in ``batchcam._ssim``, ~20× faster forward + backward on CPU, and
    checked against torchmetrics in the tests). SSIM needs maps of at least 11 × 11 pixels.
    """
    if kind not in DISTANCES:
        raise unknown_choice("distance", kind, DISTANCES)
    a, b = as_maps(a, "a"), as_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if kind == "l1":
        return (a - b).abs().flatten(1).mean(1)
    if kind == "l2":
        return (a - b).pow(2).flatten(1).mean(1)
    return 1.0 - ssim(a, b, data_range=1.0)


def prototype_loss(recon: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                   distance: str = "l1") -> torch.Tensor:
    """Prototype Loss ``L_P = mean_b d(R_b, P_{t_b})`` (chapter 5).

    Args:
        recon: maps [B, H, W] or [B, 1, H, W].
        prototypes: class prototypes [C, 1, H, W] (from :func:`batchcam.class_prototypes`, same H, W).
        targets: class per sample, int [B] in [0, C).
        distance: ``"l1"``, ``"l2"`` or ``"ssim"``.
    Returns:
        A scalar tensor.
    """
    r = as_maps(recon)
    if prototypes.dim() != 4 or prototypes.shape[1] != 1:
        raise ValueError(f"prototypes must be [C, 1, H, W], got {tuple(prototypes.shape)}")
    if prototypes.shape[-2:] != r.shape[-2:]:
        raise ValueError(f"prototypes are {tuple(prototypes.shape[-2:])} but maps are {tuple(r.shape[-2:])}; "
                         "build them at the training image size (class_prototypes(..., size=H))")
    t = check_targets(targets, r.shape[0], prototypes.shape[0]).to(r.device)
    return _distance(r, prototypes.to(r)[t], distance).mean()


def batchcam_loss(recon: torch.Tensor, targets: torch.Tensor, distance: str = "l1") -> torch.Tensor:
    """Batch-CAM Loss ``L_B = mean_b d(R_b, sg(R̄_{t_b}))`` (chapter 5).

    ``R̄_c`` is the mean map of the samples of class ``c`` in this batch, treated as a constant
    (stop-gradient). A class with one sample in the batch contributes 0 (it would be compared with
    itself); the mean is still over all B samples.

    Args:
        recon: maps [B, H, W] or [B, 1, H, W].
        targets: class per sample, int [B].
        distance: ``"l1"``, ``"l2"`` or ``"ssim"``.
    Returns:
        A scalar tensor.
    """
    r = as_maps(recon)
    t = check_targets(targets, r.shape[0]).to(r.device)
    classes, inverse, counts = torch.unique(t, return_inverse=True, return_counts=True)
    sums = torch.zeros((len(classes),) + tuple(r.shape[1:]), dtype=r.dtype, device=r.device)
    means = sums.index_add_(0, inverse, r.detach()) / counts.view(-1, 1, 1, 1).to(r.dtype)
    d = _distance(r, means[inverse], distance)
    return (d * (counts[inverse] > 1).to(d.dtype)).mean()


_distance = distance  # the losses' ``distance`` argument shadows the function name inside them

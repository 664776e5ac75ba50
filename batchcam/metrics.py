"""Evaluation of maps: reconstruction quality with its baselines, dead maps, coherence (chapters 4 and 5).

"Reconstruction quality" compares each test map ``R_b`` (targets = true labels) with ``P_{y_b}``:
L1 and L2 are distances (lower is better), SSIM a similarity (higher is better). Alone these
numbers mean little: an all-zero map scores well against dim prototypes, so every evaluation
also scores two baselines with the same code (:func:`baseline_maps`: the blank map and the input
image itself) and counts dead maps (all zero before normalisation). Coherence, the within-class
dispersion of the maps, comes with an input-dependence measure (correlation of each map with its
own image and with its class prototype), so a class template cannot win coherence for free.
All maps, images and prototypes are [N, H, W].
"""

from __future__ import annotations

import torch

from .losses import distance

__all__ = ["ReconstructionMeter", "reconstruction_quality", "baseline_maps", "BASELINES"]

BASELINES = ("blank", "input")


def _ssim_torchmetrics(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [B] of [B, H, W] maps by torchmetrics (the reported metric; the training
    loss uses the equal, faster separable form in ``batchcam._ssim``)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a[:, None], b[:, None].to(a.dtype), data_range=1.0,
                                               reduction="none")


def _ssim_valid(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [B] of [B, H, W] maps over *valid* windows only: torchmetrics' SSIM map with its
    5-pixel reflect-padded border cropped, so every averaged window lies inside the image (the convention
    of scikit-image's ``structural_similarity`` and of Wang et al.'s reference code). The whole-image
    convention (:func:`_ssim_torchmetrics`) also averages the border windows, which read mirrored pixels;
    on dark, mostly-empty maps the two rank a blank map and a trained map differently (chapter 4)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(a[:, None], b[:, None].to(a.dtype), data_range=1.0,
                                                  reduction="none", return_full_image=True)
    pad = (11 - 1) // 2  # torchmetrics' Gaussian window: 11 px for σ = 1.5
    return full[:, 0, pad:-pad, pad:-pad].flatten(1).mean(1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson correlation [B] of [B, H, W] maps; 0 where one of them is constant."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.norm(dim=1) * b.norm(dim=1))
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-30), torch.zeros_like(den))


def baseline_maps(kind: str, images: torch.Tensor) -> torch.Tensor:
    """Maps a trivial explainer would give, [B, H, W] (chapter 4): ``"blank"`` all zeros,
    ``"input"`` the image itself divided by its max. ``images``: float [B, H, W] in [0, 1]."""
    if kind == "blank":
        return torch.zeros_like(images)
    if kind == "input":
        peak = images.flatten(1).amax(1).view(-1, 1, 1)
        return images / torch.where(peak > 0, peak, torch.ones_like(peak))
    raise ValueError(f"unknown baseline {kind!r}; valid: {BASELINES}")


class ReconstructionMeter:
    """Streams reconstruction quality, dead maps and coherence over many batches (chapters 4 and 5).

    ``update(maps [B, H, W] in [0, 1], targets int64 [B], images [B, H, W], dead bool [B])``;
    ``compute()`` returns overall means and per-class values; ``average_reconstruction()`` the
    mean map per class [C, H, W] (the paper's Figures 2–7). ``prototypes``: [C, H, W].
    """

    KEYS = ("l1", "l2", "ssim", "ssim_valid", "dead", "corr_image", "corr_prototype", "sq")

    def __init__(self, prototypes: torch.Tensor) -> None:
        self.prototypes = prototypes
        c = prototypes.shape[0]
        self.sums = {k: torch.zeros(c, dtype=torch.float64) for k in self.KEYS}
        self.count = torch.zeros(c, dtype=torch.float64)
        self.map_sum = torch.zeros((c,) + tuple(prototypes.shape[-2:]), dtype=torch.float64)

    @torch.no_grad()
    def update(self, maps: torch.Tensor, targets: torch.Tensor, images: torch.Tensor,
               dead: torch.Tensor) -> None:
        r = maps.float()
        p = self.prototypes.to(r)[targets]
        values = {"l1": distance(r, p, "l1"), "l2": distance(r, p, "l2"), "ssim": _ssim_torchmetrics(r, p),
                  "ssim_valid": _ssim_valid(r, p),
                  "dead": dead.to(r.dtype), "corr_image": _pearson(r, images.to(r)),
                  "corr_prototype": _pearson(r, p), "sq": r.pow(2).flatten(1).mean(1)}
        t = targets.cpu()
        for k, v in values.items():
            self.sums[k].index_add_(0, t, v.double().cpu())
        self.count.index_add_(0, t, torch.ones_like(t, dtype=torch.float64))
        self.map_sum.index_add_(0, t, r.double().cpu())

    def compute(self) -> dict:
        """``{"l1", "l2", "ssim", "ssim_valid", "dead_fraction", "dispersion", "corr_image", "corr_prototype",
        "per_class": {same keys: [C] lists, "n": [C]}}``; dispersion is the mean squared distance
        of a map to its class's mean map."""
        n = self.count.sum().item()
        if n == 0:
            raise RuntimeError("no maps were added to the meter")
        k = self.count.clamp_min(1)
        mean_map = self.map_sum / k.view(-1, 1, 1)
        dispersion = (self.sums["sq"] / k - mean_map.pow(2).flatten(1).mean(1)).clamp_min(0)
        per_class = {name: (self.sums[name] / k).tolist()
                     for name in ("l1", "l2", "ssim", "ssim_valid", "corr_image", "corr_prototype")}
        per_class.update(dead_fraction=(self.sums["dead"] / k).tolist(), dispersion=dispersion.tolist(),
                         n=[int(c) for c in self.count.tolist()])
        out = {name: self.sums[name].sum().item() / n
               for name in ("l1", "l2", "ssim", "ssim_valid", "corr_image", "corr_prototype")}
        out.update(dead_fraction=self.sums["dead"].sum().item() / n,
                   dispersion=(dispersion * self.count).sum().item() / n, per_class=per_class)
        return out

    def average_reconstruction(self) -> torch.Tensor:
        """Mean map per class [C, H, W] (zeros for a class never seen)."""
        return (self.map_sum / self.count.clamp_min(1).view(-1, 1, 1)).float()


def reconstruction_quality(maps: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                           images: torch.Tensor | None = None) -> dict:
    """One-shot :class:`ReconstructionMeter` (chapter 4): maps [B, H, W] in [0, 1] against
    prototypes [C, H, W] for targets int64 [B]; ``images`` [B, H, W] (default: the maps) feed
    the input-dependence columns. Dead maps are those that are all zero."""
    targets = torch.as_tensor(targets).long()
    meter = ReconstructionMeter(prototypes)
    meter.update(maps, targets, maps if images is None else images, maps.flatten(1).amax(1) <= 0)
    return meter.compute()

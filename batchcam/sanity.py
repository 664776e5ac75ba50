"""Sanity checks for saliency maps (Adebayo et al. 2018): do the maps depend on the model at all?

Chapter 8 explains them. *Cascading parameter randomisation* re-initialises the model's layers one
after the other, from the logits down, and compares each stage's maps with the trained model's: a
method whose maps barely change is an edge detector, not an explanation. *Data randomisation*
(training on shuffled labels) is a training run done elsewhere; compare its maps with
:func:`compare_maps`. Similarity of two maps: Spearman rank correlation (average ranks for ties)
and SSIM (torchmetrics: Gaussian window 11, σ = 1.5, data_range 1). Maps are [N, H, W].
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .cam import batch_gradcam

__all__ = ["rank_average", "spearman", "ssim", "compare_maps", "randomization_layers",
           "reinitialize", "cascading_randomization"]


def rank_average(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..D [N, D] float64 of each row of ``x`` [N, D]; ties get their average rank
    (``scipy.stats.rankdata(method="average")``). For :func:`spearman` (chapter 8)."""
    n, d = x.shape
    sv, order = torch.sort(x, dim=1, stable=True)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[:, 1:] = sv[:, 1:] != sv[:, :-1]
    # one id per run of equal values, unique over the whole batch
    group = (new.long().cumsum(1) - 1 + torch.arange(n, device=x.device)[:, None] * d).reshape(-1)
    pos = torch.arange(d, dtype=torch.float64, device=x.device).repeat(n)
    first = torch.full_like(pos, float(d)).scatter_reduce(0, group, pos, "amin")
    last = torch.zeros_like(pos).scatter_reduce(0, group, pos, "amax")
    avg = ((first + last) / 2 + 1)[group].view(n, d)  # in sorted order
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation [N] float64 of ``a[i]`` and ``b[i]`` (shapes [N, ...]; chapter 8).

    The Pearson correlation of average ranks, as ``scipy.stats.spearmanr``. NaN where one of the
    two is constant (e.g. an all-zero "dead" Grad-CAM map): the correlation is undefined.
    """
    ra, rb = rank_average(a.flatten(1)), rank_average(b.flatten(1).to(a.device))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(den > 0, (ra * rb).sum(1) / den.where(den > 0, 1.0), float("nan"))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-map SSIM [N] of maps [N, H, W] in [0, 1] by torchmetrics (data_range 1; H, W ≥ 11; chapter 8).
    Chapter 4 explains SSIM itself."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a = a if a.is_floating_point() else a.float()
    return structural_similarity_index_measure(a[:, None], b[:, None].to(a), data_range=1.0,
                                               reduction="none")


def compare_maps(maps_a: torch.Tensor, maps_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image similarity of two sets of maps [N, H, W]: ``{"spearman": [N], "ssim": [N]}`` (chapter 8).

    For data randomisation: maps of a model trained on shuffled labels against those of the
    normally trained one, same images and targets. Spearman is NaN for a constant map.
    """
    if maps_a.shape != maps_b.shape or maps_a.dim() != 3:
        raise ValueError(f"maps must both be [N, H, W], got {tuple(maps_a.shape)} and "
                         f"{tuple(maps_b.shape)}")
    return {"spearman": spearman(maps_a, maps_b), "ssim": ssim(maps_a, maps_b)}


def randomization_layers(model: nn.Module) -> list[str]:
    """Default cascade (chapter 8): names of the modules with parameters of their own, in reverse
    ``named_modules`` order (logits first). BatchNorm layers are stages of their own."""
    return [n for n, m in model.named_modules()
            if n and next(m.parameters(recurse=False), None) is not None][::-1]


def reinitialize(module: nn.Module) -> None:
    """Re-draw a module's parameters by its own ``reset_parameters()`` (BatchNorm: weight 1, bias
    0, running statistics reset too); without one, its direct parameters are drawn from N(0, 0.02²)
    (timm's convention) and running statistics, if any, reset. Uses the global RNG. The default ``reinit``
    of :func:`cascading_randomization` (chapter 8); ``module`` is changed in place."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            nn.init.normal_(p, std=0.02)
    if hasattr(module, "reset_running_stats"):
        module.reset_running_stats()


def _maps(model, images, layer, targets, batch_size) -> torch.Tensor:
    return torch.cat([batch_gradcam(model, images[i:i + batch_size], layer,
                                    targets[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])


def cascading_randomization(model: nn.Module, images: torch.Tensor, layer: Union[str, nn.Module],
                            targets: Optional[torch.Tensor] = None, *,
                            layers: Optional[Sequence[str]] = None, seed: int = 0,
                            reinit: Callable[[nn.Module], None] = reinitialize,
                            batch_size: int = 256, keep_maps: bool = False) -> list[dict]:
    """Cascading parameter randomisation (Adebayo et al. 2018) of Grad-CAM maps, chapter 8.

    Stage 0 is the trained model; stage ``i`` ≥ 1 has ``layers[:i]`` re-initialised cumulatively
    in a deep copy (the caller's model is untouched), ``reinit(module)`` running under
    ``torch.manual_seed(seed + i)`` inside ``torch.random.fork_rng`` (the caller's RNG state is
    restored). Maps: batch Grad-CAM [N, H, W] (max-normalised) of the eval-mode copy at ``layer``,
    for the same ``targets`` at every stage (default: the trained model's predictions), each stage
    compared with stage 0.

    Args:
        model: trained classifier. images: [N, C, H, W]. layer: Grad-CAM layer (name or module).
        layers: dotted module names, logits first; default :func:`randomization_layers`.
        reinit: re-initialises one module; a no-op gives correlation 1 at every stage.

    Returns:
        One dict per stage: ``stage``, ``layer`` (None for stage 0), ``spearman_mean``,
        ``spearman_std``, ``spearman_abs_mean`` (mean of |ρ|: a map that flips its ranking still counts as
        dependent), ``ssim_mean``, ``ssim_std`` (over images; NaN correlations skipped),
        ``undefined`` (number of NaN correlations: constant maps), ``dead`` (share of all-zero
        maps), and ``maps`` [N, H, W] if ``keep_maps``.
    """
    if not isinstance(layer, str):
        layer = next(n for n, m in model.named_modules() if m is layer)
    layers = randomization_layers(model) if layers is None else list(layers)
    work = copy.deepcopy(model).eval()
    if targets is None:
        with torch.no_grad():
            targets = torch.cat([work(images[i:i + batch_size]).argmax(1)
                                 for i in range(0, len(images), batch_size)])
    targets = torch.as_tensor(targets, device=images.device).long()
    cuda = sorted({p.device.index or 0 for p in work.parameters() if p.is_cuda})
    ref = _maps(work, images, layer, targets, batch_size)
    rows = []
    for stage in range(len(layers) + 1):
        if stage:
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                torch.manual_seed(seed + stage)
                reinit(work.get_submodule(layers[stage - 1]))
        maps = _maps(work, images, layer, targets, batch_size)
        sim = compare_maps(maps, ref)
        rho, s = sim["spearman"], sim["ssim"].double()
        ok = rho[~rho.isnan()]
        row = {"stage": stage, "layer": layers[stage - 1] if stage else None,
               "spearman_mean": ok.mean().item() if len(ok) else float("nan"),
               "spearman_std": ok.std(unbiased=False).item() if len(ok) else float("nan"),
               "spearman_abs_mean": ok.abs().mean().item() if len(ok) else float("nan"),
               "ssim_mean": s.mean().item(), "ssim_std": s.std(unbiased=False).item(),
               "undefined": int(rho.isnan().sum()),
               "dead": (maps.flatten(1).amax(1) == 0).double().mean().item()}
        if keep_maps:
            row["maps"] = maps
        rows.append(row)
    return rows

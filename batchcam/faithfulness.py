"""Faithfulness of saliency maps: deletion / insertion AUC and ROAD (chapter 8 explains them).

A map is faithful when the pixels it ranks first are the ones the model needs. *Deletion /
insertion* (Petsiuk et al. 2018, RISE) moves the top-ranked pixels to or from a baseline step by
step and integrates the target-class probability; *ROAD* (Rong et al. 2022) removes the most
(MoRF) or least (LeRF) relevant pixels by noisy linear imputation, as pytorch-grad-cam does.
Plus the reference maps of faithfulness tables and a fast frozen model (metrics = forwards).
Shapes: images [N, C, H, W] float in [0, 1], maps [N, H, W], targets [N]; on the model's device.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import metrics

__all__ = ["BASELINES", "MAP_BASELINES", "ROAD_PERCENTS", "gaussian_blur", "deletion_insertion",
           "noisy_linear_imputation", "road", "baseline_maps", "inference_model"]

BASELINES = ("zero", "blur")
MAP_BASELINES = ("random", "blob", "input", "prototype")
ROAD_PERCENTS = (10, 20, 30, 40, 50, 60, 70, 80, 90)
# ROAD's imputation weights (pytorch-grad-cam's neighbors_weights); symmetric: conv = correlation
_NEIGHBOURS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def _check(images: torch.Tensor, maps: torch.Tensor, targets) -> tuple[torch.Tensor, ...]:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float [N, C, H, W], got {images.dtype} {images.shape}")
    n, _, h, w = images.shape
    if tuple(maps.shape) != (n, h, w):
        raise ValueError(f"maps must be [N, H, W] = {(n, h, w)}, got {tuple(maps.shape)}")
    t = torch.as_tensor(targets, device=images.device).long().reshape(-1)
    if t.numel() != n:
        raise ValueError(f"targets must have one class per image ({n}), got {t.numel()}")
    return images, maps.to(images.device), t


def gaussian_blur(images: torch.Tensor, sigma: float = 5.0, kernel_size: int = 11) -> torch.Tensor:
    """Blur [N, C, H, W] → [N, C, H, W] by a normalised ``kernel_size``² Gaussian of std ``sigma`` px, zero
    padding. The defaults (11 × 11, σ = 5 px) are RISE's reference code's: the "blur" baseline (chapter 8)."""
    r = kernel_size // 2
    g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(images.device, images.dtype)
    c = images.shape[1]
    out = F.conv2d(images, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    return F.conv2d(out, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


def _probs(model: Callable, x: torch.Tensor, t: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Target-class softmax probability [M] of inputs [M, C, H, W], in chunks of ``batch_size``."""
    out = [model(x[i:i + batch_size]).softmax(1).gather(1, t[i:i + batch_size, None])[:, 0]
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).to(x.dtype) if out else x.new_zeros(0)


@contextlib.contextmanager
def _eval(model):
    """Eval mode and no_grad for the duration of a metric; the caller's mode is restored."""
    was = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if isinstance(model, nn.Module):
            model.train(was)


def deletion_insertion(model: Callable, images: torch.Tensor, maps: torch.Tensor, targets, *,
                       steps: int = 28, baseline: str = "zero", batch_size: int = 2048,
                       skip_unchanged: bool = True) -> dict[str, torch.Tensor]:
    """Deletion and insertion AUC of each map (RISE), batched over images and steps (chapter 8).

    Pixels are ranked by map value, descending; ties keep row-major pixel order (stable sort). At
    step ``s`` = 0..steps the ``n_s = (s·H·W) // steps`` top pixels (all channels) are moved:
    deletion replaces them by the baseline, insertion shows them on the baseline. The curve is the
    target-class softmax probability at each step (``steps + 1`` points); the AUC integrates it by
    the trapezoidal rule over the fraction ``n_s / (H·W)`` ∈ [0, 1].

    Args:
        model: classifier → logits [B, K]; run in eval mode (restored after) under no_grad.
            :func:`inference_model` makes it several times faster.
        baseline: ``"zero"`` (black) or ``"blur"`` (:func:`gaussian_blur`: 11 × 11, σ = 5 px).
        batch_size: inputs per model call (chunks of ``batch_size // (2·steps)`` images).
        skip_unchanged: a step that moves only pixels equal to the baseline (MNIST's black
            background, zero baseline) leaves the input as it was: its probability is copied from
            the previous step, not recomputed. Exact.
    Returns ``{"deletion": [N], "insertion": [N], "deletion_curve": [N, steps+1],
    "insertion_curve": [N, steps+1], "fractions": [steps+1] float64}``.
    """
    x, maps, t = _check(images, maps, targets)
    if baseline not in BASELINES or steps < 1:
        raise ValueError(f"need baseline in {BASELINES} and steps ≥ 1, got {baseline!r}, {steps}")
    (n, _, h, w), dev = x.shape, x.device
    hw = h * w
    counts = torch.tensor([(s * hw) // steps for s in range(steps + 1)], device=dev)
    base = torch.zeros_like(x) if baseline == "zero" else gaussian_blur(x)
    curves = {k: x.new_empty(steps + 1, n) for k in ("deletion", "insertion")}
    per = max(1, batch_size // (2 * steps))
    ar = torch.arange(hw, device=dev).expand(per, hw)
    with _eval(model):
        for i in range(0, n, per):
            xb, bb, tb = x[i:i + per], base[i:i + per], t[i:i + per]
            b = len(xb)
            order = torch.sort(maps[i:i + per].reshape(b, hw), dim=1, descending=True,
                               stable=True).indices
            rank = torch.empty_like(order).scatter_(1, order, ar[:b])
            moved = (rank[None] < counts[1:-1, None, None]).view(steps - 1, b, 1, h, w)
            # a step changes the input iff it moves a pixel that differs from the baseline
            diff = F.pad((xb != bb).any(1).reshape(b, hw).gather(1, order).long().cumsum(1), (1, 0))
            diff = diff[:, counts].T  # [steps+1, b]: differing pixels moved by step s
            need = diff[1:-1] > diff[:-2] if skip_unchanged else moved.new_ones(steps - 1, b)
            tn, k = tb.expand(steps - 1, b)[need], int(need.sum())
            inputs = [xb, bb, torch.where(moved, bb, xb)[need], torch.where(moved, xb, bb)[need]]
            p = _probs(model, torch.cat(inputs), torch.cat([tb, tb, tn, tn]), batch_size)
            for name, first, last, inner in (("deletion", p[:b], p[b:2 * b], p[2 * b:2 * b + k]),
                                             ("insertion", p[b:2 * b], p[:b], p[2 * b + k:])):
                cur = curves[name][:, i:i + b]
                cur[0], cur[steps] = first, last
                cur[1:steps][need] = inner
                for s in range(1, steps):  # unchanged steps copy the previous probability
                    cur[s] = torch.where(need[s - 1], cur[s], cur[s - 1])
    out = {"fractions": counts.double() / hw}
    for name, cur in curves.items():
        out[name + "_curve"] = cur = cur.T.contiguous()
        auc = (cur[:, 1:].double() + cur[:, :-1].double()) / 2 * out["fractions"].diff()
        out[name] = auc.sum(1).to(cur.dtype)
    return out


def noisy_linear_imputation(images: torch.Tensor, missing: torch.Tensor, *, noise: float = 0.01,
                            generator: Optional[torch.Generator] = None, tol: float = 1e-8,
                            max_iter: Optional[int] = None, method: str = "auto") -> torch.Tensor:
    """ROAD's noisy linear imputation of the ``missing`` pixels of each image (chapter 8).

    Each missing pixel is the weighted mean of its in-image 8 neighbours (weights 1/6 edge, 1/12
    diagonal, renormalised at the border), known pixels fixed: one sparse linear system per image
    and channel, which pytorch-grad-cam solves with ``scipy.sparse.linalg.spsolve``. ``method``:
    ``"direct"`` solves them as one block-diagonal sparse system with ``spsolve`` (exact; fastest on a
    CPU), ``"cg"`` all at once on the images' device by Jacobi-preconditioned conjugate gradients in
    float64 until ``‖r‖ ≤ tol·‖b‖`` (no copy to the host; for a GPU), ``"auto"`` the first on a CPU and
    the second elsewhere. The systems are symmetric positive definite when some pixel of the image is
    known; with none the value is 0. Then Gaussian noise of std ``noise`` (from ``generator``) is added
    to the missing pixels. images [M, C, H, W], missing [M, H, W] bool → [M, C, H, W] in the dtype of
    ``images``.
    """
    if method not in ("auto", "direct", "cg"):
        raise ValueError(f"method must be 'auto', 'direct' or 'cg', got {method!r}")
    m, c, h, w = images.shape
    x = images.to(torch.float64).reshape(m * c, h, w)
    miss = missing.repeat_interleave(c, 0)
    if method == "direct" or (method == "auto" and images.device.type == "cpu"):
        filled = _impute_direct(x.cpu(), miss.cpu()).to(images.device)
    else:
        filled = _impute_cg(x, miss, tol, max_iter)
    out = filled.view(m, c, h, w).to(images.dtype)
    if noise:
        eps = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        out = out + noise * eps * missing[:, None].to(out.dtype)
    return out


def _impute_cg(x: torch.Tensor, missing: torch.Tensor, tol: float, max_iter: Optional[int]) -> torch.Tensor:
    """:func:`noisy_linear_imputation`'s systems by batched Jacobi-preconditioned CG: x float64 [M, H, W],
    missing bool [M, H, W] → x with the missing pixels imputed (no noise)."""
    n, h, w = x.shape
    f64 = dict(dtype=torch.float64, device=x.device)
    kern = torch.tensor(_NEIGHBOURS, **f64).view(1, 1, 3, 3)
    x, miss = x.view(n, 1, h, w), missing.to(**f64).view(n, 1, h, w)
    wsum = F.conv2d(torch.ones(1, 1, h, w, **f64), kern, padding=1)  # in-image neighbour weight

    def matvec(v):  # the system on the missing pixels: v_i·Σ_j w_ij − Σ_j w_ij v_j
        return miss * (wsum * v - F.conv2d(v, kern, padding=1))

    rhs = miss * F.conv2d(x * (1 - miss), kern, padding=1)
    minv = miss / wsum
    sol = minv * rhs
    r = rhs - matvec(sol)
    p = z = minv * r
    rz = (r * z).sum((1, 2, 3))
    stop = tol * rhs.flatten(1).norm(dim=1)
    for _ in range(max_iter or 2 * h * w):
        active = r.flatten(1).norm(dim=1) > stop
        if not bool(active.any()):
            break
        ap = matvec(p)
        pap = (p * ap).sum((1, 2, 3))
        alpha = torch.where(active & (pap > 0), rz / pap.where(pap > 0, 1.0), 0.0)
        sol, r = sol + alpha.view(-1, 1, 1, 1) * p, r - alpha.view(-1, 1, 1, 1) * ap
        z = minv * r
        rz_new = (r * z).sum((1, 2, 3))
        beta = torch.where(rz > 0, rz_new / rz.where(rz > 0, 1.0), 0.0)
        p, rz = z + beta.view(-1, 1, 1, 1) * p, rz_new
    return (x * (1 - miss) + miss * sol).view(n, h, w)


def _impute_direct(x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """:func:`noisy_linear_imputation`'s systems as one block-diagonal sparse system, solved by
    ``scipy.sparse.linalg.spsolve``: x float64 [M, H, W] (CPU), missing bool [M, H, W] → x imputed."""
    import numpy as np
    import scipy.sparse
    import scipy.sparse.linalg

    xs, miss = x.numpy(), missing.numpy()
    n, h, w = xs.shape
    unknown = miss & ~miss.reshape(n, -1).all(1)[:, None, None]  # an image with no known pixel gets 0
    out = np.where(miss, 0.0, xs)
    count = int(unknown.sum())
    if count == 0:
        return torch.from_numpy(out)
    index = np.full(xs.shape, -1, dtype=np.int64)
    index[unknown] = np.arange(count)

    def pad(a, value):
        return np.pad(a, ((0, 0), (1, 1), (1, 1)), constant_values=value)

    p_x, p_miss, p_index = pad(xs, 0.0), pad(miss, True), pad(index, -1)
    p_inside = pad(np.ones_like(miss), False)
    diag, rhs, rows, cols, vals = np.zeros(count), np.zeros(count), [], [], []
    own = index[unknown]
    for di in range(3):
        for dj in range(3):
            weight = _NEIGHBOURS[di][dj]
            if not weight:
                continue
            window = (slice(None), slice(di, di + h), slice(dj, dj + w))
            inside, other = p_inside[window][unknown], p_index[window][unknown]
            diag += weight * inside
            rhs += weight * np.where(inside & ~p_miss[window][unknown], p_x[window][unknown], 0.0)
            linked = other >= 0
            rows.append(own[linked]), cols.append(other[linked]), vals.append(np.full(int(linked.sum()), -weight))
    rows.append(own), cols.append(own), vals.append(diag)
    a = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(count, count))
    out[unknown] = scipy.sparse.linalg.spsolve(a, rhs)
    return torch.from_numpy(out)


def road(model: Callable, images: torch.Tensor, maps: torch.Tensor, targets, *,
         percents: Sequence[float] = ROAD_PERCENTS, noise: float = 0.01,
         generator: Optional[torch.Generator] = None, batch_size: int = 2048,
         tol: float = 1e-8) -> dict[str, torch.Tensor]:
    """ROAD scores (Rong et al. 2022), as pytorch-grad-cam 1.5 defines them (chapter 8).

    For each ``p`` in ``percents`` (the share of pixels *removed*, %), let ``q = 100 − p``: MoRF imputes the pixels
    whose map value is ≥ the ``q``-th percentile of the map (linear interpolation, as ``numpy.percentile``); LeRF
    those whose ``1 − map`` is ≥ the ``q``-th percentile of ``1 − map``. (pytorch-grad-cam's ``percentile`` argument
    is this ``q``, the share kept.) A score is the target-class softmax probability after imputation minus before
    (their ``ClassifierOutputSoftmaxTarget`` with ``return_diff``); ``combined = mean_p (LeRF − MoRF)/2`` is their
    ``ROADCombined``: higher is more faithful. Imputation: :func:`noisy_linear_imputation`. Images [N, C, H, W],
    maps [N, H, W], targets [N] → ``{"morf": [N, P], "lerf": [N, P], "combined": [N], "prob": [N] (before
    imputation)}``.
    """
    x, maps, t = _check(images, maps, targets)
    pct = torch.as_tensor(percents, dtype=torch.float64)
    if pct.numel() == 0 or not bool(((pct > 0) & (pct < 100)).all()):
        raise ValueError(f"percents must lie in (0, 100), got {list(percents)}")
    n, c, h, w = x.shape
    fmaps = maps.to(torch.promote_types(maps.dtype, torch.float32))
    q, k = ((100 - pct) / 100).to(fmaps), len(pct)
    morf, lerf = x.new_empty(n, k), x.new_empty(n, k)
    per = max(1, batch_size // (2 * k))
    with _eval(model):
        prob = _probs(model, x, t, batch_size)
        for i in range(0, n, per):
            mb = fmaps[i:i + per].flatten(1)
            b = len(mb)
            miss = torch.stack([s[None] >= torch.quantile(s, q, dim=1)[..., None]
                                for s in (mb, 1 - mb)])
            imgs = x[i:i + per].expand(2, k, b, c, h, w).reshape(-1, c, h, w)
            imp = noisy_linear_imputation(imgs, miss.view(-1, h, w), noise=noise,
                                          generator=generator, tol=tol)
            pr = _probs(model, imp, t[i:i + per].repeat(2 * k), batch_size).view(2, k, b)
            morf[i:i + b], lerf[i:i + b] = (pr - prob[i:i + b]).transpose(1, 2)
    return {"morf": morf, "lerf": lerf, "combined": ((lerf - morf) / 2).mean(1), "prob": prob}


def baseline_maps(kind: str, images: torch.Tensor, targets=None,
                  prototypes: Optional[torch.Tensor] = None, *, seed: int = 0,
                  sigma: Optional[float] = None) -> torch.Tensor:
    """Reference maps [N, H, W] in [0, 1] for faithfulness tables (chapter 8).

    ``"random"``: uniform noise from ``torch.Generator().manual_seed(seed)`` (CPU, then moved);
    ``"blob"``: a centred Gaussian of std ``sigma`` (default min(H, W)/4 px), max 1, same for all;
    ``"input"``: the image itself (channel mean), divided by its max (an all-zero image stays 0);
    ``"prototype"``: ``prototypes[targets]``, prototypes [K, H, W] (the true class's mean image).
    """
    n, _, h, w = images.shape  # [N, C, H, W]
    dtype = images.dtype if images.is_floating_point() else torch.float32
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, h, w, generator=g, dtype=dtype).to(images.device)
    if kind == "blob":
        s = min(h, w) / 4 if sigma is None else sigma
        yy = torch.arange(h, dtype=torch.float64)[:, None] - (h - 1) / 2
        xx = torch.arange(w, dtype=torch.float64)[None] - (w - 1) / 2
        g = torch.exp(-(yy ** 2 + xx ** 2) / (2 * s ** 2))
        return (g / g.max()).to(images.device, dtype).expand(n, h, w).clone()
    if kind == "input":  # the reconstruction tables' input baseline, on the channel mean
        return metrics.baseline_maps("input", images.to(dtype).mean(1))
    if kind == "prototype":
        if prototypes is None or targets is None:
            raise ValueError("kind='prototype' needs prototypes [K, H, W] and targets [N]")
        t = torch.as_tensor(targets, device=prototypes.device).long().reshape(-1)
        return prototypes.reshape(-1, h, w)[t].to(images.device, dtype).clone()
    raise ValueError(f"kind must be one of {MAP_BASELINES}, got {kind!r}")


class _Fast(nn.Module):
    """``fn`` on fixed-size batches (the last zero-padded: no recompiles), cast to ``dtype`` and
    channels-last; float32 logits."""

    def __init__(self, fn: nn.Module, dtype: torch.dtype, batch: int) -> None:
        super().__init__()
        self.fn, self.dtype, self.batch = fn, dtype, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), self.batch):
            xb = x[i:i + self.batch].to(self.dtype)
            k = len(xb)
            xb = F.pad(xb, (0, 0, 0, 0, 0, 0, 0, self.batch - k)) if k < self.batch else xb
            out.append(self.fn(xb.contiguous(memory_format=torch.channels_last))[:k].float())
        return torch.cat(out)


def inference_model(model: nn.Module, example: torch.Tensor, *, backend: str = "compile",
                    dtype: torch.dtype = torch.float32, batch: int = 256) -> nn.Module:
    """A fast, frozen, eval-mode copy of ``model`` for :func:`deletion_insertion` and :func:`road`.

    The metrics are forward passes only (up to 56 per image for 28 steps). Freezing folds BatchNorm
    into the convolutions and fuses the ReLUs; channels-last suits oneDNN; bfloat16 uses the AMX
    units of recent Intel CPUs (elsewhere it may be slower) and moves probabilities by ~1e-3: fine
    for AUC tables, not for exactness tests. Chapter 8 gives the measured speed-ups.
    ``backend``: ``"compile"`` (``torch.compile`` with inductor freezing; needs a C++ compiler on
    CPU, ~10 s) or ``"jit"`` (TorchScript trace + freeze + optimize; float32 only). ``example``: an
    input batch [B, C, H, W]. Returns a module mapping [M, C, H, W] (any M) to float32 logits.
    """
    if backend not in ("compile", "jit") or (backend == "jit" and dtype != torch.float32):
        raise ValueError(f"backend must be 'compile' or 'jit' (float32 only), got {backend!r}")
    work = copy.deepcopy(model).eval().to(dtype)
    x = example[:1].to(dtype).expand(batch, *example.shape[1:])
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        if backend == "jit":
            fn = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(work, x)))
        else:
            fn = torch.compile(work, dynamic=False, options={"freezing": True})
        fast = _Fast(fn, dtype, batch).eval()
        fast(x)  # compile now, not inside the first metric call
    return fast

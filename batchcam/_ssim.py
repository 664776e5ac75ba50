"""SSIM as two small matrix products per statistic — the differentiable ``"ssim"`` distance (chapter 4
builds SSIM by hand and compares; chapter 6 trains with it).

Same definition as torchmetrics' ``structural_similarity_index_measure`` with its defaults
(Gaussian window 11, σ = 1.5, images reflect-padded by 5 px, K1 = 0.01, K2 = 0.03, variances
clamped at 0, the SSIM map averaged over all H × W pixels); ``tests/test_losses.py`` checks values
and gradients against torchmetrics and against a plain NumPy loop.

Why not call torchmetrics inside the training loop: it runs the Gaussian window as an 11 × 11
``conv2d`` on 1-channel maps, and on CPU the backward of that convolution was ~78 % of the time of a
whole SSIM loss step (torch.profiler, B = 64, 28 px; chapter 3 reports the training-step timings). The window is
separable and the padding is linear, so "pad, then blur" is ``A_h @ X @ A_wᵀ`` with one fixed [H, H]
and one [W, W] matrix, which costs a few matrix products forward and backward.
"""

from __future__ import annotations

from functools import lru_cache

import torch

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


@lru_cache(maxsize=32)
def _blur_matrix(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[n, n] matrix of "reflect-pad by WINDOW // 2, then 1-D Gaussian filter (valid)"."""
    pad = WINDOW // 2
    dist = torch.arange(WINDOW, dtype=torch.float64) - pad
    g = torch.exp(-0.5 * (dist / SIGMA) ** 2)
    g = g / g.sum()
    # reflect padding: padded index p in [0, n + 2 pad) reads source index src[p]
    p = torch.arange(n + 2 * pad) - pad
    src = torch.where(p < 0, -p, torch.where(p >= n, 2 * (n - 1) - p, p))
    m = torch.zeros(n, n, dtype=torch.float64)
    for k in range(WINDOW):  # output i uses padded i + k with weight g[k]
        m.index_put_((torch.arange(n), src[torch.arange(n) + k]), g[k].expand(n), accumulate=True)
    return m.to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of maps ``a`` and ``b``, both [B, H, W] with H, W ≥ 11 → [B].

    Differentiable with respect to both inputs. Matches torchmetrics (defaults above) to ~1e-6 in
    float32. 16-bit inputs are computed in float32 (the result is float32).
    """
    h, w = a.shape[-2:]
    if h < WINDOW or w < WINDOW:
        raise ValueError(f"SSIM needs maps of at least {WINDOW}×{WINDOW} pixels (its Gaussian window); "
                         f"got {h}×{w}. Use the l1 or l2 distance for smaller maps.")
    # E[x²] − E[x]² cancels badly in 16-bit floats: always compute in float32 or wider, autocast off
    dtype = a.dtype if a.dtype in (torch.float32, torch.float64) else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    mh = _blur_matrix(h, dtype, a.device)
    mw = _blur_matrix(w, dtype, a.device)
    with torch.autocast(device_type=a.device.type, enabled=False):
        if b.requires_grad:
            mu_a, mu_b, e_aa, e_bb, e_ab = mh @ torch.stack((a, b, a * a, b * b, a * b)) @ mw.T
        else:  # the usual loss case (b = prototype or class mean): b's blurs need no backward
            mu_a, e_aa, e_ab = mh @ torch.stack((a, a * a, a * b)) @ mw.T
            with torch.no_grad():
                mu_b, e_bb = mh @ torch.stack((b, b * b)) @ mw.T
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = (e_aa - mu_aa).clamp_min(0.0)
    var_b = (e_bb - mu_bb).clamp_min(0.0)
    cov = e_ab - mu_ab
    s = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)

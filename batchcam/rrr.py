"""Ross et al.'s (2017) "right for the right reasons" input-gradient penalty (chapter 9's oracle).

``ce+rrr-input`` adds ``λ · mean_b Σ_d (M_bd · ∂(Σ_c log p_bc)/∂x_bd)²`` to the cross-entropy: the
gradient of the summed log-probabilities with respect to the input, squared inside the known spurious
region ``M`` (the decoy patch: an annotation a user of the paper's losses does not have), summed per
image and averaged over the batch. It needs one forward with the input as a leaf and a differentiable
input gradient (``create_graph=True``, double backprop).

Per image, as Ross et al. define it. One ``torch.autograd.grad`` of ``Σ_b Σ_c log p_bc`` gives every
sample's own gradient only when nothing in the model mixes samples. A BatchNorm layer in train mode does:
every pixel of every image moves the batch statistics, and through them every image's log-probabilities,
so the batch gradient adds to each pixel a term that has nothing to do with that image (with SimpleCNN it
dominated: a ``ce`` model that reads a 6×6 texture had a penalty of 43 inside the patch and 33 in the
opposite, empty corner in train mode; 778 against 45 in eval mode). :func:`rrr_input_loss` therefore runs
the penalty's forward with :func:`batch_stats_as_constants`: each train-mode BatchNorm normalises with this
batch's statistics, detached, so the forward computes the same values and each image's gradient is its own.
The cross-entropy keeps its ordinary forward (and the gradient through the batch statistics).

The weight (``TrainConfig.lambda_rrr_input``, default ``losses.LAMBDA_RRR_INPUT`` = 10). Ross et al. used
λ = 1000 with raw 0–255 inputs; for [0, 1] inputs the same function has gradients 255 times larger, so their
λ is 1000 / 255² ≈ 0.015 here — for their MLP, whose per-pixel weights can simply ignore the corners. A CNN
shares its filters over positions, so every edge detector also answers to a binary texture in a corner; the
scale has to be measured on it. SimpleCNN on Fashion-MNIST with the 6×6 texture (``ce``, 20 000 images,
2 epochs): the penalty of the trained ``ce`` model is 765 inside the patch (44 in the opposite corner), 0.007
at initialisation, against a cross-entropy of 2.30. One calibration run each (seed 0): λ = 1 with the
batch-gradient form (before :func:`batch_stats_as_constants`) cut reliance only from 0.60 to 0.25 (clean
accuracy 0.72, ``ce`` 0.74); λ = 10 with the per-image form removed it (reliance 0.024, follows-patch 0.11)
but held the training cross-entropy at 1.85 and the clean accuracy at 0.54. So λ = 10 is the oracle that
removes the shortcut, at a cost in accuracy the book reports; λ = 1 (per-image form) is untested.
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._helpers import amp_autocast

__all__ = ["input_gradient_penalty", "batch_stats_as_constants", "rrr_input_loss"]


def input_gradient_penalty(logits: torch.Tensor, x: torch.Tensor, masks: torch.Tensor, *,
                           create_graph: bool = True) -> torch.Tensor:
    """``mean_b Σ_d (M_bd · ∂(Σ_c log p_bc)/∂x_bd)²`` from logits computed from ``x`` (chapter 9).

    Ross et al. write ``λ Σ_n Σ_d (A_nd ∂/∂x_nd Σ_k log ŷ_nk)²`` beside a cross-entropy summed over the
    batch; averaging both over the batch keeps their ratio. The gradient is each sample's own when
    nothing in the model mixes samples (see the module docstring and :func:`rrr_input_loss`).

    Args:
        logits: [B, C] computed from ``x`` (``x.requires_grad``). x: [B, ch, H, W]. masks: bool [B, H, W],
            True inside the spurious region. create_graph: keep the graph of the input gradient, so the
            penalty is differentiable with respect to the parameters (training).
    Returns:
        A scalar tensor (at least float32); 0 for an empty batch.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    dtype = torch.promote_types(logits.dtype, torch.float32)  # at least float32 (bf16 under autocast)
    logp = F.log_softmax(logits.to(dtype), dim=1)
    grad, = torch.autograd.grad(logp.sum(), x, create_graph=create_graph)
    inside = grad.to(dtype).pow(2).sum(1) * masks.to(grad.device, dtype)
    return inside.flatten(1).sum(1).mean()


def _frozen_batchnorm_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm with this batch's statistics as constants; running statistics untouched."""
    dims = [0] + list(range(2, x.dim()))
    with torch.no_grad():
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


@contextlib.contextmanager
def batch_stats_as_constants(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every BatchNorm of ``model`` in train mode normalises its input [B, K, ...] with the
    batch's mean and (biased) variance detached, and does not update its running statistics (chapter 9).
    The outputs are those of the ordinary train-mode forward; only the gradient through the statistics is
    gone, so a sample's outputs depend on its own input alone, to first order. Other modules are untouched."""
    patched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in patched:
        m.forward = types.MethodType(_frozen_batchnorm_forward, m)  # the instance attribute shadows the class's
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


def rrr_input_loss(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, *, amp: bool = False) -> torch.Tensor:
    """Ross et al.'s penalty of a training batch (chapter 9): a forward of ``x`` [B, ch, H, W] as a new leaf,
    under :func:`batch_stats_as_constants` (and autocast with ``amp``: True / "bf16" or "fp16"), then
    :func:`input_gradient_penalty` with ``masks`` bool [B, H, W]. A scalar, differentiable with respect to
    the parameters; the caller's ``x`` is not modified."""
    leaf = x.detach().requires_grad_(True)
    with batch_stats_as_constants(model), amp_autocast(leaf.device, amp):
        logits = model(leaf)
    return input_gradient_penalty(logits, leaf, masks)

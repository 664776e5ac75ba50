"""The CAM methods: weight functions ``(A, G) -> W`` in one small registry, and the map they give.

Explained in chapter 3 (batching the methods). Shapes: activations ``A`` and gradients ``G = ∂s/∂A``
[B, K, h, w] of one target layer, where ``s = Σ_b s_b`` sums one scalar per sample (the target). A
method returns weights ``W`` of shape [B, K] (one per channel) or [B, K, h, w] (one per position), and
the map is ``M = ReLU(Σ_k W_k ⊙ A_k)`` [B, h, w]. Every formula below is pytorch-grad-cam's (1.5.x),
epsilons included (``tests/test_cam_methods.py`` checks each against its class of the same name); where
that differs from the method's paper, the docstring says so. All are written in torch, act on the
whole batch at once and are differentiable (double backprop through ``G`` with ``create_graph=True``).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from ._helpers import unknown_choice

__all__ = ["register_method", "list_methods", "get_method", "weighted_map", "METHODS",
           "gradcam", "gradcam_plusplus", "xgradcam", "hirescam", "gradcam_elementwise", "layercam"]

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): ``W_bk = mean_ij G_bkij``, weights [B, K] (chapter 3).

    ``acts``, ``grads`` [B, K, h, w]. pytorch-grad-cam's ``GradCAM``; identical to the paper.
    """
    return grads.mean(dim=(2, 3))


def gradcam_plusplus(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., 2018), pytorch-grad-cam's ``GradCAMPlusPlus``: weights [B, K] (chapter 3).

    ``a_bkij = G² / (2 G² + (Σ_ij A_bk) G³ + 1e-6)``, set to 0 where ``G = 0``;
    ``W_bk = Σ_ij ReLU(G_bkij) a_bkij``. ``acts``, ``grads`` [B, K, h, w].

    Differences from the paper: the paper takes the gradients of ``exp(s)``, whose higher derivatives
    are powers of the first; ``a`` is the same either way, and ``ReLU(∂exp(s)/∂A) = exp(s) ReLU(G)``
    only scales each sample's map by ``exp(s_b)``, which any normalisation removes. The ``1e-6`` in the
    denominator replaces the paper's "a = 0 where the denominator is 0", and ``a`` is zeroed where the
    gradient (not, as pytorch-grad-cam's comment says, the activation) is zero.
    """
    g2 = grads.pow(2)
    g3 = g2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    aij = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    return (F.relu(grads) * aij).sum(dim=(2, 3))


def xgradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., 2020), pytorch-grad-cam's ``XGradCAM``: weights [B, K] (chapter 3).

    ``W_bk = Σ_ij G_bkij A_bkij / (Σ_ij A_bkij + 1e-7)``; ``acts``, ``grads`` [B, K, h, w]. The ``1e-7``
    is pytorch-grad-cam's (the paper divides by ``Σ_ij A`` alone); it guards a zero sum of non-negative
    (post-ReLU) activations only.
    """
    return (grads * acts / (acts.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3))


def hirescam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, 2020), pytorch-grad-cam's ``HiResCAM``: weights ``G`` [B, K, h, w] (chapter 3).

    ``M = ReLU(Σ_k G_k ⊙ A_k)``: Grad-CAM without the spatial mean of the gradient. ``acts``, ``grads``
    [B, K, h, w]. The final ReLU is pytorch-grad-cam's (and ours, for every method); the paper's map is the
    signed sum.
    """
    return grads


def gradcam_elementwise(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Element-wise Grad-CAM, pytorch-grad-cam's ``GradCAMElementWise`` (no paper): weights [B, K, h, w] (chapter 3).

    ``M = Σ_k ReLU(G_k ⊙ A_k)``: the ReLU acts on each product before the channel sum. Written as
    weights ``W = G · 1[G ⊙ A > 0]``, since ``ReLU(G A) = (G · 1[G A > 0]) A`` (and the gradients agree
    wherever ``G A ≠ 0``). ``acts``, ``grads`` [B, K, h, w].
    """
    return grads * (grads * acts > 0)


def layercam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., 2021), pytorch-grad-cam's ``LayerCAM``: weights ``ReLU(G)`` [B, K, h, w] (chapter 3).

    ``M = ReLU(Σ_k ReLU(G_k) ⊙ A_k)``; ``acts``, ``grads`` [B, K, h, w]. The paper's extra scaling of
    shallow layers' maps (``tanh``) when it fuses several layers is not part of it (nor of
    pytorch-grad-cam's); several layers are averaged as for every method (:func:`batchcam.batch_cam`).
    """
    return F.relu(grads)


#: name → weight function; add entries with :func:`register_method`.
METHODS: dict[str, WeightFn] = {
    "gradcam": gradcam,
    "hirescam": hirescam,
    "gradcam-elementwise": gradcam_elementwise,
    "gradcam++": gradcam_plusplus,
    "xgradcam": xgradcam,
    "layercam": layercam,
}


def register_method(name: str, fn: WeightFn, *, overwrite: bool = False) -> None:
    """Add a CAM method ``fn(acts [B, K, h, w], grads [B, K, h, w]) -> weights`` under ``name`` (chapter 3).

    The weights are [B, K] (one per channel) or [B, K, h, w] (one per position); the map is then
    ``ReLU(Σ_k W_k ⊙ A_k)``. Write ``fn`` with batched torch operations that treat each sample on its own,
    so that one call serves the whole batch and ``create_graph=True`` can differentiate through it.
    Raises ValueError when ``name`` exists and ``overwrite`` is False, TypeError when ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a method name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable (acts, grads) -> weights, got {type(fn).__name__}")
    if name in METHODS and not overwrite:
        raise ValueError(f"method {name!r} already exists; pass overwrite=True to replace it")
    METHODS[name] = fn


def list_methods() -> list[str]:
    """Names accepted as ``method=`` by :func:`batchcam.batch_cam` (chapter 3); maps are [B, H, W] for each."""
    return list(METHODS)


def get_method(method: Union[str, WeightFn]) -> WeightFn:
    """The weight function ``(acts [B, K, h, w], grads [B, K, h, w]) -> weights`` of a name, or ``method``
    itself when it is callable (chapter 3). Raises ValueError for an unknown name, listing the valid ones."""
    if callable(method):
        return method
    if method not in METHODS:
        raise unknown_choice("method", method, METHODS, "Add your own with batchcam.register_method(name, fn).")
    return METHODS[method]


def weighted_map(weights: torch.Tensor, acts: torch.Tensor, name: str = "method") -> torch.Tensor:
    """The map ``ReLU(Σ_k W_k ⊙ A_k)`` [B, h, w] of weights [B, K] or [B, K, h, w] and ``acts`` [B, K, h, w]
    (chapter 3). Per-channel weights use one batched matrix product (no [B, K, h, w] temporary)."""
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{name} returned a {type(weights).__name__}, not a tensor of weights")
    if tuple(weights.shape) == tuple(acts.shape[:2]):
        return F.relu(torch.einsum("bk,bkhw->bhw", weights, acts))
    if weights.shape == acts.shape:
        return F.relu((weights * acts).sum(dim=1))
    raise ValueError(f"{name} returned weights of shape {tuple(weights.shape)}; expected [B, K] = "
                     f"{list(acts.shape[:2])} or [B, K, h, w] = {list(acts.shape)}")


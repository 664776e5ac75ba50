"""Grad-CAM for a whole batch in one ``autograd.grad`` call, and the per-image hook reference.

Explained in chapter 2 (Grad-CAM, the hook version) and chapter 3 (Algorithm 1, the batch
version, the BatchNorm pitfall, ``create_graph``).

Notation: images ``x`` [B, C_in, H, W], activations ``A`` [B, K, h, w] of the target layer, logits
``z`` [B, C], targets ``t`` [B]. Grad-CAM: ``α_bk = mean_ij ∂z_b[t_b]/∂A_bkij``,
``M_b = ReLU(Σ_k α_bk A_bk)``, upsampled bilinearly to [H, W] and divided by its max (an all-zero map
stays zero). The target layer hands the rest of the model a copy of ``A``, so an in-place operation
after it (``out += identity``, ``ReLU(inplace=True)``) cannot change the captured activations.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._capture import (Capture, candidate_layers, check_autograd, check_input, check_logits, resolve_targets,
                       warn_if_not_finite)
from ._helpers import unknown_choice

__all__ = ["batch_gradcam", "batch_gradcam_with_logits", "gradcam_loop", "resolve_layer", "normalize_cam",
           "SampleMixingError"]

Targets = Union[None, int, Sequence[int], torch.Tensor]
NORMALIZE = ("max", "minmax", None)


class SampleMixingError(RuntimeError):
    """A BatchNorm after the target layer uses batch statistics, so per-sample gradients would mix (chapter 3).

    Batch statistics are used by a BatchNorm in train mode, and by one built with
    ``track_running_stats=False`` in either mode; ``model.eval()`` alone does not rule them out.
    """


def resolve_layer(model: nn.Module, layer: Union[str, nn.Module]) -> tuple[nn.Module, str]:
    """Return ``(module, dotted_name)`` for a module or a dotted name such as ``"layer4"`` or ``"stages.3"``.

    The target layer's output must be a feature map [B, K, h, w] (chapter 2 explains the choice).
    Raises ValueError listing candidate layer names when ``layer`` is not found.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return module, name
        raise ValueError("the given layer module is not a submodule of the model; pass one of "
                         f"{candidate_layers(model)} or the module object itself")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted name or an nn.Module, got {type(layer).__name__}")
    try:
        return model.get_submodule(layer), layer
    except AttributeError:
        raise unknown_choice("layer", layer, candidate_layers(model),
                             "Any dotted name from model.named_modules() whose output is 4-D works.") from None


def normalize_cam(cam: torch.Tensor, normalize: Optional[str] = "max") -> torch.Tensor:
    """Normalise each map of ``cam`` [B, H, W] to [0, 1]; all-zero (or constant) maps give zeros, never NaN.

    ``"max"`` divides by the per-sample max, ``"minmax"`` maps [min, max] to [0, 1], ``None`` returns ``cam``.
    Returns a tensor of the same shape [B, H, W]; differentiable, with a finite gradient for all-zero maps
    (chapter 2 defines the normalisation, chapter 3 differentiates through it).
    """
    if normalize not in NORMALIZE:
        raise unknown_choice("normalize", normalize, [str(n) for n in NORMALIZE])
    if normalize is None:
        return cam
    flat = cam.flatten(1)
    hi = flat.amax(1).view(-1, 1, 1)
    if normalize == "minmax":
        lo = flat.amin(1).view(-1, 1, 1)
        cam, hi = cam - lo, hi - lo
    # x / inf = 0: one full-size op, and no NaN in the backward (the gradient into inf is 0)
    return cam / torch.where(hi > 0, hi, torch.full_like(hi, float("inf")))


def _cam_from(acts: torch.Tensor, grads: torch.Tensor, size: tuple[int, int], normalize: Optional[str]) -> torch.Tensor:
    """Grad-CAM maps [B, H, W] from activations and gradients [B, K, h, w] (computed in float32 or wider)."""
    dtype = torch.promote_types(acts.dtype, torch.float32)
    acts, grads = acts.to(dtype), grads.to(dtype)
    alpha = grads.mean(dim=(2, 3))  # [B, K]
    # Σ_k α_bk A_bk as one batched matrix product: no [B, K, h, w] temporary (the profiler's mul + sum)
    cam = F.relu(torch.einsum("bk,bkhw->bhw", alpha, acts)).unsqueeze(1)  # [B, 1, h, w]
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return normalize_cam(cam[:, 0], normalize)


def _mixing_error(names: list[str], layer: str) -> SampleMixingError:
    return SampleMixingError(
        f"{names} run after the target layer {layer!r} and normalise with batch statistics (BatchNorm in train "
        "mode, or built with track_running_stats=False, whatever model.training says): each logit then depends "
        "on every sample's activations, so ∂(Σ_b z_b[t_b])/∂A is not the per-sample gradient and the batch "
        "Grad-CAM would be wrong. Use a target layer after the last such BatchNorm, put those layers in eval "
        "mode (with running statistics), or pass allow_batch_mixing=True if you accept the mixed gradient "
        "(chapter 3 shows the difference).")


def batch_gradcam_with_logits(
    model: nn.Module,
    x: torch.Tensor,
    layer: Union[str, nn.Module],
    targets: Targets = None,
    *,
    create_graph: bool = False,
    normalize: Optional[str] = "max",
    allow_batch_mixing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving both the Grad-CAM maps [B, H, W] and the logits [B, C] (chapter 3).

    This is what the training loop uses: the logits feed the cross-entropy and the maps feed the
    prototype losses, from the same forward. With ``create_graph=False`` neither output carries a
    graph through the maps and the part of the network below ``layer`` runs without autograd.
    See :func:`batch_gradcam` for the arguments, the errors and the warning.
    """
    check_autograd("batch_gradcam")
    x = check_input(x)
    if normalize not in NORMALIZE:
        raise unknown_choice("normalize", normalize, [str(n) for n in NORMALIZE])
    module, name = resolve_layer(model, layer)
    outer = torch.enable_grad() if create_graph else torch.no_grad()
    with outer, Capture(model, module, name, grad_from_here=not create_graph,
                        check_mixing=not allow_batch_mixing) as cap:
        out = model(x)
    logits = check_logits(out, x.shape[0])
    acts = cap.activations()
    if cap.mixing_after:
        raise _mixing_error(cap.mixing_after, name)
    t = resolve_targets(targets, logits)
    with torch.enable_grad():  # also under a caller's torch.no_grad()
        score = logits.gather(1, t[:, None]).sum()
        # Algorithm 1: z_b[t_b] depends on A_b only, so one gradient of the sum stacks every per-sample gradient.
        (grads,) = torch.autograd.grad(score, acts, create_graph=create_graph, retain_graph=create_graph)
        if not create_graph:
            acts, logits = acts.detach(), logits.detach()
        cam = _cam_from(acts, grads, tuple(x.shape[-2:]), normalize)
    if not create_graph:  # reads the maps: never on the training path, where it would sync every step
        warn_if_not_finite(cam)
    return cam, logits


def batch_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: Union[str, nn.Module],
    targets: Targets = None,
    *,
    create_graph: bool = False,
    normalize: Optional[str] = "max",
    allow_batch_mixing: bool = False,
) -> torch.Tensor:
    """Grad-CAM for a whole batch with one forward and one ``torch.autograd.grad`` (Algorithm 1, chapter 3).

    Args:
        model: classifier mapping ``x`` to one logits tensor [B, C] (wrap a model that returns a tuple or
            dict). Its mode (train/eval) is left as it is.
        x: images [B, C_in, H, W].
        layer: the target layer, a module or a dotted name (``"layer4"``, ``"stages.3"``); its output
            must be [B, K, h, w] (chapter 2). See :func:`batchcam.default_target_layer`. In-place
            operations after it are fine: the model continues from a copy of its output.
        targets: class per sample: an integer tensor or sequence [B], or one integer (Python int,
            NumPy integer, 0-d tensor) for all; ``None`` = argmax class. Values are range-checked only
            when they are on the CPU; on CUDA an out-of-range target surfaces as torch's device-side
            assertion (checking would synchronise host and device at every training step).
        create_graph: keep the graph so the maps are differentiable w.r.t. the parameters (double
            backprop, chapter 3) — needed to put the map inside a loss. This path reads no tensor values
            (no host–device synchronisation).
        normalize: ``"max"`` (divide by the per-sample max), ``"minmax"`` or ``None``.
        allow_batch_mixing: skip the check that raises :class:`SampleMixingError` when a BatchNorm that
            uses batch statistics (train mode, or ``track_running_stats=False``) runs after ``layer``
            (then the batch gradient is not the per-sample gradient, chapter 3).

    Returns:
        Maps [B, H, W] (float32, or float64 for float64 inputs), in [0, 1] when normalised. No hooks
        or other state are left on the model.

    Raises:
        TypeError: the model returns a tuple or dict, or targets are not integers (bool and float included).
        ValueError: targets of another shape than [B] or one integer, or out of range (checked on the CPU).
        RuntimeError: called under ``torch.inference_mode()`` (use ``torch.no_grad()``, which works).
        SampleMixingError: see ``allow_batch_mixing``.

    Warns:
        RuntimeWarning: with ``create_graph=False``, when some maps hold NaN or inf (a non-finite input, or a
        train-mode BatchNorm before the layer that spreads one sample's NaN to all).
    """
    cam, _ = batch_gradcam_with_logits(model, x, layer, targets, create_graph=create_graph,
                                       normalize=normalize, allow_batch_mixing=allow_batch_mixing)
    return cam


def gradcam_loop(
    model: nn.Module,
    x: torch.Tensor,
    layer: Union[str, nn.Module],
    targets: Targets = None,
    *,
    normalize: Optional[str] = "max",
) -> torch.Tensor:
    """Per-image, hook-based Grad-CAM: the readable reference and the speed baseline (chapter 2).

    One forward of the batch ``x`` [B, C_in, H, W] with a forward hook keeping ``A`` [B, K, h, w]; then, for
    each sample ``b``, a separate backward pass of ``z_b[t_b]`` whose gradient a tensor hook captures (B
    backward passes). Frozen models and in-place operations after the layer work as in
    :func:`batch_gradcam`. Parameter ``.grad`` fields are not touched. Same arguments, errors, warning and
    output [B, H, W] as :func:`batch_gradcam` (in eval mode both agree to float precision; in train mode
    with a BatchNorm after the layer only this one gives the per-sample gradient).
    """
    check_autograd("gradcam_loop")
    x = check_input(x)
    if normalize not in NORMALIZE:
        raise unknown_choice("normalize", normalize, [str(n) for n in NORMALIZE])
    module, name = resolve_layer(model, layer)
    with torch.enable_grad(), Capture(model, module, name, grad_from_here=False, check_mixing=False,
                                      keep_grad=True) as cap:
        logits = check_logits(model(x), x.shape[0])
        acts = cap.activations()
        t = resolve_targets(targets, logits)
        grads = []
        for b in range(x.shape[0]):
            torch.autograd.backward(logits[b, t[b]], inputs=[acts], retain_graph=b < x.shape[0] - 1)
            grads.append(cap.pop_grad()[b].clone())  # a view would keep the whole [B, K, h, w] gradient alive
        acts.grad = None
    cam = _cam_from(acts.detach(), torch.stack(grads), tuple(x.shape[-2:]), normalize)
    warn_if_not_finite(cam)
    return cam

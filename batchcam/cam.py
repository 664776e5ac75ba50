"""Class activation maps for a whole batch in one ``autograd.grad`` call, and the per-image hook reference.

Explained in chapter 2 (Grad-CAM, the hook version) and chapter 3 (Algorithm 1, the batch
version, the BatchNorm pitfall, ``create_graph``, the other methods).

Notation: images ``x`` [B, C_in, H, W], activations ``A`` [B, K, h, w] of the target layer, logits
``z`` [B, C], targets ``t`` [B]. Grad-CAM: ``α_bk = mean_ij ∂z_b[t_b]/∂A_bkij``,
``M_b = ReLU(Σ_k α_bk A_bk)``, upsampled bilinearly to [H, W] and divided by its max (an all-zero map
stays zero). Other methods change the weights α (:mod:`batchcam.methods`). The target layer hands the
rest of the model a copy of ``A``, so an in-place operation after it (``out += identity``,
``ReLU(inplace=True)``) cannot change the captured activations.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._capture import (
    Capture,
    candidate_layers,
    check_autograd,
    check_input,
    check_logits,
    check_size,
    mixing_message,
    resolve_targets,
    target_score,
    uncompiled,
    warn_if_not_finite,
)
from ._helpers import unknown_choice
from .methods import WeightFn, get_method, weighted_map

__all__ = ["batch_cam", "batch_gradcam", "batch_gradcam_with_logits", "gradcam_loop", "resolve_layer",
           "normalize_cam", "SampleMixingError"]

Targets = Union[None, int, Sequence[int], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
Layer = Union[str, nn.Module]
NORMALIZE = ("max", "minmax", None)


class SampleMixingError(RuntimeError):
    """A BatchNorm after the target layer uses batch statistics, so per-sample gradients would mix (chapter 3).

    Batch statistics are used by a BatchNorm in train mode, and by one built with
    ``track_running_stats=False`` in either mode; ``model.eval()`` alone does not rule them out.
    """


def resolve_layer(model: nn.Module, layer: Layer) -> tuple[nn.Module, str]:
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


def _layers(model: nn.Module, layer: Union[Layer, Sequence[Layer]], compiled: bool) -> list[tuple[nn.Module, str]]:
    """``[(module, name)]`` of one layer or a list; names may keep a compiled model's ``_orig_mod.`` prefix."""
    items = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not items:
        raise ValueError("layer is an empty list; pass a layer or a list of layers")
    strip = "_orig_mod."
    out = [resolve_layer(model, it[len(strip):] if compiled and isinstance(it, str) and it.startswith(strip) else it)
           for it in items]
    if len({id(m) for m, _ in out}) < len(out):
        raise ValueError(f"a layer is listed twice in {[n for _, n in out]}")
    return out


def _cam(weight_fn: WeightFn, name: str, acts: list[torch.Tensor], grads: Sequence[torch.Tensor],
         reshape: Optional[Callable], size: tuple[int, int], normalize: Optional[str]) -> torch.Tensor:
    """Maps [B, H, W] from each layer's ``A`` and ``∂s/∂A``, computed in float32 or wider with autocast
    switched off: under bf16/fp16 autocast the weights, the weighted sum, the upsampling and the
    normalisation still run in float32 (a max-normalised fp16 map would lose its small values)."""
    device = acts[0].device.type
    available = getattr(torch.amp, "is_autocast_available", lambda d: d in ("cpu", "cuda"))(device)
    with torch.autocast(device, enabled=False) if available else contextlib.nullcontext():  # not on "meta"
        return _cam_fp32(weight_fn, name, acts, grads, reshape, size, normalize)


def _cam_fp32(weight_fn: WeightFn, name: str, acts: list[torch.Tensor], grads: Sequence[torch.Tensor],
              reshape: Optional[Callable], size: tuple[int, int], normalize: Optional[str]) -> torch.Tensor:
    maps = []
    for a, g in zip(acts, grads):
        if reshape is not None:
            a, g = reshape(a), reshape(g)
        dtype = torch.promote_types(a.dtype, torch.float32)
        a, g = a.to(dtype), g.to(dtype)
        maps.append(weighted_map(weight_fn(a, g), a, name))  # ReLU(Σ_k W_k ⊙ A_k) [B, h, w]

    def up(m: torch.Tensor) -> torch.Tensor:
        return F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]

    def scaled(m: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's scale_cam_image, its 1e-7 included
        lo = m.flatten(1).amin(1).view(-1, 1, 1)
        return (m - lo) / (m.flatten(1).amax(1).view(-1, 1, 1) - lo + 1e-7)

    # Several layers: as pytorch-grad-cam's aggregate_multi_layers, each map min-max normalised at its own
    # resolution, upsampled, averaged.
    cam = up(maps[0]) if len(maps) == 1 else torch.stack([up(scaled(m)) for m in maps]).mean(0)
    return normalize_cam(cam, normalize)


def batch_cam(
    model: nn.Module,
    images: torch.Tensor,
    layer: Union[Layer, Sequence[Layer]],
    targets: Targets = None,
    *,
    method: Union[str, WeightFn] = "gradcam",
    create_graph: bool = False,
    normalize: Optional[str] = "max",
    reshape: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    size: Union[None, int, Sequence[int]] = None,
    return_logits: bool = False,
    allow_batch_mixing: bool = False,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Class activation maps [B, H, W] for a whole batch: one forward, one ``torch.autograd.grad`` (chapter 3).

    Algorithm 1 of chapter 3: the per-sample target scores are summed, and since ``s_b`` depends on sample
    ``b``'s activations only, one gradient of the sum stacks every per-sample gradient, for all layers at once.

    Args:
        model: classifier mapping ``images`` to one logits tensor [B, C] (wrap a model that returns a tuple or
            dict). Its mode (train/eval) is left as it is. A ``torch.compile``'d model runs as its original
            module (``model._orig_mod``, same parameters): a compiled graph would not see the hooks; layer
            names with or without the ``_orig_mod.`` prefix both work. A compiled submodule raises TypeError.
        images: [B, C_in, H, W].
        layer: the target layer, a module or a dotted name (``"layer4"``, ``"stages.3"``), whose output is
            [B, K, h, w] (or tokens [B, N, D] with ``reshape``); see :func:`batchcam.default_target_layer`.
            In-place operations after it are fine: the model continues from a copy of its output. A list of
            layers: each layer's map ``M_l`` becomes ``(M_l − min) / (max − min + 1e-7)`` at its own resolution,
            is upsampled, and the maps are averaged (pytorch-grad-cam's ``aggregate_multi_layers``, its
            ``1e-7`` included: a layer whose map spans ≲ 1e-7 counts less); ``normalize`` then applies to the
            average. A one-element list is that layer (no per-layer scaling).
        targets: class per sample: an integer tensor or sequence [B], or one integer for all; ``None`` = argmax
            class. Or a callable ``targets(logits [B, C]) -> scores [B]`` (float; a class score, a margin such
            as ``z_c − max_{j≠c} z_j``), where ``scores[b]`` may depend on row ``b`` only. Integer targets are
            range-checked only on the CPU; on CUDA an out-of-range one surfaces as torch's device-side
            assertion (checking would synchronise host and device at every training step).
        method: a name from :func:`batchcam.list_methods` (``"gradcam"``, ``"hirescam"``,
            ``"gradcam-elementwise"``, ``"gradcam++"``, ``"xgradcam"``, ``"layercam"``; the formulas of
            pytorch-grad-cam, see :mod:`batchcam.methods`) or a weight function ``(A, ∂s/∂A) -> W``, with
            ``W`` [B, K] or [B, K, h, w]; the map is ``ReLU(Σ_k W_k ⊙ A_k)``.
        create_graph: keep the graph so the maps are differentiable w.r.t. the parameters and the images
            (double backprop, chapter 3), to put them inside a loss. This path reads no tensor values (no
            host–device synchronisation). Without it, the part of the network below ``layer`` runs without
            autograd and nothing returned carries a graph.
        normalize: ``"max"`` (divide by the per-sample max), ``"minmax"`` or ``None`` (raw ReLU'd maps).
        reshape: maps the layer's output [B, N, D] to [B, K, h, w] (e.g. :func:`batchcam.vit_reshape`); applied
            to the activations and to their gradients, as pytorch-grad-cam's ``reshape_transform``.
        size: the maps' (H, W), or one int for a square (default: the images' H, W).
        return_logits: also return the logits [B, C] of the same forward (the training loop feeds them to
            the cross-entropy).
        allow_batch_mixing: skip the check that raises :class:`SampleMixingError` when a BatchNorm that uses
            batch statistics (train mode, or ``track_running_stats=False``) runs after ``layer`` (then the batch
            gradient is not the per-sample gradient, chapter 3).

    Returns:
        Maps [B, H, W], in [0, 1] when normalised, or ``(maps, logits)``. The maps are float32 (float64 for
        float64 inputs), also under ``torch.autocast``: the map is formed and normalised with autocast
        switched off, from the activations and gradients cast to float32. The logits are the model's
        (bfloat16 or float16 under autocast). No hooks or other state are
        left on the model.

    Raises:
        TypeError: the model returns a tuple or dict; targets are not integers (bool and float included).
        ValueError: targets of another shape than [B] or one integer, or out of range (checked on the CPU);
            a callable target returning anything but a float tensor [B]; an unknown method or layer.
        RuntimeError: called under ``torch.inference_mode()`` (use ``torch.no_grad()``, which works).
        SampleMixingError: see ``allow_batch_mixing``.

    Warns:
        RuntimeWarning: with ``create_graph=False``, when some maps hold NaN or inf (a non-finite input, or a
        train-mode BatchNorm before the layer that spreads one sample's NaN to all).
    """
    check_autograd("batch_cam")
    x = check_input(images)
    if normalize not in NORMALIZE:
        raise unknown_choice("normalize", normalize, [str(n) for n in NORMALIZE])
    weight_fn = get_method(method)
    name = method if isinstance(method, str) else getattr(method, "__name__", "the method")
    inner = uncompiled(model)
    layers = _layers(inner, layer, compiled=inner is not model)
    model, out_size = inner, check_size(size, x)
    outer = torch.enable_grad() if create_graph else torch.no_grad()
    with outer, Capture(model, layers, grad_from_here=not create_graph, check_mixing=not allow_batch_mixing,
                        reshape=reshape) as cap:
        out = model(x)
    logits = check_logits(out, x.shape[0])
    acts = cap.activations()
    if cap.mixing_after:
        first = next(n for m, n in layers if m is cap.first)
        raise SampleMixingError(mixing_message(cap.mixing_after, first))
    with torch.enable_grad():  # also under a caller's torch.no_grad()
        score = target_score(targets, logits)
        # Algorithm 1: s_b depends on A_b only, so one gradient of the sum stacks every per-sample gradient.
        grads = torch.autograd.grad(score, acts, create_graph=create_graph, retain_graph=create_graph,
                                    allow_unused=True)
        for g, (_, n) in zip(grads, layers):
            if g is None:
                raise RuntimeError(f"the target scores do not depend on the output of layer {n!r}")
        if not create_graph:
            acts, logits = [a.detach() for a in acts], logits.detach()
        cam = _cam(weight_fn, name, acts, grads, reshape, out_size, normalize)
    if not create_graph:  # reads the maps: never on the training path, where it would sync every step
        warn_if_not_finite(cam)
    return (cam, logits) if return_logits else cam


def batch_gradcam_with_logits(model: nn.Module, x: torch.Tensor, layer: Union[Layer, Sequence[Layer]],
                              targets: Targets = None, *, create_graph: bool = False,
                              normalize: Optional[str] = "max", allow_batch_mixing: bool = False,
                              method: Union[str, WeightFn] = "gradcam") -> tuple[torch.Tensor, torch.Tensor]:
    """Maps [B, H, W] and logits [B, C] from one forward: ``batch_cam(..., return_logits=True)`` (chapter 3).

    This is what the training loop uses: the logits feed the cross-entropy and the maps feed the
    prototype losses. Arguments, errors and warning as :func:`batch_cam`.
    """
    return batch_cam(model, x, layer, targets, method=method, create_graph=create_graph, normalize=normalize,
                     return_logits=True, allow_batch_mixing=allow_batch_mixing)


def batch_gradcam(model: nn.Module, x: torch.Tensor, layer: Union[Layer, Sequence[Layer]], targets: Targets = None,
                  *, create_graph: bool = False, normalize: Optional[str] = "max", allow_batch_mixing: bool = False,
                  method: Union[str, WeightFn] = "gradcam") -> torch.Tensor:
    """Grad-CAM maps [B, H, W] of images ``x`` [B, C_in, H, W], one forward and one ``torch.autograd.grad``
    (Algorithm 1, chapter 3): :func:`batch_cam` with its defaults. Arguments, errors and warning as there.
    """
    return batch_cam(model, x, layer, targets, method=method, create_graph=create_graph, normalize=normalize,
                     allow_batch_mixing=allow_batch_mixing)


def gradcam_loop(
    model: nn.Module,
    x: torch.Tensor,
    layer: Layer,
    targets: Targets = None,
    *,
    normalize: Optional[str] = "max",
) -> torch.Tensor:
    """Per-image, hook-based Grad-CAM: the readable reference and the speed baseline (chapter 2).

    One forward of the batch ``x`` [B, C_in, H, W] with a forward hook keeping ``A`` [B, K, h, w]; then, for
    each sample ``b``, a separate backward pass of ``z_b[t_b]`` whose gradient a tensor hook captures (B
    backward passes). Frozen models and in-place operations after the layer work as in
    :func:`batch_gradcam`. Parameter ``.grad`` fields are not touched. Same arguments (integer targets
    only), errors, warning and output [B, H, W] as :func:`batch_gradcam` (in eval mode both agree to float
    precision; in train mode with a BatchNorm after the layer only this one gives the per-sample gradient).
    """
    check_autograd("gradcam_loop")
    x = check_input(x)
    if normalize not in NORMALIZE:
        raise unknown_choice("normalize", normalize, [str(n) for n in NORMALIZE])
    model = uncompiled(model)
    module, name = resolve_layer(model, layer)
    with torch.enable_grad(), Capture(model, [(module, name)], grad_from_here=False, check_mixing=False,
                                      keep_grad=True) as cap:
        logits = check_logits(model(x), x.shape[0])
        (acts,) = cap.activations()
        t = resolve_targets(targets, logits)
        grads = []
        for b in range(x.shape[0]):
            torch.autograd.backward(logits[b, t[b]], inputs=[acts], retain_graph=b < x.shape[0] - 1)
            grads.append(cap.pop_grad()[b].clone())  # a view would keep the whole [B, K, h, w] gradient alive
        acts.grad = None
    cam = _cam(get_method("gradcam"), "gradcam", [acts.detach()], [torch.stack(grads)], None, tuple(x.shape[-2:]),
               normalize)
    warn_if_not_finite(cam)
    return cam

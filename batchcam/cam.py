"""Grad-CAM for a whole batch in one ``autograd.grad`` call, and the per-image hook reference.

Explained in chapter 2 (Grad-CAM, the hook version) and chapter 3 (Algorithm 1, the batch
version, the BatchNorm pitfall, ``create_graph``).

Notation: activations ``A`` [B, K, h, w] of the target layer, logits ``z`` [B, C], targets
``t`` [B]. Grad-CAM: ``α_bk = mean_ij ∂z_b[t_b]/∂A_bkij``, ``M_b = ReLU(Σ_k α_bk A_bk)``,
upsampled bilinearly to the input size and divided by its max (an all-zero map stays zero).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._helpers import unknown_choice

__all__ = ["batch_gradcam", "batch_gradcam_with_logits", "gradcam_loop", "resolve_layer", "normalize_cam",
           "SampleMixingError"]

Targets = Union[None, int, Sequence[int], torch.Tensor]
NORMALIZE = ("max", "minmax", None)


class SampleMixingError(RuntimeError):
    """A layer after the target layer uses batch statistics, so per-sample gradients would mix."""


def _candidate_layers(model: nn.Module, max_depth: int = 2) -> list[str]:
    """Dotted names (depth ≤ ``max_depth``) of submodules that contain a convolution."""
    names = []
    for name, module in model.named_modules():
        if name and name.count(".") < max_depth and any(isinstance(m, nn.Conv2d) for m in module.modules()):
            names.append(name)
    return names


def resolve_layer(model: nn.Module, layer: Union[str, nn.Module]) -> tuple[nn.Module, str]:
    """Return ``(module, dotted_name)`` for a module or a dotted name such as ``"layer4"`` or ``"stages.3"``.

    Raises ValueError listing candidate layer names when ``layer`` is not found.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return module, name
        raise ValueError("the given layer module is not a submodule of the model; pass one of "
                         f"{_candidate_layers(model)} or the module object itself")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted name or an nn.Module, got {type(layer).__name__}")
    try:
        return model.get_submodule(layer), layer
    except AttributeError:
        raise unknown_choice("layer", layer, _candidate_layers(model),
                             "Any dotted name from model.named_modules() whose output is 4-D works.") from None


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0) or a channel one with x.unsqueeze(1)")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0)")


def _resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """Targets as int64 [B] on the logits' device; ``None`` → argmax class."""
    b, c = logits.shape
    if targets is None:
        return logits.detach().argmax(1)
    if isinstance(targets, int):
        targets = [targets] * b
    t = torch.as_tensor(targets, device=logits.device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() != b:
        raise ValueError(f"targets has {t.numel()} entries but the batch has {b} samples; pass one class per sample")
    if t.numel() and (t.min() < 0 or t.max() >= c):
        raise ValueError(f"targets must lie in [0, {c - 1}] (the model has {c} classes), got min {int(t.min())}, "
                         f"max {int(t.max())}")
    return t


def normalize_cam(cam: torch.Tensor, normalize: Optional[str] = "max") -> torch.Tensor:
    """Normalise each map of ``cam`` [B, H, W] to [0, 1]; all-zero (or constant) maps give zeros, never NaN.

    ``"max"`` divides by the per-sample max, ``"minmax"`` maps [min, max] to [0, 1], ``None`` returns ``cam``.
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


def _mixing_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that use batch statistics in the current mode (BatchNorm in train mode)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


class _Capture:
    """Owns the forward hooks of one Grad-CAM call and releases them on exit, even after an exception.

    Keeps the target layer's output (``self.acts``). With ``grad_from_here`` the forward runs without
    autograd up to the target layer, whose output is detached and made a leaf: only the head is
    differentiated. When ``check_mixing``, records any batch-statistics layer that runs after it.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, name: str, *, grad_from_here: bool, check_mixing: bool):
        self.model, self.layer, self.name = model, layer, name
        self.grad_from_here, self.check_mixing = grad_from_here, check_mixing
        self.acts: Optional[torch.Tensor] = None
        self.calls = 0
        self.mixing_after: list[str] = []
        self._handles: list = []

    def _on_layer(self, module: nn.Module, inputs, output):
        self.calls += 1
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"layer {self.name!r} outputs {shape}, but Grad-CAM needs a 4-D feature map "
                             f"[B, K, h, w]; choose a convolutional layer such as one of "
                             f"{_candidate_layers(self.model)}")
        if self.grad_from_here:
            torch.set_grad_enabled(True)
            output = output.detach().requires_grad_(True)
        elif not output.requires_grad:  # frozen backbone: the map still needs ∂z/∂A
            output = output.requires_grad_(True) if output.is_leaf else output.detach().requires_grad_(True)
        self.acts = output
        self._version = output._version
        return output

    def __enter__(self) -> "_Capture":
        self._handles.append(self.layer.register_forward_hook(self._on_layer))
        if self.check_mixing:
            # A BatchNorm inside the target layer finishes before it (self.calls is still 0): not recorded.
            for n, m in _mixing_modules(self.model):
                self._handles.append(m.register_forward_hook(
                    lambda mod, i, o, n=n: self.mixing_after.append(n) if self.calls else None))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def activations(self) -> torch.Tensor:
        if self.acts is None:
            raise RuntimeError(f"layer {self.name!r} did not run during the forward pass; "
                               f"pick a layer on the path from input to logits: {_candidate_layers(self.model)}")
        if self.calls > 1:
            raise RuntimeError(f"layer {self.name!r} ran {self.calls} times in one forward pass; "
                               "Grad-CAM needs a layer that runs once")
        if self.acts._version != self._version:
            raise RuntimeError(f"the output of layer {self.name!r} was modified in place by a later operation "
                               "(e.g. ReLU(inplace=True) or +=), so its values are no longer the activations; "
                               "choose the enclosing block or make that operation out-of-place")
        if self.mixing_after:
            raise SampleMixingError(
                f"the model is in train mode and {self.mixing_after} run after the target layer {self.name!r} "
                "using batch statistics (BatchNorm): each logit then depends on every sample's activations, so "
                "∂(Σ_b z_b[t_b])/∂A is not the per-sample gradient and the batch Grad-CAM would be wrong. "
                "Use a target layer after the last BatchNorm, call model.eval(), or pass "
                "allow_batch_mixing=True if you accept the mixed gradient (chapter 3 shows the difference).")
        return self.acts


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
    """One forward pass giving both the Grad-CAM maps [B, H, W] and the logits [B, C].

    This is what the training loop uses: the logits feed the cross-entropy and the maps feed the
    prototype losses, from the same forward. With ``create_graph=False`` neither output carries a
    graph through the maps and the part of the network below ``layer`` runs without autograd.
    See :func:`batch_gradcam` for the arguments.
    """
    _check_input(x)
    if normalize not in NORMALIZE:
        raise unknown_choice("normalize", normalize, [str(n) for n in NORMALIZE])
    module, name = resolve_layer(model, layer)
    check_mixing = model.training and not allow_batch_mixing
    outer = torch.enable_grad() if create_graph else torch.no_grad()
    with outer, _Capture(model, module, name, grad_from_here=not create_graph, check_mixing=check_mixing) as cap:
        logits = model(x)
    acts = cap.activations()
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits [B, C], got shape {tuple(logits.shape)}")
    t = _resolve_targets(targets, logits)
    with torch.enable_grad():  # also under a caller's torch.no_grad()
        score = logits.gather(1, t[:, None]).sum()
        # Algorithm 1: z_b[t_b] depends on A_b only, so one gradient of the sum stacks every per-sample gradient.
        (grads,) = torch.autograd.grad(score, acts, create_graph=create_graph, retain_graph=create_graph)
        if not create_graph:
            acts, logits = acts.detach(), logits.detach()
        cam = _cam_from(acts, grads, tuple(x.shape[-2:]), normalize)
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
        model: classifier mapping ``x`` to logits [B, C]. Its mode (train/eval) is left as it is.
        x: images [B, C_in, H, W].
        layer: the target layer, a module or a dotted name (``"layer4"``, ``"stages.3"``); its output
            must be [B, K, h, w]. See :func:`batchcam.default_target_layer`.
        targets: class per sample ([B] ints, a list, or one int for all); ``None`` = argmax class.
        create_graph: keep the graph so the maps are differentiable w.r.t. the parameters (double
            backprop) — needed to put the map inside a loss.
        normalize: ``"max"`` (divide by the per-sample max), ``"minmax"`` or ``None``.
        allow_batch_mixing: skip the check that raises :class:`SampleMixingError` when a BatchNorm in
            train mode runs after ``layer`` (then the batch gradient is not the per-sample gradient).

    Returns:
        Maps [B, H, W] (float32, or float64 for float64 inputs), in [0, 1] when normalised. No hooks
        or other state are left on the model.
    """
    cam, _ = batch_gradcam_with_logits(model, x, layer, targets, create_graph=create_graph,
                                       normalize=normalize, allow_batch_mixing=allow_batch_mixing)
    return cam


@contextlib.contextmanager
def _keep_activations(module: nn.Module) -> Iterator[dict]:
    """Forward hook that stores the module output and a tensor hook that stores its gradient."""
    store: dict = {}

    def forward_hook(mod, inputs, output):
        store["acts"] = output
        if output.requires_grad:
            output.register_hook(lambda g: store.__setitem__("grad", g))

    handle = module.register_forward_hook(forward_hook)
    try:
        yield store
    finally:
        handle.remove()
        store.clear()  # the stored output → its graph → the tensor hook → this dict: break the cycle


def gradcam_loop(
    model: nn.Module,
    x: torch.Tensor,
    layer: Union[str, nn.Module],
    targets: Targets = None,
    *,
    normalize: Optional[str] = "max",
) -> torch.Tensor:
    """Per-image, hook-based Grad-CAM: the readable reference and the speed baseline (chapter 2).

    One forward of the batch with a forward hook keeping ``A``; then, for each sample ``b``, a
    separate backward pass of ``z_b[t_b]`` whose gradient a tensor hook captures (B backward passes).
    Parameter ``.grad`` fields are not touched. Same arguments and output [B, H, W] as
    :func:`batch_gradcam` (in eval mode both agree to float precision).
    """
    _check_input(x)
    if normalize not in NORMALIZE:
        raise unknown_choice("normalize", normalize, [str(n) for n in NORMALIZE])
    module, name = resolve_layer(model, layer)
    with torch.enable_grad(), _keep_activations(module) as store:
        logits = model(x)
        acts = store.get("acts")
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
            raise ValueError(f"layer {name!r} must output a 4-D feature map [B, K, h, w]; "
                             f"candidates: {_candidate_layers(model)}")
        if not acts.requires_grad:
            raise RuntimeError("the target layer's output does not require grad (frozen parameters); "
                               "use batch_gradcam, which handles frozen backbones")
        t = _resolve_targets(targets, logits)
        grads = []
        for b in range(x.shape[0]):
            torch.autograd.backward(logits[b, t[b]], inputs=[acts], retain_graph=b < x.shape[0] - 1)
            grads.append(store.pop("grad")[b].clone())  # a view would keep the whole [B, K, h, w] gradient alive
        acts.grad = None
    return _cam_from(acts.detach(), torch.stack(grads), tuple(x.shape[-2:]), normalize)

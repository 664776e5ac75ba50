"""Private helpers of :mod:`batchcam.cam`: argument checks and the forward hooks that capture ``A``.

Shapes follow :mod:`batchcam.cam`: images ``x`` [B, C_in, H, W], activations ``A`` [B, K, h, w],
logits ``z`` [B, C], targets ``t`` [B]. Chapter 2 explains the hooks, chapter 3 the BatchNorm check.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import nn


def candidate_layers(model: nn.Module, max_depth: int = 2) -> list[str]:
    """Dotted names (depth ≤ ``max_depth``) of submodules that contain a convolution."""
    names = []
    for name, module in model.named_modules():
        if name and name.count(".") < max_depth and any(isinstance(m, nn.Conv2d) for m in module.modules()):
            names.append(name)
    return names


def check_autograd(fn: str) -> None:
    """Grad-CAM differentiates the logits, which ``torch.inference_mode()`` forbids (``no_grad`` does not)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{fn} needs autograd (Grad-CAM differentiates the logits with respect to the activations), "
            "but it was called under torch.inference_mode(), which disables autograd for good. Call it "
            "under torch.no_grad() instead: it re-enables gradients only where it needs them.")


def check_input(x: Any) -> torch.Tensor:
    """``x`` [B, C, H, W]; an inference tensor (made under ``torch.inference_mode()``) is cloned into a normal one."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [B, C, H, W], got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0) or a channel one with x.unsqueeze(1)")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0)")
    return x.clone() if x.is_inference() else x


def _describe(out: Any, depth: int = 0) -> str:
    if isinstance(out, torch.Tensor):
        return f"Tensor of shape {list(out.shape)}"
    if isinstance(out, Mapping):
        return f"{type(out).__name__} with keys {list(out.keys())[:8]}"
    if isinstance(out, (tuple, list)) and depth == 0:
        return f"{type(out).__name__} of {len(out)} ({', '.join(_describe(o, 1) for o in out[:4])})"
    return type(out).__name__


def check_logits(out: Any, batch: int) -> torch.Tensor:
    """The model's output must be one logits tensor [B, C]; a tuple or dict gets a TypeError naming the fix."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model returned a {_describe(out)}, but Grad-CAM needs the logits as one tensor [B, C]. "
            "Wrap the model so that its forward returns the logits tensor, e.g. an nn.Module whose forward is "
            "`return self.model(x)[0]` (or `self.model(x)['logits']`), and name the layer through the wrapper "
            "('model.layer4') or pass the layer module itself.")
    if out.dim() != 2 or out.shape[0] != batch:
        raise ValueError(f"the model must return logits [B, C] with B = {batch}, got shape {tuple(out.shape)}")
    return out


def resolve_targets(targets: Any, logits: torch.Tensor) -> torch.Tensor:
    """Targets as int64 [B] on the logits' device; ``None`` → argmax class; one integer → that class for all.

    The range check reads the values, so it runs only for targets on the CPU (Python ints, lists, NumPy, CPU
    tensors): on CUDA it would synchronise host and device at every training step, and an out-of-range
    target surfaces there as torch's device-side assertion instead.
    """
    b, c = logits.shape
    if targets is None:
        return logits.detach().argmax(1)
    if isinstance(targets, bool):
        raise TypeError("targets must be integer class indices, got a bool")
    if isinstance(targets, torch.Tensor):
        t = targets
    elif isinstance(targets, numbers.Integral):  # int, np.int64, ...
        t = torch.tensor(int(targets))
    else:
        try:
            t = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"targets must be an integer, a sequence of B integers or an integer tensor [B], "
                            f"got {type(targets).__name__} ({err})") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != b):
        raise ValueError(f"targets has shape {tuple(t.shape)} but the batch has {b} samples; pass one class per "
                         "sample (shape [B]) or one integer for all")
    if t.device.type == "cpu":
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= c:
            raise ValueError(f"targets must lie in [0, {c - 1}] (the model has {c} classes), got min {lo}, max {hi}")
    # From the CPU, cudaMemcpyAsync stages pageable memory at once: safe, and no wait for the device.
    # Never for device-to-host, where the values could be read before they arrive.
    return t.to(device=logits.device, dtype=torch.long, non_blocking=t.device.type == "cpu").expand(b)


def check_size(size: Any, x: torch.Tensor) -> tuple[int, int]:
    """The maps' (H, W): ``size`` as a pair or one int for a square; ``None`` → the images' [H, W]."""
    if size is None:
        return tuple(x.shape[-2:])
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size must be (H, W) with two positive integers, got {size!r}")
    return size


def batch_statistics_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BatchNorm layers that normalise with the batch's own statistics in the current state: those in train
    mode, and those without running statistics (``track_running_stats=False``) in either mode."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)]


class Capture:
    """Owns the forward hooks of one CAM call and releases them on exit, even after an exception.

    ``layers`` is a list of ``(module, dotted_name)``. Keeps each target layer's output ``A`` [B, K, h, w]
    (``self.acts``, one per layer; tokens [B, N, D] when ``reshape`` maps them to [B, K, h, w]) and hands
    the rest of the model a copy, so that an in-place operation after the layer (``out += identity``,
    ``ReLU(inplace=True)``) changes the copy and ``A`` keeps its values. With ``grad_from_here`` the forward
    runs without autograd up to the first target layer that runs, whose output is detached and made a leaf:
    only what follows is differentiated; a later layer's output stays in the graph, so that its gradient and
    the earlier layer's (through it) are both total derivatives. An output without grad (a frozen backbone)
    becomes a leaf too. With ``check_mixing`` it records every batch-statistics BatchNorm that runs after the
    first target layer; with ``keep_grad`` (one layer) a tensor hook stores ∂/∂A.
    """

    def __init__(self, model: nn.Module, layers: list[tuple[nn.Module, str]], *, grad_from_here: bool,
                 check_mixing: bool, keep_grad: bool = False, reshape: Optional[Callable] = None):
        self.model, self.layers, self.reshape = model, layers, reshape
        self.grad_from_here, self.check_mixing, self.keep_grad = grad_from_here, check_mixing, keep_grad
        self.acts: list[Optional[torch.Tensor]] = [None] * len(layers)
        self.calls = [0] * len(layers)
        self.first: Optional[nn.Module] = None  # the first target layer that ran
        self.mixing_after: list[str] = []
        self.grads: list[torch.Tensor] = []  # filled by the tensor hook; holds no reference back to acts
        self._versions = [0] * len(layers)
        self._handles: list = []

    def _on_layer(self, i: int, module: nn.Module, inputs, output):
        self.calls[i] += 1
        name = self.layers[i][1]
        shaped = self.reshape(output) if self.reshape is not None and isinstance(output, torch.Tensor) else output
        if not isinstance(shaped, torch.Tensor) or shaped.dim() != 4:
            shape = tuple(shaped.shape) if isinstance(shaped, torch.Tensor) else type(shaped).__name__
            hint = ("pass reshape= to map tokens [B, N, D] to [B, D, h, w] (batchcam.vit_reshape for timm ViTs), "
                    if isinstance(shaped, torch.Tensor) and shaped.dim() == 3 and self.reshape is None else "")
            raise ValueError(f"layer {name!r} outputs {shape}{' after reshape' if self.reshape else ''}, but a "
                             f"CAM needs a 4-D feature map [B, K, h, w]; {hint}choose a convolutional layer such as "
                             f"one of {candidate_layers(self.model)}")
        leaf = self.first is None and self.grad_from_here
        if leaf:
            torch.set_grad_enabled(True)
        if self.first is None:
            self.first = module
        acts = output.detach().requires_grad_(True) if leaf or not output.requires_grad else output
        if self.keep_grad:
            acts.register_hook(self.grads.append)
        self.acts[i], self._versions[i] = acts, acts._version
        return acts.clone()

    def _on_mixing(self, name: str, module: nn.Module) -> None:
        # A BatchNorm inside the first target layer finishes before it; the layer itself is fine.
        if self.first is not None and module is not self.first:
            self.mixing_after.append(name)

    def __enter__(self) -> "Capture":
        for i, (module, _) in enumerate(self.layers):
            self._handles.append(module.register_forward_hook(
                lambda mod, inp, out, i=i: self._on_layer(i, mod, inp, out)))
        if self.check_mixing:
            for n, m in batch_statistics_modules(self.model):
                self._handles.append(m.register_forward_hook(lambda mod, i, o, n=n: self._on_mixing(n, mod)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def activations(self) -> list[torch.Tensor]:
        """``A`` per layer [B, K, h, w] (or tokens), after checking that each layer ran once and kept its values."""
        for i, (_, name) in enumerate(self.layers):
            if self.acts[i] is None:
                raise RuntimeError(f"layer {name!r} did not run during the forward pass; "
                                   f"pick a layer on the path from input to logits: {candidate_layers(self.model)}")
            if self.calls[i] > 1:
                raise RuntimeError(f"layer {name!r} ran {self.calls[i]} times in one forward pass; "
                                   "a CAM needs a layer that runs once")
            if self.acts[i]._version != self._versions[i]:
                raise RuntimeError(f"the output of layer {name!r} was modified in place by a later operation "
                                   "that kept a reference to it, so its values are no longer the activations; "
                                   "choose the enclosing block or make that operation out-of-place")
        return list(self.acts)

    def pop_grad(self) -> torch.Tensor:
        """The gradient ∂/∂A [B, K, h, w] that the tensor hook stored during the last backward pass."""
        if not self.grads:
            raise RuntimeError(f"no gradient reached the output of layer {self.layers[0][1]!r}; "
                               "the logits do not depend on it")
        return self.grads.pop()


def mixing_message(names: list[str], layer: str) -> str:
    """The message of :class:`batchcam.cam.SampleMixingError`: ``names`` of the BatchNorms after ``layer``."""
    return (f"{names} run after the target layer {layer!r} and normalise with batch statistics (BatchNorm in train "
            "mode, or built with track_running_stats=False, whatever model.training says): each logit then depends "
            "on every sample's activations, so ∂(Σ_b z_b[t_b])/∂A is not the per-sample gradient and the batch "
            "Grad-CAM would be wrong. Use a target layer after the last such BatchNorm, put those layers in eval "
            "mode (with running statistics), or pass allow_batch_mixing=True if you accept the mixed gradient "
            "(chapter 3 shows the difference).")


def target_score(targets: Any, logits: torch.Tensor) -> torch.Tensor:
    """``Σ_b s_b``: the summed per-sample target scores, from class indices (see :func:`resolve_targets`) or
    a callable ``targets(logits [B, C]) -> [B]`` (a class score, a margin; each ``s_b`` from row ``b`` only)."""
    if callable(targets) and not isinstance(targets, torch.Tensor):
        s = targets(logits)
        if not isinstance(s, torch.Tensor) or not s.is_floating_point() or tuple(s.shape) != (logits.shape[0],):
            what = f"a {s.dtype} tensor of shape {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"a callable target must return one floating-point score per sample, shape "
                             f"[{logits.shape[0]}], computed from the logits; it returned {what}")
        return s.sum()
    t = resolve_targets(targets, logits)
    return logits.gather(1, t[:, None]).sum()


def _is_compiled(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def uncompiled(model: nn.Module) -> nn.Module:
    """The module a CAM runs: a ``torch.compile``'d model's original module (same parameters), else ``model``.

    A compiled graph does not see hooks added after it was compiled (torch.compile does not guard on them,
    so a cached graph would skip the capture), and it hides the layer's output from autograd, so maps that
    need ``create_graph=True`` could not be formed from it. A compiled *submodule* raises a TypeError.
    """
    if _is_compiled(model):
        model = model._orig_mod
    for name, m in model.named_modules():
        if name and _is_compiled(m):
            raise TypeError(
                f"submodule {name!r} is compiled with torch.compile: a compiled graph does not run hooks added "
                "after it was compiled and hides the target layer's output from autograd. Pass a model whose "
                f"submodules are not compiled (replace {name!r} by its ._orig_mod, which shares the parameters), "
                "or compile the whole model: batch_cam then runs its original module.")
    return model


def warn_if_not_finite(cam: torch.Tensor) -> None:
    """RuntimeWarning when some maps [B, H, W] hold NaN or inf (reads the values: inference calls only)."""
    bad = int((~torch.isfinite(cam.flatten(1))).any(1).sum())
    if bad:
        warnings.warn(
            f"{bad} of {cam.shape[0]} Grad-CAM maps contain NaN or inf. Likely causes: a non-finite input "
            "(check torch.isfinite(x)), or a BatchNorm in train mode before the target layer, whose batch "
            "statistics spread one sample's NaN to every sample's map (call model.eval() for inference).",
            RuntimeWarning, stacklevel=3)

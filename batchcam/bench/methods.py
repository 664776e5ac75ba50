"""The five Grad-CAM methods as timed calls, and the check that their maps agree (chapter 3)."""

from __future__ import annotations

import contextlib
import gc
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, ContextManager, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._helpers import bf16_autocast
from ..cam import batch_gradcam, gradcam_loop, normalize_cam, resolve_layer
from .config import REFERENCE


@dataclass
class Case:
    """One model, input size and batch, ready to be timed."""

    model: nn.Module
    layer_name: str
    x: torch.Tensor
    targets: torch.Tensor
    amp: bool  # bf16 autocast (CUDA only)

    @property
    def layer(self) -> nn.Module:
        return resolve_layer(self.model, self.layer_name)[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])

    def autocast(self) -> ContextManager:
        return bf16_autocast(self.x.device, self.amp)


@dataclass(frozen=True)
class Method:
    """A timed call, and how to turn its output into maps comparable with the reference."""

    run: Callable[[], Any]
    maps: Optional[Callable[[Any], dict[str, torch.Tensor]]] = None  # label -> [B, H, W], min-max normalised
    note: str = ""  # e.g. a precision the method had to keep


class MethodUnavailable(RuntimeError):
    """An optional library is missing: the method is skipped and the reason recorded."""


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation in float64 (all-constant maps give zeros)."""
    return normalize_cam(maps.detach().double().cpu(), "minmax")


def _forward_method(case: Case) -> Method:
    def run() -> torch.Tensor:
        with torch.no_grad(), case.autocast():
            return case.model(case.x)

    return Method(run)


@contextlib.contextmanager
def _layer_outputs(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every output of ``layer`` while the block runs (a forward hook, removed on exit)."""
    outputs: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, inp, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _free_graphs(tensors: Iterable[torch.Tensor]) -> None:
    """Detach each tensor in place, which frees an autograd graph that only a reference cycle keeps alive."""
    for t in tensors:
        with contextlib.suppress(RuntimeError):  # a view cannot be detached in place
            t.detach_()


LOOP_LEAK = ("gradcam_loop's target-layer output (and so its whole forward graph) is still alive after the "
             "call returned: a reference cycle through a tensor hook (the bug fixed in cam._keep_activations by "
             "clearing its store) is back, and every call leaks its graph.")


def _package_method(fn: Callable[..., torch.Tensor], label: str) -> Callable[[Case], Method]:
    """A batchcam function as a method, timed exactly as a user calls it."""
    def build(case: Case) -> Method:
        def run() -> torch.Tensor:
            with case.autocast():
                return fn(case.model, case.x, case.layer_name, case.targets)

        return Method(run, lambda out: {label: _minmax(out)})

    return build


def _pytorch_grad_cam_method(case: Case) -> Method:
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise MethodUnavailable(f"pytorch-grad-cam is not installed ({err}); pip install grad-cam") from None
    layer = case.layer
    targets = [ClassifierOutputTarget(int(t)) for t in case.targets]

    def run() -> tuple:
        with GradCAM(model=case.model, target_layers=[layer]) as cam:
            out = cam(input_tensor=case.x, targets=targets)
            store = cam.activations_and_grads
            return out, store.activations[0], store.gradients[0]

    def maps(result: tuple) -> dict[str, torch.Tensor]:
        out, acts, grads = result
        with GradCAM(model=case.model, target_layers=[layer]) as cam:  # its own weighting and channel sum
            raw = cam.get_cam_image(case.x, layer, targets, acts.float().numpy(), grads.float().numpy())
        raw = F.relu(torch.from_numpy(raw))[:, None]  # its ReLU (np.maximum(cam, 0)), at feature resolution
        upsampled = F.interpolate(raw, size=case.size, mode="bilinear", align_corners=False)[:, 0]
        return {"pytorch_grad_cam": _minmax(upsampled), "pytorch_grad_cam_output": _minmax(torch.from_numpy(out))}

    # pytorch-grad-cam converts activations to NumPy, which has no bfloat16: it always runs in float32.
    return Method(run, maps, note="float32 (NumPy has no bfloat16)" if case.amp else "")


def _captum_method(case: Case) -> Method:
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as err:
        raise MethodUnavailable(f"captum is not installed ({err}); pip install captum") from None
    explainer = LayerGradCam(case.model, case.layer)

    def run() -> torch.Tensor:
        with case.autocast():
            attr = explainer.attribute(case.x, target=case.targets, relu_attributions=True)
            return LayerAttribution.interpolate(attr, case.size, interpolate_mode="bilinear")

    return Method(run, lambda out: {"captum": _minmax(out[:, 0])})


METHOD_BUILDERS: dict[str, Callable[[Case], Method]] = {
    "forward": _forward_method,
    "batch_gradcam": _package_method(batch_gradcam, "batch_gradcam"),
    "gradcam_loop": _package_method(gradcam_loop, "gradcam_loop"),
    "pytorch_grad_cam": _pytorch_grad_cam_method,
    "captum": _captum_method,
}

COMPARED = {
    "reference": "batch_gradcam (normalize='max'), min-max normalised per sample, at input resolution",
    "gradcam_loop": "its output [B, H, W], min-max normalised",
    "pytorch_grad_cam": ("its raw CAM before resizing: ReLU(GradCAM.get_cam_image(...)) from the activations and "
                         "gradients its hooks stored in the timed call, upsampled with torch bilinear "
                         "(align_corners=False), min-max normalised"),
    "pytorch_grad_cam_output": ("its public output (per-image min-max with 1e-7 eps, cv2.resize bilinear, "
                                "min-max again), min-max normalised"),
    "captum": "LayerGradCam(relu_attributions=True) upsampled by LayerAttribution.interpolate(bilinear), min-max",
    "precision": "float32 calls (a separate float32 call per method when the timed calls used bf16 autocast); "
                 "differences computed in float64",
}


def build_methods(case: Case, names: Iterable[str] = METHOD_BUILDERS) -> tuple[dict[str, Method], dict[str, str]]:
    """The available methods for ``case`` and, for the others, why they were skipped."""
    methods, skipped = {}, {}
    for name in names:
        try:
            methods[name] = METHOD_BUILDERS[name](case)
        except MethodUnavailable as err:
            skipped[name] = str(err)
    return methods, skipped


def compare_maps(maps: dict[str, torch.Tensor], reference: str = REFERENCE, atol: float = 1e-5) -> dict:
    """Max abs difference of every map set in ``maps`` to ``maps[reference]``, and pass flags.

    Args:
        maps: label -> maps [B, H, W], already normalised the same way (min-max per sample).
        reference: the label the others are compared with.
        atol: a set passes when its max abs difference is ≤ ``atol``.
    Returns:
        ``{"reference", "atol", "methods": {label: {"max_abs_diff", "pass"}}, "pass"}``; a set of the
        wrong shape fails with ``max_abs_diff`` None.
    """
    ref = maps[reference].double()
    per = {}
    for label, m in maps.items():
        if label == reference:
            continue
        diff = float((m.double() - ref).abs().max()) if m.shape == ref.shape else None
        per[label] = {"max_abs_diff": diff, "pass": diff is not None and diff <= atol}
    return {"reference": reference, "atol": atol, "methods": per, "pass": all(v["pass"] for v in per.values())}


def comparable_maps(methods: dict[str, Method], outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The comparable maps of every method that has some (what is compared: ``COMPARED``)."""
    maps: dict[str, torch.Tensor] = {}
    for name, method in methods.items():
        if method.maps is not None and name in outputs:
            maps.update(method.maps(outputs[name]))
    return maps


def _check_outputs(case: Case, methods: dict[str, Method], outputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs to compare: the timed ones, or one float32 call per method when timed under autocast."""
    if not case.amp:
        return outputs
    fp32, _ = build_methods(replace(case, amp=False), outputs)
    return {name: m.run() for name, m in fp32.items() if m.maps is not None}


def floor_check(case: Case) -> dict:
    """Whether ``batch_gradcam`` (create_graph=False) runs the network up to the target layer without
    autograd, so that only the head is differentiated (checked on the first two samples)."""
    seen: list[bool] = []
    handle = case.layer.register_forward_pre_hook(lambda mod, inp: seen.append(torch.is_grad_enabled()))
    try:
        batch_gradcam(case.model, case.x[:2], case.layer_name, case.targets[:2])
    finally:
        handle.remove()
    return {"grad_enabled_up_to_target_layer": any(seen), "holds": bool(seen) and not any(seen)}


def loop_leak_check(case: Case) -> dict:
    """Whether ``gradcam_loop`` lets its target layer's output (and so its forward graph) be freed on
    return (checked on the first two samples; see ``LOOP_LEAK``)."""
    with _layer_outputs(case.layer) as outs:
        gradcam_loop(case.model, case.x[:2], case.layer_name, case.targets[:2])
    refs = [weakref.ref(t) for t in outs]
    del outs
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    _free_graphs(alive)
    return {"frees_graph_on_return": not alive, "problem": LOOP_LEAK if alive else None}

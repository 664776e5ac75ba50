"""The timed Grad-CAM methods and the check that their maps agree (chapter 3, "speed").

Every method runs on the same :class:`Case`: a model in eval mode, its target layer, images
``x`` [B, 1, H, W] in [0, 1] and one target class per image [B]. ``forward`` is the floor
(``model(x)`` under ``no_grad``); the others return Grad-CAM maps [B, H, W]. pytorch-grad-cam
and Captum are optional: they are imported inside their builders, and a missing one is skipped
with the reason recorded (:class:`MethodUnavailable`).
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, ContextManager, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._helpers import amp_autocast
from ..cam import batch_gradcam, gradcam_loop, normalize_cam, resolve_layer
from .config import REFERENCE

#: batchcam's CAM method → pytorch-grad-cam's class of the same method (the equality tests and
#: ``scripts/bench_methods.py`` compare each pair).
PGC_CLASSES = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise",
               "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


@dataclass(frozen=True)
class Case:
    """One model, target layer and batch, ready to be timed.

    ``x``: images [B, 1, H, W]; ``targets``: int64 [B]; ``amp``: bf16 autocast (CUDA only).
    """

    model: nn.Module
    layer: str
    x: torch.Tensor
    targets: torch.Tensor
    amp: bool = False

    @property
    def layer_module(self) -> nn.Module:
        return resolve_layer(self.model, self.layer)[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])

    def autocast(self) -> ContextManager:
        return amp_autocast(self.x.device, self.amp)


@dataclass(frozen=True)
class Method:
    """A timed call, and how its output becomes maps comparable with the reference.

    ``maps(output)`` returns ``{label: maps [B, H, W]}``, min-max normalised per sample, float64
    on the CPU (a method may give more than one set, e.g. pytorch-grad-cam's raw and public maps).
    """

    run: Callable[[], Any]
    maps: Optional[Callable[[Any], dict[str, torch.Tensor]]] = None
    note: str = ""


class MethodUnavailable(RuntimeError):
    """An optional library is missing: the method is skipped and this message recorded."""


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Maps [B, H, W] → float64 CPU maps, min-max normalised per sample (a constant map gives zeros)."""
    return normalize_cam(maps.detach().double().cpu(), "minmax")


def _forward(case: Case) -> Method:
    def run() -> torch.Tensor:
        with torch.no_grad(), case.autocast():
            return case.model(case.x)

    return Method(run)


def _package(fn: Callable[..., torch.Tensor], label: str) -> Callable[[Case], Method]:
    """A batchcam function as a method, called exactly as a user calls it."""
    def build(case: Case) -> Method:
        def run() -> torch.Tensor:
            with case.autocast():
                return fn(case.model, case.x, case.layer, case.targets)

        return Method(run, lambda out: {label: minmax(out)})

    return build


def _pytorch_grad_cam(case: Case) -> Method:
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise MethodUnavailable(f"pytorch-grad-cam is not installed ({err}); pip install grad-cam") from None
    layer = case.layer_module
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
        raw = F.relu(torch.from_numpy(raw))[:, None]  # its ReLU, at the feature map's resolution
        up = F.interpolate(raw, size=case.size, mode="bilinear", align_corners=False)[:, 0]
        return {"pytorch_grad_cam": minmax(up), "pytorch_grad_cam_output": minmax(torch.from_numpy(out))}

    # It converts activations to NumPy, which has no bfloat16: it always runs in float32.
    return Method(run, maps, note="float32 (NumPy has no bfloat16)" if case.amp else "")


def _captum(case: Case) -> Method:
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as err:
        raise MethodUnavailable(f"captum is not installed ({err}); pip install captum") from None
    explainer = LayerGradCam(case.model, case.layer_module)

    def run() -> torch.Tensor:
        with case.autocast():
            attr = explainer.attribute(case.x, target=case.targets, relu_attributions=True)
            return LayerAttribution.interpolate(attr, case.size, interpolate_mode="bilinear")

    return Method(run, lambda out: {"captum": minmax(out[:, 0])})


#: name → builder ``(case) -> Method`` (raising :class:`MethodUnavailable`); names as in ``config.METHODS``.
BUILDERS: dict[str, Callable[[Case], Method]] = {
    "forward": _forward,
    "batch_gradcam": _package(batch_gradcam, "batch_gradcam"),
    "gradcam_loop": _package(gradcam_loop, "gradcam_loop"),
    "pytorch_grad_cam": _pytorch_grad_cam,
    "captum": _captum,
}

#: What the map check compares (stored in the record).
COMPARED = {
    "reference": "batch_gradcam (normalize='max'), min-max normalised per sample, at input resolution",
    "gradcam_loop": "its output [B, H, W], min-max normalised",
    "pytorch_grad_cam": "ReLU(GradCAM.get_cam_image(...)) from the activations and gradients its hooks stored, "
                        "upsampled bilinearly (align_corners=False), min-max normalised",
    "pytorch_grad_cam_output": "its public output (its own normalisation and cv2.resize), min-max normalised",
    "captum": "LayerGradCam(relu_attributions=True) + LayerAttribution.interpolate(bilinear), min-max normalised",
    "precision": "float32 calls (under bf16 autocast the check makes a separate float32 call); differences in "
                 "float64",
}


def build_methods(case: Case, names: Iterable[str]) -> tuple[dict[str, Method], dict[str, str]]:
    """``({name: Method}, {name: why it was skipped})`` for ``names`` on ``case``."""
    methods, skipped = {}, {}
    for name in names:
        try:
            methods[name] = BUILDERS[name](case)
        except MethodUnavailable as err:
            skipped[name] = str(err)
    return methods, skipped


def compare_maps(maps: dict[str, torch.Tensor], reference: str = REFERENCE, atol: float = 1e-5) -> dict:
    """Max abs difference of every set of maps [B, H, W] to ``maps[reference]``, and pass flags (chapter 3).

    Args:
        maps: label -> maps [B, H, W], already normalised the same way (min-max per sample).
        reference: the label the others are compared with.
        atol: a set passes when its max abs difference is ≤ ``atol``.
    Returns:
        ``{"reference", "atol", "methods": {label: {"max_abs_diff", "pass"}}, "pass"}``; a set of the
        wrong shape fails with ``max_abs_diff`` None; ``pass`` is False when nothing was compared.
    """
    ref = maps[reference].double()
    per = {}
    for label, m in maps.items():
        if label != reference:
            diff = float((m.double() - ref).abs().max()) if m.shape == ref.shape else None
            per[label] = {"max_abs_diff": diff, "pass": diff is not None and diff <= atol}
    return {"reference": reference, "atol": atol, "methods": per,
            "pass": bool(per) and all(v["pass"] for v in per.values())}


def check_maps(case: Case, methods: dict[str, Method], outputs: dict[str, Any], atol: float) -> Optional[dict]:
    """:func:`compare_maps` on the outputs of the timed calls (of separate float32 calls when the timed
    calls ran under bf16 autocast); None when the reference has no output (it failed)."""
    if case.amp:
        fp32, _ = build_methods(replace(case, amp=False), [n for n in methods if n in outputs])
        outputs = {n: m.run() for n, m in fp32.items() if m.maps is not None}
    maps: dict[str, torch.Tensor] = {}
    for name, method in methods.items():
        if method.maps is not None and name in outputs:
            maps.update(method.maps(outputs[name]))
    return compare_maps(maps, REFERENCE, atol) if REFERENCE in maps else None


def loop_frees_graph(case: Case) -> bool:
    """Whether ``gradcam_loop`` lets its target layer's output (and so its forward graph) be freed on
    return, on the first two images; False means every call leaks a graph and its memory figure is void."""
    outs: list[torch.Tensor] = []
    handle = case.layer_module.register_forward_hook(lambda mod, inp, out: outs.append(out))
    try:
        gradcam_loop(case.model, case.x[:2], case.layer, case.targets[:2])
    finally:
        handle.remove()
    refs = [weakref.ref(t) for t in outs]
    outs.clear()
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    for t in alive:  # free the leaked graph so that the rest of the run is not affected
        with contextlib.suppress(RuntimeError):
            t.detach_()
    return not alive

"""Model registry: ``create_model(name)`` for the three architectures of the paper.

Explained in chapter 2 (SimpleCNN) and chapter 7 (ResNet-18, ConvNeXt-V2-Tiny).
Every model is built with random weights (no download) and remembers the dotted name of its
default Grad-CAM layer, the last convolutional stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ._helpers import unknown_choice

__all__ = ["SimpleCNN", "create_model", "list_models", "default_target_layer", "ModelSpec", "MODEL_SPECS"]


class SimpleCNN(nn.Module):
    """A small CNN for 28×28 greyscale images (our stand-in for the paper's "CNN"; chapter 2).

    ``features`` (the Grad-CAM layer) is four 3×3 conv + BatchNorm + ReLU blocks with one max-pool: a 14×14 grid
    for 28-px inputs, receptive field 16 px (with three blocks, 12 px, the pooled features saw only parts of a
    digit and test accuracy stayed near 98 %). ``head`` is global average pooling and one linear layer (CAM's
    setting). As with any linear head, ``∂z_c/∂A_kij = W_ck / (h·w)`` for every input, so α is a constant per
    class and Grad-CAM is ``ReLU(CAM_c) / (h·w)``; the map depends on the input through the features ``A``. What
    the head changes: CAM decomposes the logit, ``z_c = b_c + mean_ij CAM_c``, so the map of a class the model
    predicts has positive mass. (A flatten + linear head averages position-specific weights into α, which can
    cancel: it left 37 % of the maps all zero.) Nothing after ``features`` mixes samples. Its BatchNorm
    statistics are recomputed after each epoch (``batchcam.train.recalibrate_batchnorm``), which closes a
    train/eval accuracy gap of several points.

    Shapes: ``x`` [B, in_chans, S, S] → logits [B, num_classes]; ``features(x)`` [B, 2·width, S/2, S/2].
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_chans, width), nn.MaxPool2d(2), *block(width, 2 * width), *block(2 * width, 2 * width),
            *block(2 * width, 2 * width),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _resnet18(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18 with a 3×3 stride-1 stem and no max-pool (our choice for 28-px inputs:
    the ImageNet stem would shrink a 28-px digit to a 1×1 ``layer4`` map)."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _convnextv2_tiny(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """timm ConvNeXt-V2-Tiny, random weights (``pretrained=False``); inputs must be ≥ 32 px."""
    import timm

    return timm.create_model("convnextv2_tiny", pretrained=False, num_classes=num_classes, in_chans=in_chans)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture (chapter 2): ``build(num_classes, in_chans, image_size)``
    gives a model mapping [B, in_chans, S, S] → [B, num_classes] whose ``target_layer`` outputs [B, K, h, w]."""

    build: Callable[[int, int, int], nn.Module]  # (num_classes, in_chans, image_size) -> model, random weights
    target_layer: str  # dotted name of the last convolutional stage (the default Grad-CAM layer)
    min_size: int  # smallest input side the architecture accepts
    image_size: int  # image side used in the paper grid


MODEL_SPECS: dict[str, ModelSpec] = {
    "simplecnn": ModelSpec(lambda n, c, s: SimpleCNN(n, c), "features", 4, 28),
    "resnet18": ModelSpec(_resnet18, "layer4", 8, 28),
    "convnextv2_tiny": ModelSpec(_convnextv2_tiny, "stages.3", 32, 112),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (chapter 2 introduces them)."""
    return list(MODEL_SPECS)


def _spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise unknown_choice("model", name, MODEL_SPECS)
    return MODEL_SPECS[name]


def create_model(name: str, num_classes: int = 10, in_chans: int = 1, image_size: int | None = None) -> nn.Module:
    """Build a registered model with random weights (chapter 2; chapter 7 trains all three).

    Args:
        name: one of :func:`list_models` (``"simplecnn"``, ``"resnet18"``, ``"convnextv2_tiny"``).
        num_classes: size of the logits.
        in_chans: input channels (1 for MNIST / Fashion-MNIST).
        image_size: input side the model will see (default: the registry's, 28 or 112); it must
            be ≥ the architecture's minimum (ConvNeXt-V2: 32).

    Returns:
        An ``nn.Module`` mapping [B, in_chans, H, W] → [B, num_classes], with attributes
        ``batchcam_name`` and ``batchcam_target_layer`` set.
    """
    spec = _spec(name)
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be ≥ 1, got {num_classes} and {in_chans}")
    image_size = spec.image_size if image_size is None else image_size
    if image_size < spec.min_size:
        raise ValueError(f"model {name!r} needs image_size ≥ {spec.min_size}, got {image_size}")
    model = spec.build(num_classes, in_chans, image_size)
    model.batchcam_name = name
    model.batchcam_target_layer = spec.target_layer
    return model


def default_target_layer(model_or_name: nn.Module | str) -> str:
    """Dotted name of the last convolutional stage: ``"features"``, ``"layer4"`` or ``"stages.3"`` (chapter 2).

    That layer's output is the feature map [B, K, h, w] that Grad-CAM weights. For a model not built
    by :func:`create_model`, the last top-level child that contains a ``Conv2d`` is returned.
    """
    if isinstance(model_or_name, str):
        return _spec(model_or_name).target_layer
    name = getattr(model_or_name, "batchcam_target_layer", None)
    if name is not None:
        return name
    last = None
    for child_name, child in model_or_name.named_children():
        if isinstance(child, nn.Conv2d) or any(isinstance(m, nn.Conv2d) for m in child.modules()):
            last = child_name
    if last is None:
        raise ValueError("model has no Conv2d layer; pass the Grad-CAM layer explicitly")
    return last

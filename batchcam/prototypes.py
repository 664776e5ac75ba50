"""Class prototypes: the mean training image of each class (chapters 1 and 4)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["class_prototypes"]


def class_prototypes(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                     size: Optional[int] = None, normalize: Optional[str] = "max",
                     chunk: int = 8192) -> torch.Tensor:
    """Mean image per class, ``P_c`` [C, H, W] in [0, 1] (chapter 4).

    Args:
        images: [N, 1, H, W] (or [N, H, W]), uint8 in 0–255 or float in [0, 1].
        labels: integer [N] in [0, num_classes); every class needs at least one image.
        num_classes: C.
        size: if given, prototypes are resized bilinearly to ``size × size`` (equal to averaging
            resized images, since bilinear resizing is linear).
        normalize: ``"max"`` divides each prototype by its max so that its peak is 1, like the
            max-normalised Grad-CAM maps it is compared with; ``None`` keeps the plain mean.
    """
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3:
        raise ValueError(f"images must be [N, 1, H, W] or [N, H, W], got {tuple(images.shape)}")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.numel() != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images need labels of shape [{images.shape[0]}], "
                         f"got {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got min {int(labels.min())}, "
                         f"max {int(labels.max())}")
    if normalize not in ("max", None):
        raise ValueError(f"normalize must be 'max' or None, got {normalize!r}")
    if images.dtype == torch.uint8:
        scale = 255.0
    elif images.is_floating_point():
        scale = 1.0
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError("float images must lie in [0, 1] (got values outside); pass uint8 "
                             "0–255 images or divide by 255")
    else:
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    sums = torch.zeros((num_classes,) + tuple(images.shape[1:]), dtype=torch.float64,
                       device=images.device)
    for start in range(0, images.shape[0], chunk):
        sums.index_add_(0, labels[start:start + chunk].to(images.device),
                        images[start:start + chunk].to(torch.float64) / scale)
    counts = torch.bincount(labels, minlength=num_classes).to(sums.device)
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no images")
    protos = (sums / counts.view(-1, 1, 1)).float()
    if size is not None and tuple(protos.shape[-2:]) != (size, size):
        protos = F.interpolate(protos[:, None], size=(size, size), mode="bilinear",
                               align_corners=False)[:, 0]
    if normalize == "max":
        protos = protos / protos.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return protos

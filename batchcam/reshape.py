"""Token activations → feature maps, for CAMs of vision transformers (chapter 3).

A transformer block outputs tokens [B, N, D]: ``P`` prefix tokens (class token, register tokens) and
then ``h·w`` patch tokens in row-major order. A CAM needs a feature map [B, K, h, w], so
``reshape`` drops the prefix and lays the patch tokens out on their grid, the embedding dimension
``D`` becoming the channels ``K``. :func:`batchcam.batch_cam` applies the same ``reshape`` to the
activations and to their gradients (a reshape is linear, so the gradient of the map is the map of
the gradient), as pytorch-grad-cam's ``reshape_transform`` does.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["tokens_to_grid", "vit_reshape"]


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int], prefix: int = 0) -> torch.Tensor:
    """Tokens [B, N, D] → feature map [B, D, h, w], dropping the first ``prefix`` tokens (chapter 3).

    ``grid`` is ``(h, w)`` with ``h·w = N − prefix``; the patch tokens are in row-major order (timm,
    torchvision). Returns a view where possible (no copy); differentiable.
    """
    if tokens.dim() != 3:
        raise ValueError(f"expected tokens [B, N, D], got shape {tuple(tokens.shape)}")
    b, n, d = tokens.shape
    h, w = grid
    if n - prefix != h * w:
        raise ValueError(f"{n} tokens minus {prefix} prefix tokens is {n - prefix}, but the grid {h}×{w} "
                         f"needs {h * w}; check the image size and the number of prefix tokens")
    return tokens[:, prefix:].reshape(b, h, w, d).permute(0, 3, 1, 2)


def vit_reshape(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``reshape`` for a timm ViT (``VisionTransformer`` and its relatives): [B, N, D] → [B, D, h, w] (chapter 3).

    Drops ``model.num_prefix_tokens`` tokens (class and register tokens) and uses the patch grid
    ``model.patch_embed.grid_size``, fixed by the ``img_size`` the model was built for: feed images of
    that size. Use a layer whose output still reaches the logits through every patch token, e.g.
    ``"blocks.11.norm1"`` (the last block's attention input): with ``global_pool="token"`` the last block's
    output reaches them through the class token only, so its patch tokens get zero gradient.

    Example: ``batch_cam(vit, x, "blocks.11.norm1", reshape=vit_reshape(vit))``. For differentiable maps
    (``create_graph=True``) run that call under ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`` (or set
    each block's ``attn.fused_attn = False``): the fused attention kernels have no double backward, and the
    loss's ``backward()`` would fail with "derivative for ..._scaled_dot_product_..._backward is not
    implemented".
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if prefix is None or grid is None:
        raise TypeError(f"{type(model).__name__} has no num_prefix_tokens or patch_embed.grid_size; vit_reshape "
                        "is for timm vision transformers: write reshape=lambda t: tokens_to_grid(t, (h, w), prefix)")
    if getattr(model, "dynamic_img_size", False):
        raise ValueError("the model was built with dynamic_img_size=True, so its grid depends on the input; "
                         "use reshape=lambda t: tokens_to_grid(t, (H // patch, W // patch), prefix)")
    grid = (int(grid[0]), int(grid[1]))

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(tokens, grid, int(prefix))

    return reshape

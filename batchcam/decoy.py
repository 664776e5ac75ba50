"""Decoy-MNIST and Decoy-Fashion-MNIST (Ross et al. 2017, "Right for the right reasons"), chapter 9.

Every image gets a square patch in one of its four corners, chosen by two fair coins (top/bottom,
left/right). In training the patch encodes the label ``y``; in test it encodes ``r``, a uniformly
random class independent of the label, so a model that learnt the shortcut fails. The patch's look
is the *variant* (:data:`DECOY_PATCHES`):

* ``"ross4"``, Ross et al.'s exact construction and the default: a 4×4 grey patch of level
  ``255 − 25·y`` (train) or ``255 − 25·r`` (test). A GAP CNN hardly reads it (chapter 9), so it is a
  row of the tables, not the positive control.
* ``"grey8"``: the same grey levels on an 8×8 patch.
* ``"texture6"``: a fixed class-specific 6×6 binary texture (0 / 255, :func:`class_textures`),
  the positive control of the verdict grid: a GAP CNN reads textures easily.

The patch mask feeds the "decoy relevance mass" (:func:`relevance_mass`, :func:`relevance_mass_ratio`),
the RRR-G penalty and the input-gradient penalty (the annotation-using oracles), and the
label-consistent twin of the test set (:func:`consistent_test`) that defines *reliance*.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .data import load_split, split_validation

__all__ = ["CORNERS", "DECOY_SEEDS", "DECOY_PATCHES", "TEXTURE_SEED", "DecoySplits", "load_decoy", "make_decoy",
           "paint_patch", "class_textures", "consistent_test", "decoy_split", "sha256", "relevance_mass",
           "relevance_mass_ratio"]

#: Corner codes: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right (= 2·bottom + right).
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: Seeds of the decoy draws: one decoy dataset (train and test) shared by every run.
DECOY_SEEDS = {"train": 0, "test": 1, "val": 2}
#: The decoy variants (``TrainConfig.decoy_patch``): name → ``make_decoy`` keywords (``kind``, ``patch``).
DECOY_PATCHES = {"ross4": dict(kind="grey", patch=4), "grey8": dict(kind="grey", patch=8),
                 "texture6": dict(kind="texture", patch=6)}
#: Seed of the class textures (fixed: every run and every seed sees the same ten textures).
TEXTURE_SEED = 2017
PATCH_KINDS = ("grey", "texture")


def class_textures(patch: int = 6, num_classes: int = 10) -> torch.Tensor:
    """The fixed binary texture of each class, uint8 [num_classes, patch, patch] in {0, 255} (chapter 9).

    Fair coins from ``torch.Generator().manual_seed(TEXTURE_SEED)``; pairwise distinct and never
    uniform (checked), so each texture names one class and shows on any background.
    """
    g = torch.Generator().manual_seed(TEXTURE_SEED)
    t = torch.randint(0, 2, (num_classes, patch, patch), generator=g, dtype=torch.uint8) * 255
    flat = t.flatten(1)
    if len({tuple(r.tolist()) for r in flat}) != num_classes or bool((flat.amin(1) == flat.amax(1)).any()):
        raise RuntimeError(f"the {patch}×{patch} class textures are not distinct and non-uniform; "
                           "choose another TEXTURE_SEED or patch size")
    return t


def _patch_values(cls: torch.Tensor, kind: str, patch: int) -> torch.Tensor:
    """uint8 [N, patch·patch]: the pixels of each image's patch, in row-major order."""
    if kind == "grey":
        return (255 - 25 * cls).to(torch.uint8)[:, None].expand(-1, patch * patch)
    if kind == "texture":
        return class_textures(patch)[cls].flatten(1)
    raise ValueError(f"kind must be one of {PATCH_KINDS}, got {kind!r}")


def paint_patch(images: torch.Tensor, mask: torch.Tensor, cls: torch.Tensor, *,
                kind: str = "grey") -> torch.Tensor:
    """Images with each patch drawn for class ``cls`` (a new tensor; chapter 9).

    Args:
        images: uint8 [N, 1, H, W]. mask: bool [N, H, W], one p × p square per image, the same p for all
            (as :func:`make_decoy` returns). cls: int [N], the class each patch stands for (``y`` for the
            label-consistent rule, ``r`` for the random one). kind: ``"grey"`` (level ``255 − 25·cls``)
            or ``"texture"`` (:func:`class_textures` of side p).
    Returns:
        uint8 [N, 1, H, W], equal to ``images`` outside the mask.
    """
    n = images.shape[0]
    if tuple(mask.shape) != (n,) + tuple(images.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} must be bool [N, H, W] for images {tuple(images.shape)}")
    out = images.cpu().clone()
    if n == 0:
        return out.to(images.device)
    counts = mask.flatten(1).sum(1)
    patch = round(float(counts[0]) ** 0.5)
    if patch == 0 or bool((counts != patch * patch).any()):
        raise ValueError("mask must hold the same p×p square of pixels in every image")
    plane = out[:, 0]
    plane[mask.cpu()] = _patch_values(torch.as_tensor(cls).long().cpu(), kind, patch).reshape(-1)
    return out.to(images.device)


def make_decoy(images: torch.Tensor, labels: torch.Tensor, *, train: bool, seed: int,
               patch: int = 4, kind: str = "grey") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Add the decoy patch to every image (a new tensor; the input is not modified; chapter 9).

    Random draws, in this order, from ``torch.Generator().manual_seed(seed)`` (CPU): ``bottom``
    [N] and ``right`` [N] (fair coins, ``randint(0, 2)``), then, in test only, ``r`` [N]
    (``randint(0, 10)``). The defaults are Ross et al.'s construction (variant ``"ross4"``).

    Args:
        images: uint8 [N, 1, H, W] (28×28 for MNIST). labels: int [N] in 0..9.
        train: the patch encodes ``y`` (train) or a random ``r`` (test).
        seed: seed of the draws. patch: side of the square patch in pixels.
        kind: ``"grey"`` (level ``255 − 25·class``) or ``"texture"`` (:func:`class_textures`).

    Returns:
        ``(decoyed uint8 [N, 1, H, W], info)`` with ``info`` = ``{"corner": int64 [N] (see
        :data:`CORNERS`), "grey_class": int64 [N] (the class the patch stands for: y in train, r in
        test), "mask": bool [N, H, W] (True inside the patch)}`` and, for grey patches, ``"grey":
        uint8 [N]``.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be uint8 [N, 1, H, W], got {images.dtype} {images.shape}")
    n, _, h, w = images.shape
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    if labels.numel() != n or (n and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"labels must be {n} classes in 0..9")
    if not 0 < patch <= min(h, w) // 2:
        raise ValueError(f"patch must be in 1..{min(h, w) // 2}, got {patch}")
    if kind not in PATCH_KINDS:
        raise ValueError(f"kind must be one of {PATCH_KINDS}, got {kind!r}")
    g = torch.Generator().manual_seed(seed)
    bottom = torch.randint(0, 2, (n,), generator=g)
    right = torch.randint(0, 2, (n,), generator=g)
    grey_class = labels.clone() if train else torch.randint(0, 10, (n,), generator=g)
    rows, cols = torch.arange(h), torch.arange(w)
    top0, left0 = bottom * (h - patch), right * (w - patch)  # first row / column of the patch
    in_rows = (rows[None] >= top0[:, None]) & (rows[None] < top0[:, None] + patch)  # [N, H]
    in_cols = (cols[None] >= left0[:, None]) & (cols[None] < left0[:, None] + patch)  # [N, W]
    mask = in_rows[:, :, None] & in_cols[:, None, :]
    out = paint_patch(images.cpu(), mask, grey_class, kind=kind)
    info = {"corner": 2 * bottom + right, "grey_class": grey_class, "mask": mask}
    if kind == "grey":
        info["grey"] = (255 - 25 * grey_class).to(torch.uint8)
    return out.to(images.device), {k: v.to(images.device) for k, v in info.items()}


def decoy_split(name: str, train: bool, seed: int, root: Union[str, os.PathLike, None] = None,
                n: Optional[int] = None, *, subset_seed: int = 0, variant: str = "ross4"
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Load a split with :func:`batchcam.data.load_split` and add the decoy (:func:`make_decoy`; chapter 9).

    ``seed`` drives the decoy; ``subset_seed`` the optional subset of ``n`` images (kept separate so
    that several decoy seeds share the same images). Returns ``(images uint8 [N, 1, 28, 28],
    labels int64 [N], info)``.
    """
    images, labels = load_split(name, train, root=root, n=n, seed=subset_seed)
    decoyed, info = make_decoy(images, labels, train=train, seed=seed, **_variant(variant))
    return decoyed, labels, info


def sha256(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of a tensor of any shape (e.g. decoyed images [N, 1, H, W]): its raw bytes in C order
    (``hashlib.sha256(t.numpy().tobytes())``; bool as uint8). Shape and dtype are not hashed, so record
    them beside it. Chapter 9: a fingerprint that pins a decoy split down to the byte."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def relevance_mass(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside the mask, ``Σ map·mask / Σ map`` → [N] in [0, 1] (chapter 9).

    Args: maps [N, H, W], non-negative (Grad-CAM maps); mask [N, H, W] bool (the decoy patch).
    An all-zero map has no mass and gets 0 (it points at nothing, so not at the decoy either).
    """
    if maps.shape != mask.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and mask {tuple(mask.shape)} differ in shape")
    if bool((maps < 0).any()):
        raise ValueError("maps must be non-negative (relevance mass is a share of the map's mass)")
    m = maps.flatten(1).to(torch.promote_types(maps.dtype, torch.float32))
    total = m.sum(1)
    inside = (m * mask.flatten(1).to(m.device, m.dtype)).sum(1)
    return torch.where(total > 0, inside / total.where(total > 0, 1.0), 0.0)


def relevance_mass_ratio(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relevance mass divided by the patch's share of the image's area → [N] in [0, H·W / |patch|]
    (chapter 9): 1 for a map with no preference for the patch (a uniform map), above 1 when the map
    concentrates there, 0 for a map with no mass inside it (or no mass at all).

    Args: maps [N, H, W], non-negative; mask [N, H, W] bool, each with at least one pixel.
    """
    area = mask.flatten(1).sum(1).to(torch.promote_types(maps.dtype, torch.float32))
    if bool((area == 0).any()):
        raise ValueError("every mask needs at least one pixel (the patch)")
    return relevance_mass(maps, mask) * (mask[0].numel() / area.to(maps.device))


Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images [N, 1, 28, 28], int64 labels [N])


@dataclass
class DecoySplits:
    """The data of one decoy run (chapter 9), built by :func:`load_decoy`."""

    train: Split  # what the model trains on: decoyed, or clean for the oracle (decoy="test")
    test: Split  # the decoyed test set (the run's test set: random-class patches)
    clean_train: Split
    clean_test: Split
    train_masks: Optional[torch.Tensor]  # bool [N, 28, 28], the patch of each training image (decoyed training)
    test_masks: torch.Tensor  # bool [N_test, 28, 28]
    test_grey_class: torch.Tensor  # int64 [N_test]: the class the test patch stands for (r)
    info: dict  # seeds and SHA-256 of the decoyed arrays, for the record
    val: Optional[Split] = None  # the validation split with n_val: decoyed like train (clean for the oracle)
    variant: str = "ross4"  # the patch (DECOY_PATCHES)
    #: With n_val and a decoyed training split: the validation images with their patch at the same place drawn
    #: for a random class (seed DECOY_SEEDS["val"]), and the clean validation images; validation reliance =
    #: accuracy on ``val`` minus accuracy on ``val_random`` (the oracles' λ is chosen on it, chapter 9).
    val_random: Optional[Split] = None
    clean_val: Optional[Split] = None


def consistent_test(splits: DecoySplits) -> Split:
    """The label-consistent twin of the decoyed test set (chapter 9): the same clean test images and the
    same patch positions, the patch drawn for the true label ``y`` (the training rule) instead of the
    random ``r``. ``(uint8 [N, 1, H, W], int64 [N])``; it differs from ``splits.test`` only inside the
    patches. Reliance = accuracy on it minus accuracy on ``splits.test``."""
    x, y = splits.clean_test
    return paint_patch(x, splits.test_masks, y, kind=_variant(splits.variant)["kind"]), y


def _variant(name: str) -> dict:
    if name not in DECOY_PATCHES:
        raise ValueError(f"decoy patch must be one of {tuple(DECOY_PATCHES)}, got {name!r}")
    return DECOY_PATCHES[name]


def load_decoy(dataset: str, decoy: str, *, root: Union[str, os.PathLike, None] = None,
               n_train: Optional[int] = None, n_test: Optional[int] = None, seed: int = 0,
               variant: str = "ross4", n_val: int = 0) -> DecoySplits:
    """Clean and decoyed splits of a run (chapter 9). ``decoy``: ``"train+test"`` (the shortcut is
    learnable) or ``"test"`` (trained on clean images: the oracle); ``variant``: the patch
    (:data:`DECOY_PATCHES`). The patches follow :data:`DECOY_SEEDS`; the test subset seed 0.

    Without ``n_val`` (the first records) the training subset follows ``seed`` (``load_split``) and
    the decoy is drawn over that subset, as ``batchcam.train.load_data``. With ``n_val`` the decoy is
    drawn over the whole training split (so every image keeps its patch whatever the seed), the
    validation split is carved out of it by :func:`batchcam.data.split_validation` (fixed, stratified,
    decoyed like the training images: label-consistent patches; clean for the oracle), and the
    ``n_train`` subset is then drawn with ``seed`` from the rest, as ``load_data`` does.
    """
    if decoy not in ("train+test", "test"):
        raise ValueError(f"decoy must be 'train+test' or 'test', got {decoy!r}")
    kw = _variant(variant)
    clean_test = load_split(dataset, False, root=root, n=n_test, seed=0)
    test_x, test_info = make_decoy(*clean_test, train=False, seed=DECOY_SEEDS["test"], **kw)
    info = {"seed_train": DECOY_SEEDS["train"], "seed_test": DECOY_SEEDS["test"], "test_sha256": sha256(test_x)}
    if variant != "ross4":
        info["patch"] = variant
    if n_val:
        x, y = load_split(dataset, True, root=root)
        keep, val_idx = split_validation(y, n_val)
        if n_train:
            keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:n_train]]
    else:
        x, y = load_split(dataset, True, root=root, n=n_train, seed=seed)
        keep, val_idx = torch.arange(len(y)), None
    clean_train, train, train_masks, val = (x[keep], y[keep]), (x[keep], y[keep]), None, None
    if val_idx is not None:
        val = x[val_idx], y[val_idx]
    if decoy == "train+test":
        dx, d_info = make_decoy(x, y, train=True, seed=DECOY_SEEDS["train"], **kw)
        train, train_masks = (dx[keep], y[keep]), d_info["mask"][keep]
        val = None if val_idx is None else (dx[val_idx], y[val_idx])
        info["train_sha256"] = sha256(train[0])
    val_random = clean_val = None
    if val_idx is not None and decoy == "train+test":
        r = torch.randint(0, 10, (len(val_idx),), generator=torch.Generator().manual_seed(DECOY_SEEDS["val"]))
        val_random = paint_patch(x[val_idx], d_info["mask"][val_idx], r, kind=kw["kind"]), y[val_idx]
        clean_val = x[val_idx], y[val_idx]
    return DecoySplits(train, (test_x, clean_test[1]), clean_train, clean_test, train_masks, test_info["mask"],
                       test_info["grey_class"], info, val, variant, val_random, clean_val)

"""Decoy-MNIST and Decoy-Fashion-MNIST (Ross et al. 2017, "Right for the right reasons").

Chapter 7 explains the experiment. Every image gets a 4×4 patch in one of its four corners,
chosen by two fair coins (top/bottom, left/right). In training the patch's grey level is
``255 − 25·y``: a shortcut that predicts the label perfectly. In test it is ``255 − 25·r`` with
``r`` a uniformly random class, independent of the label, so a model that learnt the shortcut
fails. The patch mask feeds the "decoy relevance mass" metric (:func:`relevance_mass`) and the
RRR-G penalty (the annotation-using upper bound: a Grad-CAM mass penalty inside the known patch).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .data import load_split

__all__ = ["CORNERS", "DECOY_SEEDS", "DecoySplits", "load_decoy", "make_decoy", "decoy_split", "sha256",
           "relevance_mass"]

#: Corner codes: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right (= 2·bottom + right).
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: Seeds of the decoy draws: one decoy dataset (train and test) shared by every run.
DECOY_SEEDS = {"train": 0, "test": 1}


def make_decoy(images: torch.Tensor, labels: torch.Tensor, *, train: bool, seed: int,
               patch: int = 4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Add the decoy patch to every image (a new tensor; the input is not modified; chapter 7).

    Random draws, in this order, from ``torch.Generator().manual_seed(seed)`` (CPU): ``bottom``
    [N] and ``right`` [N] (fair coins, ``randint(0, 2)``), then, in test only, ``r`` [N]
    (``randint(0, 10)``).

    Args:
        images: uint8 [N, 1, H, W] (28×28 for MNIST). labels: int [N] in 0..9.
        train: grey ``255 − 25·y`` (train) or ``255 − 25·r`` with random ``r`` (test).
        seed: seed of the draws. patch: side of the square patch in pixels.

    Returns:
        ``(decoyed uint8 [N, 1, H, W], info)`` with ``info`` = ``{"corner": int64 [N] (see
        :data:`CORNERS`), "grey": uint8 [N], "grey_class": int64 [N] (y in train, r in test),
        "mask": bool [N, H, W] (True inside the patch)}``.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be uint8 [N, 1, H, W], got {images.dtype} {images.shape}")
    n, _, h, w = images.shape
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    if labels.numel() != n or (n and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"labels must be {n} classes in 0..9")
    if not 0 < patch <= min(h, w) // 2:
        raise ValueError(f"patch must be in 1..{min(h, w) // 2}, got {patch}")
    g = torch.Generator().manual_seed(seed)
    bottom = torch.randint(0, 2, (n,), generator=g)
    right = torch.randint(0, 2, (n,), generator=g)
    grey_class = labels.clone() if train else torch.randint(0, 10, (n,), generator=g)
    grey = (255 - 25 * grey_class).to(torch.uint8)
    rows, cols = torch.arange(h), torch.arange(w)
    top0, left0 = bottom * (h - patch), right * (w - patch)  # first row / column of the patch
    in_rows = (rows[None] >= top0[:, None]) & (rows[None] < top0[:, None] + patch)  # [N, H]
    in_cols = (cols[None] >= left0[:, None]) & (cols[None] < left0[:, None] + patch)  # [N, W]
    mask = in_rows[:, :, None] & in_cols[:, None, :]
    out = images.cpu().clone()
    out[:, 0] = torch.where(mask, grey.view(n, 1, 1), out[:, 0])
    info = {"corner": 2 * bottom + right, "grey": grey, "grey_class": grey_class, "mask": mask}
    return out.to(images.device), {k: v.to(images.device) for k, v in info.items()}


def decoy_split(name: str, train: bool, seed: int, root: Union[str, os.PathLike, None] = None,
                n: Optional[int] = None, *, subset_seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Load a split with :func:`batchcam.data.load_split` and add the decoy (:func:`make_decoy`; chapter 7).

    ``seed`` drives the decoy; ``subset_seed`` the optional subset of ``n`` images (kept separate so
    that several decoy seeds share the same images). Returns ``(images uint8 [N, 1, 28, 28],
    labels int64 [N], info)``.
    """
    images, labels = load_split(name, train, root=root, n=n, seed=subset_seed)
    decoyed, info = make_decoy(images, labels, train=train, seed=seed)
    return decoyed, labels, info


def sha256(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of a tensor of any shape (e.g. decoyed images [N, 1, H, W]): its raw bytes in C order
    (``hashlib.sha256(t.numpy().tobytes())``; bool as uint8). Shape and dtype are not hashed, so record
    them beside it. Chapter 7: a fingerprint that pins a decoy split down to the byte."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def relevance_mass(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside the mask, ``Σ map·mask / Σ map`` → [N] in [0, 1] (chapter 7).

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


Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images [N, 1, 28, 28], int64 labels [N])


@dataclass
class DecoySplits:
    """The data of one decoy run (chapter 7), built by :func:`load_decoy`."""

    train: Split  # what the model trains on: decoyed, or clean for the oracle (decoy="test")
    test: Split  # the decoyed test set (the run's test set)
    clean_train: Split
    clean_test: Split
    train_masks: Optional[torch.Tensor]  # bool [N, 28, 28], the patch of each training image (decoyed training)
    test_masks: torch.Tensor  # bool [N_test, 28, 28]
    test_grey_class: torch.Tensor  # int64 [N_test]: the class the test patch's grey level stands for
    info: dict  # seeds and SHA-256 of the decoyed arrays, for the record


def load_decoy(dataset: str, decoy: str, *, root: Union[str, os.PathLike, None] = None,
               n_train: Optional[int] = None, n_test: Optional[int] = None, seed: int = 0) -> DecoySplits:
    """Clean and decoyed splits of a run (chapter 7). ``decoy``: ``"train+test"`` (the shortcut is
    learnable) or ``"test"`` (trained on clean images: the oracle). The training subset follows
    ``seed`` and the test subset seed 0, as in ``batchcam.train.load_data``; the patches follow
    :data:`DECOY_SEEDS`."""
    if decoy not in ("train+test", "test"):
        raise ValueError(f"decoy must be 'train+test' or 'test', got {decoy!r}")
    clean_train = load_split(dataset, True, root=root, n=n_train, seed=seed)
    clean_test = load_split(dataset, False, root=root, n=n_test, seed=0)
    test_x, test_info = make_decoy(*clean_test, train=False, seed=DECOY_SEEDS["test"])
    info = {"seed_train": DECOY_SEEDS["train"], "seed_test": DECOY_SEEDS["test"], "test_sha256": sha256(test_x)}
    train, train_masks = clean_train, None
    if decoy == "train+test":
        train_x, train_info = make_decoy(*clean_train, train=True, seed=DECOY_SEEDS["train"])
        train, train_masks = (train_x, clean_train[1]), train_info["mask"]
        info["train_sha256"] = sha256(train_x)
    return DecoySplits(train, (test_x, clean_test[1]), clean_train, clean_test, train_masks, test_info["mask"],
                       test_info["grey_class"], info)

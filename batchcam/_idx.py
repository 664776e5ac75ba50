"""The IDX files of MNIST and Fashion-MNIST: names, layout, digests, decoding and verification.

``batchcam.data`` (loading, chapters 2 and 4) and ``batchcam.fetch`` (fetching, the
README's "Getting the data") both import from here, so neither imports the other's
internals. The module is private; its names are public so that both can use them.

The folder layout is torchvision's: ``root/MNIST/raw`` and ``root/FashionMNIST/raw``,
each holding the four files of ``FILES`` as ``<file>.gz``. ``SHA256`` holds the digest
of each file's *uncompressed* IDX content, so a file that was re-compressed still
verifies and a file whose content changed never does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import struct
import zlib
from pathlib import Path

import torch

from ._helpers import unknown_choice

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # torchvision's folder names
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: SHA-256 of the *uncompressed* IDX files, keyed ``SHA256[dataset][file]``.
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


def check_name(name: str) -> str:
    """Normalise a dataset name (``"MNIST"``, ``"fashion_mnist"`` …) or raise ValueError listing valid ones."""
    key = str(name).lower().replace("_", "-")
    if key not in DATASETS:
        raise unknown_choice("dataset", name, DATASETS)
    return key


def raw_dir(root: Path, name: str) -> Path:
    """The folder holding the ``.gz`` files of dataset ``name`` under ``root``."""
    return root / FOLDERS[name] / "raw"


class ChecksumError(RuntimeError):
    """A data file whose uncompressed content does not match its expected SHA-256.

    The one-line message names the file, both digests and the two repairs: delete
    the file and fetch it again, or fetch everything again with ``--force``. A gzip
    stream that is truncated or corrupt raises this too; its "actual" digest covers
    only the part that could still be read.
    """

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, root: str | os.PathLike,
                 reason: str | None = None) -> None:
        self.path, self.expected, self.actual, self.root, self.reason = Path(path), expected, actual, root, reason
        detail = f" (gzip stream unreadable: {reason}; actual digest is of the readable part)" if reason else ""
        super().__init__(
            f"checksum mismatch for {self.path}: expected sha256 {expected}, got {actual}{detail}. "
            f"The file is corrupt or not the canonical data: delete it and run "
            f"`python -m batchcam prepare-data --root {root}`, or replace every file with "
            f"`python -m batchcam prepare-data --root {root} --force`"
        )

    def __reduce__(self):  # picklable despite the custom signature (multiprocessing, notebooks)
        return type(self), (self.path, self.expected, self.actual, self.root, self.reason)


def sha256(data: bytes | bytearray) -> str:
    """Hex SHA-256 of ``data``. It is a separate function so that tests can count calls."""
    return hashlib.sha256(data).hexdigest()


def gunzip(src: Path | bytes) -> tuple[bytearray, str | None]:
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


def verified_content(src: Path | bytes, expected: str, root: Path, label: Path) -> bytearray:
    """Decompress ``src`` and hash it. Returns the IDX bytes, or raises ChecksumError naming ``label``.

    The content is hashed on every call: nothing (size, mtime, a stamp) vouches for a file.
    """
    content, err = gunzip(src)
    actual = sha256(content)
    if err is not None or actual != expected:
        raise ChecksumError(label, expected, actual, root, err)
    return content


def parse_idx(buf: bytearray, path: Path) -> torch.Tensor:
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


def write_idx_gz(path: Path, array) -> None:
    """Write a uint8 NumPy array (``[N, 28, 28]`` images or ``[N]`` labels) as gzipped IDX.

    The header is magic 2051 for images or 2049 for labels, then big-endian dims.
    The gzip mtime is 0, so the bytes are reproducible. Level 6 is used because
    level 9 is about 15× slower on MNIST and only 2 % smaller.
    """
    header = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as fh:
        fh.write(header)
        fh.write(array.tobytes())

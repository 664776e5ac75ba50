"""Tests for batchcam.data (loading), batchcam.fetch (fetching) and the IDX helpers they share.

Almost every test is synthetic: tiny IDX files in tmp_path, with ``SHA256``
monkeypatched to their digests, and no fetch source configured. Nothing needs the
internet. The tests that need the real data skip when ``data/`` is absent.
"""

from __future__ import annotations

import ast
import builtins
import errno
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from batchcam import _idx, data, fetch

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 12, 5
LABELS = "t10k-labels-idx1-ubyte"

#: SHA-256 of the canonical uncompressed IDX files, written out here independently of the package's table.
PUBLISHED_SHA256 = {
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
FILES = tuple(PUBLISHED_SHA256["mnist"])


def _idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed uint8 IDX of ``array``; the expected layout, written independently of the package."""
    magic = 2051 if array.ndim == 3 else 2049
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        out[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        out[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    return out


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A root holding synthetic MNIST files in torchvision's layout, with SHA256 patched to match."""
    arrays = _synthetic_arrays()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    digests = {}
    for f, array in arrays.items():
        content = _idx_bytes(array)
        (raw / f"{f}.gz").write_bytes(gzip.compress(content))
        digests[f] = hashlib.sha256(content).hexdigest()
    monkeypatch.setitem(data.SHA256, "mnist", digests)
    monkeypatch.setitem(fetch._SOURCES, "mnist", ())  # never touch the network or registries
    data._CACHE.clear()
    yield tmp_path, arrays
    data._CACHE.clear()


@pytest.fixture
def hash_calls(monkeypatch):
    """Count calls of the shared hash function (loading and fetching both hash through it)."""
    calls = []
    real = _idx.sha256

    def counting(content):
        calls.append(len(content))
        return real(content)

    monkeypatch.setattr(_idx, "sha256", counting)
    return calls


@pytest.fixture
def read_only(monkeypatch):
    """``apply(folder)`` makes ``folder`` unwritable, as a read-only mount would.

    ``chmod -R a-w`` stops ordinary users. Root ignores permission bits, so writes
    below the folder (opening for writing, creating, renaming, deleting) are also
    refused with ``EROFS`` at the ``os`` / ``open`` level, whichever module does them.
    """
    real_chmod, tops = os.chmod, []

    def apply(top: Path) -> None:
        top = top.resolve()
        tops.append(top)
        for p in [top, *top.rglob("*")]:
            real_chmod(p, p.stat().st_mode & ~0o222)

        def under(path) -> bool:
            try:
                p = os.path.abspath(os.fsdecode(path))
            except TypeError:  # a file descriptor
                return False
            return p == str(top) or p.startswith(str(top) + os.sep)

        def refuse(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

        def guard(real, is_write):
            def guarded(path, *args, **kwargs):
                targets = [path, *(a for a in args if isinstance(a, (str, os.PathLike)))]  # rename's dst too
                if any(map(under, targets)) and is_write(*args, **kwargs):
                    refuse(path)
                return real(path, *args, **kwargs)
            return guarded

        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        monkeypatch.setattr(os, "open", guard(os.open, lambda flags, *a, **k: bool(flags & writes)))
        writing_mode = guard(io.open, lambda mode="r", *a, **k: any(c in mode for c in "wax+"))
        monkeypatch.setattr(io, "open", writing_mode)
        monkeypatch.setattr(builtins, "open", writing_mode)
        for name in ("replace", "rename", "remove", "unlink", "mkdir", "rmdir", "chmod", "utime"):
            monkeypatch.setattr(os, name, guard(getattr(os, name), lambda *a, **k: True))

    yield apply
    for top in tops:  # let tmp_path be cleaned up
        for p in [top, *top.rglob("*")]:
            real_chmod(p, p.stat().st_mode | 0o200)


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _replace_keeping_size_and_mtime(path: Path, blob: bytes) -> None:
    """Overwrite ``path`` with ``blob`` (same length) and restore its mtime, as a careless copy tool would."""
    st = path.stat()
    assert len(blob) == st.st_size
    path.write_bytes(blob)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _stat_key(path) == (st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- names, paths, published constants


def test_names_and_class_names():
    assert data.DATASETS == ("mnist", "fashion-mnist")
    assert data.class_names("mnist") == [str(i) for i in range(10)]
    fashion = data.class_names("Fashion_MNIST")
    assert len(fashion) == 10 and fashion[0] == "T-shirt/top" and fashion[-1] == "Ankle boot"
    with pytest.raises(ValueError, match="fashion-mnist"):
        data.class_names("cifar10")
    with pytest.raises(ValueError, match="mnist"):
        fetch.prepare_data(root="unused", datasets=("svhn",))


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHCAM_DATA", str(tmp_path))
    assert data.default_data_root() == tmp_path
    monkeypatch.delenv("BATCHCAM_DATA")
    # These tests import the package from this checkout, which has pyproject.toml.
    assert Path(data.__file__).resolve() == REPO / "batchcam" / "data.py"
    assert data.default_data_root() == REPO / "data"
    # Installed (site-packages: no pyproject.toml above the package), e.g. on Colab.
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "batchcam" / "data.py"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_root() == tmp_path / "home" / ".cache" / "batchcam" / "data"


def test_sha256_table_is_the_canonical_one():
    assert data.SHA256 == PUBLISHED_SHA256 and fetch.SHA256 is data.SHA256


def test_idx_helpers_against_hand_built_bytes(tmp_path):
    # 2 images of 2×3 pixels: magic 0x00000803, dims 2, 2, 3, then 12 pixels.
    images = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    labels = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9])
    assert _idx.parse_idx(bytearray(images), "x").tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    assert _idx.parse_idx(bytearray(labels), "y").tolist() == [7, 0, 9]
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        _idx.parse_idx(bytearray(b"\x00\x00\x0d\x01" + labels[4:]), "float")
    with pytest.raises(ValueError, match="holds"):
        _idx.parse_idx(bytearray(labels[:-1]), "short")

    _idx.write_idx_gz(tmp_path / "l.gz", np.array([7, 0, 9], np.uint8))
    _idx.write_idx_gz(tmp_path / "i.gz", np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    assert gzip.decompress((tmp_path / "l.gz").read_bytes()) == labels
    assert gzip.decompress((tmp_path / "i.gz").read_bytes()) == images
    assert _idx.sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --------------------------------------------------------------------------- loading


def test_load_split_synthetic(fake_root):
    root, arrays = fake_root
    x, y = data.load_split("mnist", train=True, root=root)
    assert x.shape == (N_TRAIN, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (N_TRAIN,) and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])
    xt, _ = data.load_split("mnist", train=False, root=root)
    assert xt.shape == (N_TEST, 1, 28, 28)

    x[:] = 0  # the caller's copy; the cache must be unaffected
    assert data.load_split("mnist", train=True, root=root)[0].any()

    xs, ys = data.load_split("mnist", train=True, root=root, n=4, seed=3)
    xs2, ys2 = data.load_split("mnist", train=True, root=root, n=4, seed=3)
    assert xs.shape == (4, 1, 28, 28) and torch.equal(xs, xs2) and torch.equal(ys, ys2)
    assert not torch.equal(xs, data.load_split("mnist", train=True, root=root, n=4, seed=4)[0])
    with pytest.raises(ValueError):
        data.load_split("mnist", train=True, root=root, n=N_TRAIN + 1)


def test_load_split_caches_and_notices_replaced_files(fake_root, hash_calls):
    root, _ = fake_root
    data.load_split("mnist", train=False, root=root)
    assert len(hash_calls) == 2  # images and labels, hashed in full
    data.load_split("mnist", train=False, root=root, n=3)
    assert len(hash_calls) == 2  # repeated loads are cheap: served from memory
    path = root / "MNIST/raw" / f"{LABELS}.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros(N_TEST, np.uint8))))  # a new file: hashed again
    with pytest.raises(data.ChecksumError):
        data.load_split("mnist", train=False, root=root)
    assert len(hash_calls) == 4


def _assert_repairable(err: pytest.ExceptionInfo, path: Path, expected: str) -> None:
    msg = str(err.value)
    assert path.name in msg and expected in msg and "prepare-data" in msg and "--force" in msg and "delete" in msg
    assert err.value.actual in msg and err.value.actual != expected and len(err.value.actual) == 64
    assert "\n" not in msg


def test_corrupted_file_raises(fake_root):
    root, arrays = fake_root
    path = root / "MNIST/raw/t10k-images-idx3-ubyte.gz"
    bad = arrays["t10k-images-idx3-ubyte"].copy()
    bad[0, 0, 0] ^= 1
    path.write_bytes(gzip.compress(_idx_bytes(bad)))
    with pytest.raises(data.ChecksumError) as err:
        data.load_split("mnist", train=False, root=root)
    _assert_repairable(err, path, data.SHA256["mnist"]["t10k-images-idx3-ubyte"])
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)


def test_truncated_gzip_raises(fake_root):
    root, _ = fake_root
    path = root / "MNIST/raw/t10k-images-idx3-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.ChecksumError, match="unreadable") as err:
        data.load_split("mnist", train=False, root=root)
    _assert_repairable(err, path, data.SHA256["mnist"]["t10k-images-idx3-ubyte"])


def test_regzipped_file_with_one_label_changed_is_refused_at_load(fake_root):
    """A valid gzip whose content differs by one label, same size and mtime, after prepare-data stamped the folder."""
    root, arrays = fake_root
    path = root / "MNIST/raw" / f"{LABELS}.gz"
    path.write_bytes(gzip.compress(_idx_bytes(arrays[LABELS]), compresslevel=0, mtime=0))
    fetch.prepare_data(root, datasets="mnist")
    changed = arrays[LABELS].copy()
    changed[0] = (changed[0] + 1) % 10
    _replace_keeping_size_and_mtime(path, gzip.compress(_idx_bytes(changed), compresslevel=0, mtime=0))
    assert gzip.decompress(path.read_bytes())[8:] == changed.tobytes()  # a valid gzip of a valid IDX file

    data._CACHE.clear()  # a new process
    with pytest.raises(data.ChecksumError) as err:
        data.load_split("mnist", train=False, root=root)
    _assert_repairable(err, path, data.SHA256["mnist"][LABELS])


def test_missing_data_raises_and_never_fetches(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("load_split must not fetch")

    for attr, obj in vars(fetch).items():
        if callable(obj) and getattr(obj, "__module__", None) == fetch.__name__:
            monkeypatch.setattr(fetch, attr, forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setitem(fetch._SOURCES, "mnist", ())
    data._CACHE.clear()

    with pytest.raises(data.DataMissingError) as err:  # an explicit root: the command names it
        data.load_split("mnist", train=True, root=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in msg
    assert "mnist" in msg and str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte.gz" in msg
    assert f"python -m batchcam prepare-data --root {tmp_path}" in msg
    assert str(pickle.loads(pickle.dumps(err.value))) == msg
    assert not (tmp_path / "MNIST").exists()

    monkeypatch.setenv("BATCHCAM_DATA", str(tmp_path))  # the default root; one file of two present
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as err:
        data.load_split("fashion-mnist", train=False)
    msg = str(err.value)
    assert "fashion-mnist" in msg and str(raw) in msg and f"{LABELS}.gz" in msg and "t10k-images" not in msg
    assert "`python -m batchcam prepare-data` (or `make data`)" in msg


def test_data_module_does_not_import_fetching_code():
    tree = ast.parse((REPO / "batchcam" / "data.py").read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level for alias in node.names} | {
        node.module for node in top_level if isinstance(node, ast.ImportFrom)}
    assert not names & {"fetch", ".fetch", "subprocess", "socket", "urllib", "torchvision", "tempfile"}, names


def test_prepare_hashes_every_time(fake_root, hash_calls):
    root, _ = fake_root
    fetch.prepare_data(root, datasets=("mnist",))
    assert len(hash_calls) == 4 and (root / "MNIST/raw/.verified.json").is_file()
    fetch.prepare_data(root, datasets=("mnist",))
    assert len(hash_calls) == 8  # the stamp never stands in for hashing


def test_prepare_reports_a_flipped_byte_with_size_and_mtime_kept(fake_root, monkeypatch, tmp_path_factory):
    root, _ = fake_root
    fetch.prepare_data(root, datasets=("mnist",))  # verified and stamped
    path = root / "MNIST/raw/train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # inside the deflate stream
    _replace_keeping_size_and_mtime(path, bytes(flipped))

    with pytest.raises(data.ChecksumError) as err:
        fetch.prepare_data(root, datasets=("mnist",))
    _assert_repairable(err, path, data.SHA256["mnist"]["train-images-idx3-ubyte"])
    assert path.read_bytes() == bytes(flipped)  # reported, left in place for the user to decide

    mirror = tmp_path_factory.mktemp("mirror")
    (mirror / "train-images-idx3-ubyte.gz").write_bytes(good)
    for f in FILES[1:]:
        (mirror / f"{f}.gz").write_bytes((root / "MNIST/raw" / f"{f}.gz").read_bytes())
    monkeypatch.setitem(fetch._SOURCES, "mnist", (lambda name, tmp, verbose: {f: mirror / f"{f}.gz" for f in FILES},))
    fetch.prepare_data(root, datasets=("mnist",), force=True)  # the repair the message names
    assert path.read_bytes() == good
    data.load_split("mnist", train=True, root=root)


def test_prepare_falls_back_across_sources(fake_root, monkeypatch, tmp_path_factory):
    root, arrays = fake_root
    raw = root / "MNIST/raw"
    mirror = tmp_path_factory.mktemp("mirror")
    for f in FILES:  # a "mirror" holding the good files
        (mirror / f"{f}.gz").write_bytes((raw / f"{f}.gz").read_bytes())
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    (raw / f"{LABELS}.gz").unlink()
    tried = []

    def offline(name, tmp, verbose):
        tried.append("offline")
        raise OSError("no network")

    def half_wrong(name, tmp, verbose):  # one file verifies, the other does not: neither may be placed
        tried.append("half_wrong")
        (tmp / "ok.gz").write_bytes(gzip.compress(_idx_bytes(arrays["train-labels-idx1-ubyte"]), compresslevel=1))
        (tmp / "bad.gz").write_bytes(gzip.compress(b"not mnist"))
        return {"train-labels-idx1-ubyte": tmp / "ok.gz", LABELS: tmp / "bad.gz"}

    def good(name, tmp, verbose):
        tried.append("good")
        return {f: mirror / f"{f}.gz" for f in FILES}

    monkeypatch.setitem(fetch._SOURCES, "mnist", (offline, half_wrong, good))
    out = fetch.prepare_data(root, datasets=["mnist"])
    assert out == {"mnist": raw} and tried == ["offline", "half_wrong", "good"]
    for f in FILES:
        assert (raw / f"{f}.gz").read_bytes() == (mirror / f"{f}.gz").read_bytes()
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.setitem(fetch._SOURCES, "mnist", (offline,))
    (raw / f"{LABELS}.gz").unlink()
    with pytest.raises(RuntimeError, match="every source failed"):
        fetch.prepare_data(root, datasets=["mnist"])


def test_read_only_folder_without_stamp_works_with_a_warning(fake_root, read_only, capsys):
    root, arrays = fake_root
    before = {p.name: (p.read_bytes(), _stat_key(p)) for p in (root / "MNIST/raw").iterdir()}
    assert ".verified.json" not in before
    read_only(root)
    with pytest.raises(OSError, match="Read-only"):  # the simulation holds, whoever runs the tests
        (root / "MNIST/raw/probe").write_bytes(b"")

    with pytest.warns(RuntimeWarning, match="could not write .*verified.json.*Read-only.*usable"):
        assert fetch.prepare_data(root, datasets=("mnist",), verbose=True) == {"mnist": root / "MNIST/raw"}
    assert "verified in" in capsys.readouterr().out
    x, y = data.load_split("mnist", train=False, root=root)
    assert np.array_equal(y.numpy(), arrays[LABELS]) and x.shape == (N_TEST, 1, 28, 28)
    assert {p.name: (p.read_bytes(), _stat_key(p)) for p in (root / "MNIST/raw").iterdir()} == before


def test_debian_source_runs_apt_update_once_when_lists_are_empty(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "_DEBIAN_DIR", tmp_path / "absent/usr/share/datasets/fashion-mnist")
    commands = []

    def fake_run(cmd, cwd):
        commands.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"] and ["apt-get", "update"] not in commands:
            raise RuntimeError("E: Unable to locate package dataset-fashion-mnist")
        if cmd[1] == "download":
            (cwd / "dataset-fashion-mnist_1_all.deb").write_bytes(b"")

    monkeypatch.setattr(fetch, "_run", fake_run)
    found = fetch._from_debian("fashion-mnist", tmp_path, verbose=False)
    assert [c[1] for c in commands] == ["download", "update", "download", "-x"]
    extracted = tmp_path / "x/usr/share/datasets/fashion-mnist"
    assert found == {f: extracted / f"{f}.gz" for f in FILES}


def test_offline_env_skips_torchvision(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHCAM_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="BATCHCAM_OFFLINE"):
        fetch._from_torchvision("mnist", tmp_path, verbose=False)


# --------------------------------------------------------------------------- restricted unpickler


@pytest.mark.parametrize("protocol", [2, 4])  # 2 is the Python 2 era format of mnist.pkl.gz
def test_mnist_pickle_round_trips_to_idx(tmp_path, protocol):
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (n, 784)) for n in (5, 3, 4)]
    labels = [rng.integers(0, 10, n).astype(np.int64) for n in (5, 3, 4)]
    parts = tuple((p.astype(np.float32) / 256, y) for p, y in zip(pixels, labels))
    blob = gzip.compress(pickle.dumps(parts, protocol=protocol))

    out = fetch._mnist_pickle_to_idx(io.BytesIO(blob), tmp_path)
    assert sorted(out) == sorted(FILES)
    expect = {
        "train-images-idx3-ubyte": np.concatenate(pixels[:2]).astype(np.uint8).reshape(-1, 28, 28),
        "train-labels-idx1-ubyte": np.concatenate(labels[:2]).astype(np.uint8),
        "t10k-images-idx3-ubyte": pixels[2].astype(np.uint8).reshape(-1, 28, 28),
        "t10k-labels-idx1-ubyte": labels[2].astype(np.uint8),
    }
    for f, array in expect.items():
        content = gzip.decompress(out[f].read_bytes())
        assert content == _idx_bytes(array)  # magic, big-endian dims, canonical pixels
    assert out["train-images-idx3-ubyte"].read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [_Evil(), ((np.zeros(3), _Evil()),)])
def test_unpickler_rejects_other_globals(tmp_path, payload):
    blob = gzip.compress(pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        fetch._mnist_pickle_to_idx(io.BytesIO(blob), tmp_path)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- TensorLoader


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(10)


def test_loader_shapes_and_range(tiny):
    x, y = tiny
    loader = data.TensorLoader(x, y, batch_size=4, shuffle=False, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert xb.shape == (4, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert 0.0 <= xb.min() and xb.max() <= 1.0
    assert torch.equal(xb, x[:4].float() / 255) and torch.equal(yb, y[:4])

    dropped = data.TensorLoader(x, y, batch_size=4, shuffle=True, seed=0, drop_last=True)
    assert len(dropped) == len(list(dropped)) == 2


def test_loader_shuffle_is_reproducible(tiny):
    x, y = tiny

    def order(loader):
        return torch.cat([b[1] for b in loader]).tolist()

    a = data.TensorLoader(x, y, batch_size=3, shuffle=True, seed=7)
    b = data.TensorLoader(x, y, batch_size=3, shuffle=True, seed=7)
    first, second = order(a), order(a)  # epochs 0 and 1
    assert sorted(first) == list(range(10)) and first != second
    assert order(b) == first
    b.set_epoch(1)
    assert order(b) == second  # a resumed run reproduces epoch 1
    c = data.TensorLoader(x, y, batch_size=3, shuffle=True, seed=8)
    assert order(c) != first


def test_loader_resizes_on_the_fly(tiny):
    x, y = tiny
    loader = data.TensorLoader(x, y, batch_size=4, shuffle=False, seed=0, image_size=56, channels_last=True)
    xb, _ = next(iter(loader))
    assert xb.shape == (4, 1, 56, 56) and 0.0 <= xb.min() and xb.max() <= 1.0
    ref = torch.nn.functional.interpolate(x[:4].float() / 255, size=(56, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(xb, ref)
    assert xb.is_contiguous(memory_format=torch.channels_last)


def test_loader_rejects_bad_inputs(tiny):
    x, y = tiny
    with pytest.raises(ValueError):
        data.TensorLoader(x.float(), y, batch_size=2)
    with pytest.raises(ValueError):
        data.TensorLoader(x, y[:5], batch_size=2)


# --------------------------------------------------------------------------- the real data

_REAL = pytest.mark.skipif(
    not all((REPO / "data" / d / "raw" / f"{f}.gz").is_file() for d in ("MNIST", "FashionMNIST") for f in FILES),
    reason="real data not prepared in data/ (run `python -m batchcam prepare-data` or `make data`)")


@_REAL
def test_real_files_match_the_published_digests():
    """Hash all eight real files in full (about a second) against the digests written out above."""
    start = time.perf_counter()
    for name, folder in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        for f, digest in PUBLISHED_SHA256[name].items():
            path = REPO / "data" / folder / "raw" / f"{f}.gz"
            assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == digest, path
    assert time.perf_counter() - start < 30


@_REAL
def test_real_mnist_test_split():
    x, y = data.load_split("mnist", train=False, root=REPO / "data")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    hist = torch.bincount(y, minlength=10)
    assert int(hist.sum()) == 10000
    assert hist.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

"""Tests for batchcam.data: verification, stamps, restricted unpickling, loading, TensorLoader.

Almost every test is synthetic: tiny IDX files in tmp_path, with ``SHA256``
monkeypatched to their digests. Nothing needs the internet. The one test that
needs the real data skips when ``data/MNIST/raw`` is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from batchcam import data

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 12, 5


def _idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed uint8 IDX of ``array``; the expected layout, written independently of the module."""
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
    monkeypatch.setitem(data._SOURCES, "mnist", ())  # never touch the network or registries
    data._load_cached.cache_clear()
    yield tmp_path, arrays
    data._load_cached.cache_clear()


@pytest.fixture
def hash_calls(monkeypatch):
    """Count calls of the module's hash function."""
    calls = []
    real = data._sha256

    def counting(content):
        calls.append(len(content))
        return real(content)

    monkeypatch.setattr(data, "_sha256", counting)
    return calls


# --------------------------------------------------------------------------- names and paths


def test_names_and_class_names():
    assert data.DATASETS == ("mnist", "fashion-mnist")
    assert data.class_names("mnist") == [str(i) for i in range(10)]
    fashion = data.class_names("Fashion_MNIST")
    assert len(fashion) == 10 and fashion[0] == "T-shirt/top" and fashion[-1] == "Ankle boot"
    with pytest.raises(ValueError, match="fashion-mnist"):
        data.class_names("cifar10")
    with pytest.raises(ValueError, match="mnist"):
        data.prepare_data(root="unused", datasets=("svhn",))


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHCAM_DATA", str(tmp_path))
    assert data.default_data_root() == tmp_path
    monkeypatch.delenv("BATCHCAM_DATA")
    expected = REPO / "data" if (REPO / "pyproject.toml").is_file() else Path.home() / ".cache/batchcam/data"
    assert data.default_data_root() == expected


# --------------------------------------------------------------------------- loading and verification


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


def _assert_repairable(err: pytest.ExceptionInfo, path: Path, expected: str) -> None:
    msg = str(err.value)
    assert path.name in msg and expected in msg and "prepare-data" in msg and "--force" in msg
    assert err.value.actual in msg and err.value.actual != expected and len(err.value.actual) == 64


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


def test_stamp_cache_skips_rehash_and_notices_edits(fake_root, hash_calls):
    root, arrays = fake_root
    data.prepare_data(root, datasets=("mnist",), verbose=False)
    assert len(hash_calls) == 4  # first call verifies every file
    assert (root / "MNIST/raw/.verified.json").is_file()

    start = time.perf_counter()
    data.prepare_data(root, datasets=("mnist",), verbose=False)
    assert time.perf_counter() - start < 1.0
    assert len(hash_calls) == 4  # nothing hashed again

    data.load_split("mnist", train=False, root=root)  # the stamps cover loading too
    assert len(hash_calls) == 4

    # An edited file (different content, hence size and mtime) is hashed again and rejected.
    path = root / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros(N_TEST + 1, np.uint8))))
    data._load_cached.cache_clear()
    with pytest.raises(data.ChecksumError):
        data.load_split("mnist", train=False, root=root)
    assert len(hash_calls) == 5


def test_prepare_falls_back_across_sources_and_replaces_bad_files(fake_root, monkeypatch, tmp_path_factory):
    root, _ = fake_root
    mirror = tmp_path_factory.mktemp("mirror")
    for f in data._FILES:  # a "mirror" holding the good files
        (mirror / f"{f}.gz").write_bytes((root / "MNIST/raw" / f"{f}.gz").read_bytes())
    (root / "MNIST/raw/train-labels-idx1-ubyte.gz").unlink()
    (root / "MNIST/raw/t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    tried = []

    def offline(name, tmp, verbose):
        tried.append("offline")
        raise OSError("no network")

    def wrong(name, tmp, verbose):  # gives a file with the wrong content: must not be placed
        tried.append("wrong")
        bad = tmp / "bad.gz"
        bad.write_bytes(gzip.compress(b"not mnist"))
        return {f: bad for f in data._FILES}

    def good(name, tmp, verbose):
        tried.append("good")
        return {f: mirror / f"{f}.gz" for f in data._FILES}

    monkeypatch.setitem(data._SOURCES, "mnist", (offline, wrong, good))
    out = data.prepare_data(root, datasets=["mnist"], verbose=False)
    assert out == {"mnist": root / "MNIST/raw"} and tried == ["offline", "wrong", "good"]
    for f in data._FILES:
        assert (root / "MNIST/raw" / f"{f}.gz").read_bytes() == (mirror / f"{f}.gz").read_bytes()
    assert not [p for p in (root / "MNIST/raw").iterdir() if p.name.endswith(".tmp")]

    monkeypatch.setitem(data._SOURCES, "mnist", (offline,))
    (root / "MNIST/raw/t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(RuntimeError, match="every source failed"):
        data.prepare_data(root, datasets=["mnist"], verbose=False)


def test_debian_source_runs_apt_update_once_when_lists_are_empty(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_DEBIAN_DIR", tmp_path / "absent/usr/share/datasets/fashion-mnist")
    commands = []

    def fake_run(cmd, cwd):
        commands.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"] and ["apt-get", "update"] not in commands:
            raise RuntimeError("E: Unable to locate package dataset-fashion-mnist")
        if cmd[1] == "download":
            (cwd / "dataset-fashion-mnist_1_all.deb").write_bytes(b"")

    monkeypatch.setattr(data, "_run", fake_run)
    found = data._from_debian("fashion-mnist", tmp_path, verbose=False)
    assert [c[1] for c in commands] == ["download", "update", "download", "-x"]
    extracted = tmp_path / "x/usr/share/datasets/fashion-mnist"
    assert found == {f: extracted / f"{f}.gz" for f in data._FILES}


def test_offline_env_skips_torchvision(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHCAM_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="BATCHCAM_OFFLINE"):
        data._from_torchvision("mnist", tmp_path, verbose=False)


# --------------------------------------------------------------------------- restricted unpickler


@pytest.mark.parametrize("protocol", [2, 4])  # 2 is the Python 2 era format of mnist.pkl.gz
def test_mnist_pickle_round_trips_to_idx(tmp_path, protocol):
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (n, 784)) for n in (5, 3, 4)]
    labels = [rng.integers(0, 10, n).astype(np.int64) for n in (5, 3, 4)]
    parts = tuple((p.astype(np.float32) / 256, y) for p, y in zip(pixels, labels))
    blob = gzip.compress(pickle.dumps(parts, protocol=protocol))

    out = data._mnist_pickle_to_idx(io.BytesIO(blob), tmp_path)
    assert sorted(out) == sorted(data._FILES)
    expect = {
        "train-images-idx3-ubyte": np.concatenate(pixels[:2]).astype(np.uint8).reshape(-1, 28, 28),
        "train-labels-idx1-ubyte": np.concatenate(labels[:2]).astype(np.uint8),
        "t10k-images-idx3-ubyte": pixels[2].astype(np.uint8).reshape(-1, 28, 28),
        "t10k-labels-idx1-ubyte": labels[2].astype(np.uint8),
    }
    for f, array in expect.items():
        content = gzip.decompress(out[f].read_bytes())
        assert content == _idx_bytes(array)  # magic, big-endian dims, canonical pixels
        assert np.array_equal(data._parse_idx(bytearray(content), out[f]).numpy(), array)
    assert out["train-images-idx3-ubyte"].read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [_Evil(), ((np.zeros(3), _Evil()),)])
def test_unpickler_rejects_other_globals(tmp_path, payload):
    blob = gzip.compress(pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        data._mnist_pickle_to_idx(io.BytesIO(blob), tmp_path)
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


@pytest.mark.skipif(not (REPO / "data/MNIST/raw").is_dir(),
                    reason="real MNIST not prepared (run `python -m batchcam prepare-data`)")
def test_real_mnist_test_split():
    x, y = data.load_split("mnist", train=False, root=REPO / "data")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    hist = torch.bincount(y, minlength=10)
    assert int(hist.sum()) == 10000
    assert hist.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

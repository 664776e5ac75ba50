"""Decoy-MNIST construction rules (chapter 9), the relevance mass and the records' SHA-256."""

import hashlib

import pytest
import torch

import batchcam.decoy as decoy
from batchcam.decoy import make_decoy, relevance_mass, sha256

N = 4000


def synthetic(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def corner_mask(corner, size=28, patch=4):
    """Independent construction of the expected patch mask from the corner code."""
    m = torch.zeros(len(corner), size, size, dtype=torch.bool)
    for i, c in enumerate(corner.tolist()):
        r0 = size - patch if c in (2, 3) else 0
        c0 = size - patch if c in (1, 3) else 0
        m[i, r0:r0 + patch, c0:c0 + patch] = True
    return m


@pytest.mark.parametrize("train", [True, False])
def test_one_corner_patch_per_image_and_mask_matches_pixels(train):
    x, y = synthetic()
    keep = x.clone()
    out, info = make_decoy(x, y, train=train, seed=1)
    assert torch.equal(x, keep)  # the input is not modified
    assert out.dtype == torch.uint8 and out.shape == x.shape
    mask = info["mask"]
    assert mask.dtype == torch.bool and (mask.sum((1, 2)) == 16).all()
    assert torch.equal(mask, corner_mask(info["corner"]))
    grey = info["grey"].view(-1, 1, 1).expand(-1, 28, 28)
    assert torch.equal(out[:, 0][mask], grey[mask])  # the patch has the grey level
    assert torch.equal(out[:, 0][~mask], x[:, 0][~mask])  # and nothing else changed


def test_corners_are_uniform():
    x, y = synthetic()
    _, info = make_decoy(x, y, train=True, seed=2)
    counts = torch.bincount(info["corner"], minlength=4).double()
    bound = 4 * (N * 0.25 * 0.75) ** 0.5  # 4 binomial standard deviations
    assert ((counts - N / 4).abs() < bound).all(), counts


def test_train_grey_encodes_the_label_exactly():
    x, y = synthetic()
    out, info = make_decoy(x, y, train=True, seed=3)
    assert torch.equal(info["grey"].long(), 255 - 25 * y)
    assert torch.equal(info["grey_class"], y)


def test_test_grey_carries_no_label_information():
    x, y = synthetic()
    _, info = make_decoy(x, y, train=False, seed=4)
    assert torch.equal(info["grey"].long(), 255 - 25 * info["grey_class"])
    agree = (info["grey"].long() == 255 - 25 * y).double().mean().item()
    assert abs(agree - 0.1) < 4 * (0.1 * 0.9 / N) ** 0.5  # chance level, 1 in 10
    stats = pytest.importorskip("scipy.stats")
    table = torch.zeros(10, 10)
    table.index_put_((y, info["grey_class"]), torch.ones(N), accumulate=True)
    assert stats.chi2_contingency(table.numpy()).pvalue > 1e-3  # independent of the label
    counts = torch.bincount(info["grey_class"], minlength=10).double()
    assert ((counts - N / 10).abs() < 4 * (N * 0.1 * 0.9) ** 0.5).all()  # r is uniform


def test_seeded_reproducible_and_seeds_differ():
    x, y = synthetic(500)
    a, ia = make_decoy(x, y, train=False, seed=5)
    b, ib = make_decoy(x, y, train=False, seed=5)
    c, ic = make_decoy(x, y, train=False, seed=6)
    assert torch.equal(a, b) and all(torch.equal(ia[k], ib[k]) for k in ia)
    assert not torch.equal(a, c) and not torch.equal(ia["corner"], ic["corner"])
    assert sha256(a) == sha256(b) != sha256(c)


def test_sha256_is_of_the_raw_bytes():
    x, _ = synthetic(10)
    assert sha256(x) == hashlib.sha256(x.numpy().tobytes()).hexdigest()
    m = torch.rand(3, 4) > 0.5
    assert sha256(m) == hashlib.sha256(m.numpy().tobytes()).hexdigest()


def test_relevance_mass():
    mask = torch.zeros(4, 28, 28, dtype=torch.bool)
    mask[:, :4, :4] = True
    maps = torch.zeros(4, 28, 28)
    maps[0, :4, :4] = 1.0  # all inside
    maps[1, :4, :4], maps[1, 10:14, 10:14] = 1.0, 1.0  # half inside
    maps[2, 10:14, 10:14] = 0.5  # all outside; maps[3] stays all zero
    torch.testing.assert_close(relevance_mass(maps, mask), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    with pytest.raises(ValueError):
        relevance_mass(-maps - 1, mask)


def test_decoy_split_wraps_load_split(monkeypatch):
    x, y = synthetic(50)
    calls = []

    def fake_load_split(name, train, root=None, n=None, seed=0):
        calls.append((name, train, root, n, seed))
        return x.clone(), y.clone()

    monkeypatch.setattr(decoy, "load_split", fake_load_split)
    images, labels, info = decoy.decoy_split("mnist", True, seed=7, n=50)
    assert calls == [("mnist", True, None, 50, 0)]  # the subset does not depend on the decoy seed
    ref, ref_info = make_decoy(x, y, train=True, seed=7)
    assert torch.equal(images, ref) and torch.equal(labels, y)
    assert torch.equal(info["mask"], ref_info["mask"])


def test_bad_inputs():
    x, y = synthetic(5)
    with pytest.raises(ValueError):
        make_decoy(x.float(), y, train=True, seed=0)
    with pytest.raises(ValueError):
        make_decoy(x, y[:4], train=True, seed=0)

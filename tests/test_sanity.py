"""Sanity checks (chapter 8): ranks and Spearman against scipy, cascading randomisation on a tiny
GAP-head model (the logits layer changes the maps; an identity "randomisation" changes nothing)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from batchcam.sanity import (
    cascading_randomization,
    compare_maps,
    randomization_layers,
    rank_average,
    reinitialize,
    spearman,
    ssim,
)

stats = pytest.importorskip("scipy.stats")


class TinyGAP(nn.Module):
    """conv → BN → ReLU → conv → ReLU (``features``, the Grad-CAM layer) → GAP → linear."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))
        with torch.no_grad():  # "trained" BatchNorm statistics, so that a reset is visible
            self.stem[1].running_mean.uniform_(-0.5, 0.5)
            self.stem[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def images(n=12, size=16):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def test_rank_average_and_spearman_equal_scipy():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 40), generator=g).double()  # many ties
    b = a + torch.rand(6, 40, generator=g, dtype=torch.float64) * 3
    for i in range(6):
        np.testing.assert_allclose(rank_average(a)[i].numpy(), stats.rankdata(a[i].numpy()))
        ref = stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic
        assert spearman(a, b)[i].item() == pytest.approx(ref, abs=1e-12)
    maps = torch.rand(3, 5, 5, generator=g)  # [N, H, W] maps are flattened per image
    ref = [stats.spearmanr(m.flatten(), m.flip(-1).flatten()).statistic for m in maps]
    np.testing.assert_allclose(spearman(maps, maps.flip(-1)).numpy(), ref, atol=1e-12)
    const = torch.zeros(1, 40, dtype=torch.float64)
    assert torch.isnan(spearman(const, b[:1])).all()  # scipy: nan as well


def test_compare_maps_identity_and_shapes():
    m = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(2))
    out = compare_maps(m, m)
    torch.testing.assert_close(out["spearman"], torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(out["ssim"], torch.ones(4))
    assert (ssim(m, 1 - m) < 0.5).all()
    with pytest.raises(ValueError):
        compare_maps(m, m[:3])


def test_default_layers_are_parametrised_modules_logits_first():
    assert randomization_layers(TinyGAP()) == ["head.2", "features.0", "stem.1", "stem.0"]


def test_reinitialize_resets_batchnorm_statistics():
    bn = TinyGAP().stem[1]
    reinitialize(bn)
    assert torch.equal(bn.running_mean, torch.zeros(8))
    assert torch.equal(bn.running_var, torch.ones(8))
    assert torch.equal(bn.weight.data, torch.ones(8))


def test_identity_randomisation_gives_correlation_one():
    rows = cascading_randomization(TinyGAP(), images(), "features", reinit=lambda m: None)
    assert [r["stage"] for r in rows] == [0, 1, 2, 3, 4]
    for r in rows:
        assert r["spearman_mean"] == pytest.approx(1.0) and r["ssim_mean"] == pytest.approx(1.0)
        assert r["undefined"] == 0


def test_randomising_the_logits_layer_changes_the_maps():
    model = TinyGAP()
    before = copy.deepcopy(model.state_dict())
    state = torch.random.get_rng_state()
    rows = cascading_randomization(model, images(), "features", seed=3, keep_maps=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    assert rows[0]["layer"] is None and rows[0]["spearman_mean"] == pytest.approx(1.0)
    assert rows[1]["layer"] == "head.2"
    assert rows[1]["spearman_mean"] < 0.7 and rows[1]["ssim_mean"] < 0.9
    again = cascading_randomization(model, images(), "features", seed=3, keep_maps=True)
    for a, b in zip(rows, again):  # seeded: reproducible
        assert torch.equal(a["maps"], b["maps"])
    other = cascading_randomization(model, images(), "features", seed=4, layers=["head.2"])
    assert other[1]["spearman_mean"] != pytest.approx(rows[1]["spearman_mean"])

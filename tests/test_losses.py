"""Losses and metrics against values computed by hand (plain Python / NumPy, independent of the package)."""

import math

import numpy as np
import pytest
import torch

import batchcam as bc


def _l1(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).mean())


def _l2(a, b):
    return float(((np.asarray(a) - np.asarray(b)) ** 2).mean())


def _ssim_ref(a, b, k=11, sigma=1.5, c1=0.01 ** 2, c2=0.03 ** 2):
    """SSIM with an 11×11 Gaussian window (σ = 1.5), images reflect-padded by 5 px and the map averaged over
    every pixel — torchmetrics' definition; variances clamped at 0."""
    pad = (k - 1) // 2
    a, b = np.pad(np.asarray(a, float), pad, mode="reflect"), np.pad(np.asarray(b, float), pad, mode="reflect")
    g = np.exp(-((np.arange(k) - (k - 1) / 2) ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for i in range(a.shape[0] - k + 1):
        for j in range(a.shape[1] - k + 1):
            pa, pb = a[i:i + k, j:j + k], b[i:i + k, j:j + k]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = max((w * pa * pa).sum() - ma ** 2, 0), max((w * pb * pb).sum() - mb ** 2, 0)
            cov = (w * pa * pb).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


REFS = {"l1": _l1, "l2": _l2, "ssim": lambda a, b: 1 - _ssim_ref(a, b)}


def _maps(b, size, seed):
    return torch.rand(b, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_l1_l2_on_2x2_by_hand():
    r = torch.tensor([[[0.0, 1.0], [0.5, 0.5]], [[1.0, 1.0], [0.0, 0.0]], [[0.2, 0.4], [0.6, 0.8]]])
    p = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    t = torch.tensor([0, 1, 0])
    # L1: |r0-p0| = (0+1+.5+.5)/4 = .5 ; |r1-p1| = (0+0+1+1)/4 = .5 ; |r2-p0| = (.2+.4+.6+.8)/4 = .5
    assert bc.prototype_loss(r, p, t, "l1").item() == pytest.approx(0.5)
    # L2: (0+1+.25+.25)/4 = .375 ; (0+0+1+1)/4 = .5 ; (.04+.16+.36+.64)/4 = .3 → mean .391666…
    assert bc.prototype_loss(r, p, t, "l2").item() == pytest.approx((0.375 + 0.5 + 0.3) / 3)
    # Batch-CAM: class 1 is a singleton (0); class 0 mean = [[.1,.7],[.55,.65]]
    m = np.array([[0.1, 0.7], [0.55, 0.65]])
    want = (_l1(r[0], m) + _l1(r[2], m) + 0.0) / 3
    assert bc.batchcam_loss(r, t, "l1").item() == pytest.approx(want)
    assert want == pytest.approx((0.1 + 0.3 + 0.05 + 0.15 + 0.1 + 0.3 + 0.05 + 0.15) / 4 / 3)


@pytest.mark.parametrize("kind", ["l1", "l2", "ssim"])
@pytest.mark.parametrize("targets", [[0, 1, 0, 2], [0, 0, 1, 1], [0, 1, 2, 3]])
def test_losses_match_reference(kind, targets):
    size = 12 if kind == "ssim" else 5
    r, t = _maps(4, size, 1), torch.tensor(targets)
    protos = _maps(4, size, 2).unsqueeze(1)
    ref = REFS[kind]
    want_p = np.mean([ref(r[b], protos[targets[b], 0]) for b in range(4)])
    assert bc.prototype_loss(r, protos, t, kind).item() == pytest.approx(want_p, rel=1e-6, abs=1e-9)
    terms = []
    for b in range(4):
        same = [i for i in range(4) if targets[i] == targets[b]]
        terms.append(0.0 if len(same) == 1 else ref(r[b], torch.stack([r[i] for i in same]).mean(0)))
    assert bc.batchcam_loss(r, t, kind).item() == pytest.approx(np.mean(terms), rel=1e-6, abs=1e-9)


def test_all_singletons_give_zero_and_accept_4d():
    r = _maps(3, 6, 3)
    assert bc.batchcam_loss(r.unsqueeze(1), torch.tensor([0, 1, 2])).item() == 0.0


def test_batchcam_loss_stops_gradient_through_class_mean():
    r = _maps(3, 4, 4).requires_grad_(True)
    t = torch.tensor([0, 0, 1])
    bc.batchcam_loss(r, t, "l2").backward()
    m = r.detach()[:2].mean(0)
    want = torch.stack([2 * (r[0] - m), 2 * (r[1] - m), torch.zeros(4, 4)]).detach() / (3 * 16)
    assert torch.allclose(r.grad, want)


def test_ssim_identical_is_zero_distance():
    r = _maps(2, 16, 5)
    assert torch.allclose(bc.distance(r, r, "ssim"), torch.zeros(2, dtype=r.dtype), atol=1e-7)


def test_loss_errors():
    r, p = _maps(3, 4, 0), _maps(2, 4, 1).unsqueeze(1)
    with pytest.raises(ValueError, match=r"Valid distances: 'l1', 'l2', 'ssim'"):
        bc.prototype_loss(r, p, torch.tensor([0, 1, 0]), "cosine")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bc.prototype_loss(r, p, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="3 maps"):
        bc.batchcam_loss(r, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_prototypes"):
        bc.prototype_loss(r, _maps(2, 5, 1).unsqueeze(1), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        bc.batchcam_loss(torch.rand(3, 2, 4, 4), torch.tensor([0, 1, 0]))


def test_class_prototypes_by_hand():
    imgs = torch.tensor([[[[0, 255]]], [[[255, 255]]], [[[51, 0]]]], dtype=torch.uint8)
    p = bc.class_prototypes(imgs, torch.tensor([0, 0, 1]), 2, normalize=None)
    assert torch.allclose(p, torch.tensor([[[[0.5, 1.0]]], [[[0.2, 0.0]]]]))
    pm = bc.class_prototypes(imgs, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(pm, torch.tensor([[[[0.5, 1.0]]], [[[1.0, 0.0]]]]))
    with pytest.raises(ValueError, match=r"classes \[2\] have no images"):
        bc.class_prototypes(imgs, torch.tensor([0, 0, 1]), 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        bc.class_prototypes(imgs, torch.tensor([0, 5, 1]), 2)


def test_prototype_resize_equals_mean_of_resized():
    imgs = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    a = bc.class_prototypes(imgs, y, 3, size=16, normalize=None)
    up = torch.nn.functional.interpolate(imgs.float() / 255, size=16, mode="bilinear", align_corners=False)
    b = bc.class_prototypes(up, y, 3, normalize=None)
    assert torch.allclose(a, b, atol=1e-6)


def test_reconstruction_quality_by_hand():
    r = _maps(4, 12, 6).float()
    protos = _maps(3, 12, 7).float().unsqueeze(1)
    t = torch.tensor([0, 2, 2, 1])
    q = bc.reconstruction_quality(r, protos, t)
    assert q["l1"] == pytest.approx(np.mean([_l1(r[b], protos[t[b], 0]) for b in range(4)]), rel=1e-5)
    assert q["l2"] == pytest.approx(np.mean([_l2(r[b], protos[t[b], 0]) for b in range(4)]), rel=1e-5)
    assert q["ssim"] == pytest.approx(np.mean([_ssim_ref(r[b], protos[t[b], 0]) for b in range(4)]), rel=1e-4)
    assert q["per_class"]["n"] == [1, 1, 2]
    assert q["per_class"]["l1"][2] == pytest.approx((_l1(r[1], protos[2, 0]) + _l1(r[2], protos[2, 0])) / 2,
                                                    rel=1e-5)
    meter = bc.ReconstructionMeter(protos)
    meter.update(r[:2], t[:2])
    meter.update(r[2:], t[2:])
    assert meter.compute()["l1"] == pytest.approx(q["l1"], rel=1e-6)
    avg = meter.average_reconstruction()
    assert torch.allclose(avg[2], (r[1] + r[2]) / 2) and math.isfinite(avg.sum().item())


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (2, 1, 112, 112), (3, 1, 11, 17)])
def test_ssim_distance_equals_torchmetrics_values_and_gradients(shape):
    """The fast separable SSIM (batchcam._ssim) against torchmetrics itself, forward and backward."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(7)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = torch.rand(shape, generator=g, dtype=torch.float64)
    a[0] = b[0] * 0.7 + 0.1  # one pair close to each other (SSIM near 1)
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    want = 1 - tm_ssim(a1, b, data_range=1.0, reduction="none")
    got = bc.distance(a2, b, "ssim")
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    w = torch.rand(shape[0], generator=g, dtype=torch.float64)
    (want * w).sum().backward()
    (got * w).sum().backward()
    assert torch.allclose(a2.grad, a1.grad, atol=1e-12, rtol=0)


def test_ssim_distance_gradgradcheck_float64():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 1, 12, 13, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.rand(2, 1, 12, 13, generator=g, dtype=torch.float64).requires_grad_()
    f = lambda x, y: bc.distance(x, y, "ssim")  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, b))
    assert torch.autograd.gradgradcheck(f, (a, b))


def test_ssim_distance_16bit_inputs_and_autocast_run_in_float32():
    r, p = _maps(2, 16, 8).float(), _maps(2, 16, 9).float()
    want = bc.distance(r, p, "ssim")
    got = bc.distance(r.bfloat16(), p.bfloat16(), "ssim")
    assert got.dtype == torch.float32
    assert torch.allclose(got, bc.distance(r.bfloat16().float(), p.bfloat16().float(), "ssim"), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = bc.distance(r, p, "ssim")
    assert inside.dtype == torch.float32 and torch.allclose(inside, want, atol=1e-6)


def test_ssim_distance_rejects_maps_smaller_than_window():
    with pytest.raises(ValueError, match=r"at least 11×11 pixels.*got 7×7.*l1 or l2"):
        bc.distance(_maps(2, 7, 0), _maps(2, 7, 1), "ssim")

"""THE objective, the two losses, the distances and the reconstruction metrics, each against a
reference written here by hand (explicit formulas, slow per-class loops, torchmetrics, NumPy).

Maps and prototypes are [N, H, W] everywhere.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

import batchcam as bc
import batchcam.losses as L
from batchcam.evaluate import evaluate
from batchcam.losses import OBJECTIVES, Objective, batchcam_loss, distance, objective_loss, prototype_loss
from batchcam.metrics import ReconstructionMeter, baseline_maps, reconstruction_quality

SIZE = 12  # ≥ 11: the SSIM window


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- reference formulas


def ref_d(a, b, kind):
    """d(a, b) for two maps [H, W], from the definition (SSIM: torchmetrics itself)."""
    if kind == "l1":
        return (a - b).abs().mean()
    if kind == "l2":
        return ((a - b) ** 2).mean()
    return 1 - tm_ssim(a[None, None], b[None, None].to(a.dtype), data_range=1.0)


def ref_proto(r, protos, y, kind):
    return torch.stack([ref_d(r[b], protos[y[b]], kind) for b in range(len(y))]).mean()


def ref_batchcam(r, y, kind, detach=True):
    """Slow loop: each sample against the mean map of its class in the batch (a constant when
    ``detach``); a class with one sample contributes 0; the mean is over all samples."""
    terms = []
    for b in range(len(y)):
        same = [i for i in range(len(y)) if y[i] == y[b]]
        if len(same) == 1:
            terms.append(r[b].sum() * 0)
            continue
        mean = torch.stack([r[i] for i in same]).mean(0)
        terms.append(ref_d(r[b], mean.detach() if detach else mean, kind))
    return torch.stack(terms).mean()


def ref_objective(model, x, y, protos, name, kind, lam_p, lam_b, layer="features"):
    """CE + λ_P·L_P + λ_B·L_B from batch_gradcam(create_graph=True) and the formulas above."""
    logits = model(x)
    total = F.cross_entropy(logits, y)
    terms = {"ce": total}
    if name != "ce":
        cam = bc.batch_gradcam(model, x, layer, y, create_graph=True)
        if "proto" in name:
            terms["proto"] = ref_proto(cam, protos, y, kind)
            total = total + lam_p * terms["proto"]
        if "batchcam" in name:
            terms["batchcam"] = ref_batchcam(cam, y, kind)
            total = total + lam_b * terms["batchcam"]
    terms["total"] = total
    return terms


def _grads(model, loss):
    params = [p for p in model.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True)


# --------------------------------------------------------------------------- the objective


@pytest.mark.parametrize("kind", ["l1", "l2", "ssim"])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_loss_equals_the_hand_written_objective(TinyNet, name, kind):
    """Values and parameter gradients; λ_P ≠ λ_B, so swapping them would fail."""
    torch.manual_seed(0)
    model = TinyNet(num_classes=4).double().train()
    x = _rand(8, 1, SIZE, SIZE, seed=1)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])  # class 2 is a singleton
    protos = _rand(4, SIZE, SIZE, seed=2)
    lam_p, lam_b = 0.7, 1.9
    objective = Objective.from_name(name, kind, lam_p, lam_b, num_classes=4)

    got, logits = objective_loss(objective, model, x, y, layer="features", prototypes=protos)
    want = ref_objective(model, x, y, protos, name, kind, lam_p, lam_b)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].double(), want[k], rtol=2e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(logits.double(), model(x), rtol=1e-5, atol=1e-6)
    assert logits.dtype == torch.float32
    for g_got, g_want in zip(_grads(model, got["total"]), _grads(model, want["total"])):
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-7)


def test_lambdas_are_data_and_weigh_their_own_term(TinyNet):
    torch.manual_seed(0)
    model = TinyNet(num_classes=4).double().train()
    x, y, protos = _rand(6, 1, SIZE, SIZE, seed=3), torch.tensor([0, 0, 1, 1, 2, 2]), _rand(4, SIZE, SIZE, seed=4)
    base, _ = objective_loss(Objective.from_name("ce+proto+batchcam", num_classes=4), model, x, y,
                             layer="features", prototypes=protos)
    assert abs(base["proto"].item() - base["batchcam"].item()) > 1e-3  # else a swap could not be seen
    for lam_p, lam_b in ((0.25, 3.0), (3.0, 0.25), (0.0, 2.0)):
        spec = Objective(weights=(("proto", lam_p), ("batchcam", lam_b)), num_classes=4)
        assert spec == Objective.from_name("ce+proto+batchcam", "l1", lam_p, lam_b, num_classes=4)
        terms, _ = objective_loss(spec, model, x, y, layer="features", prototypes=protos)
        want = base["ce"] + lam_p * base["proto"] + lam_b * base["batchcam"]
        torch.testing.assert_close(terms["total"], want, rtol=1e-6, atol=1e-7)
    only_b = Objective(weights=(("batchcam", 0.5),), num_classes=4)
    assert only_b.name == "ce+batchcam" and only_b.needs_cam
    terms, _ = objective_loss(only_b, model, x, y, layer="features", prototypes=None)
    assert set(terms) == {"ce", "batchcam", "total"}
    torch.testing.assert_close(terms["total"], base["ce"] + 0.5 * base["batchcam"], rtol=1e-6, atol=1e-7)


def test_ce_objective_runs_no_gradcam(TinyNet, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the ce objective must not compute Grad-CAM maps")

    monkeypatch.setattr(L, "batch_gradcam_with_logits", boom)
    model = TinyNet().train()
    spec = Objective.from_name("ce")
    assert spec.name == "ce" and not spec.needs_cam and spec.weights == ()
    terms, logits = objective_loss(spec, model, torch.rand(4, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3]),
                                   layer="features")
    assert set(terms) == {"ce", "total"} and logits.shape == (4, 10)
    assert terms["total"] is terms["ce"]


def test_objective_from_name_rejects_unknown_values():
    with pytest.raises(ValueError, match=r"unknown objective 'ce\+protos'.*Did you mean 'ce\+proto'"):
        Objective.from_name("ce+protos")
    with pytest.raises(ValueError, match=r"unknown distance 'l3'.*'l1', 'l2', 'ssim'"):
        Objective.from_name("ce", "l3")
    assert [Objective.from_name(n).name for n in OBJECTIVES] == list(OBJECTIVES)


# --------------------------------------------------------------------------- the two losses


@pytest.mark.parametrize("kind", ["l1", "l2", "ssim"])
@pytest.mark.parametrize("targets", [[0, 1, 0, 2, 2, 2], [0, 0, 1, 1, 3, 3], [0, 1, 2, 3, 4, 5], [5, 5, 5, 5, 5, 5]])
def test_batchcam_loss_equals_a_slow_per_class_loop(kind, targets):
    r, y = _rand(6, SIZE, SIZE, seed=5), torch.tensor(targets)
    want = ref_batchcam(r, y, kind)
    got = batchcam_loss(r, y, kind)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(batchcam_loss(r, y, kind, num_classes=10), got, rtol=0, atol=0)
    if len(set(targets)) == len(targets):
        assert got.item() == 0.0  # all singletons


def test_prototype_loss_equals_the_formula():
    r, protos, y = _rand(5, SIZE, SIZE, seed=6), _rand(3, SIZE, SIZE, seed=7), torch.tensor([2, 0, 2, 1, 0])
    for kind in ("l1", "l2", "ssim"):
        torch.testing.assert_close(prototype_loss(r, protos, y, kind), ref_proto(r, protos, y, kind),
                                   rtol=1e-6, atol=1e-9)


def test_singleton_classes_contribute_zero():
    r, y = _rand(5, SIZE, SIZE, seed=8), torch.tensor([0, 0, 1, 2, 3])
    pair_only = ((r[0] - r[1]).abs().mean() / 2 * 2) / 5  # both members of class 0 are |r0 - r1| / 2 away
    torch.testing.assert_close(batchcam_loss(r, y, "l1"), pair_only)
    # moving a singleton's map changes nothing
    r2 = r.clone()
    r2[3] = 1 - r2[3]
    torch.testing.assert_close(batchcam_loss(r2, y, "l1"), batchcam_loss(r, y, "l1"), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["l1", "l2", "ssim"])
def test_batchcam_loss_stops_the_gradient_at_the_class_mean(kind):
    base, y = _rand(6, SIZE, SIZE, seed=9), torch.tensor([0, 0, 0, 1, 1, 2])
    r = base.clone().requires_grad_()
    batchcam_loss(r, y, kind).backward()
    detached = base.clone().requires_grad_()
    ref_batchcam(detached, y, kind, detach=True).backward()
    torch.testing.assert_close(r.grad, detached.grad, rtol=1e-6, atol=1e-10)
    through = base.clone().requires_grad_()
    ref_batchcam(through, y, kind, detach=False).backward()
    if kind != "l2":  # for L2 the two coincide: Σ_b (R_b − R̄) = 0 cancels the mean's gradient
        assert not torch.allclose(r.grad, through.grad, atol=1e-8)  # the check can tell them apart
    assert r.grad[5].abs().max() == 0  # the singleton gets no gradient


def test_reduce_hook_gets_sums_and_counts_and_gives_global_class_means():
    """DDP: the hook sums the per-class sums [C, H, W] and counts [C] over processes; here it adds
    a second process's batch by hand, and the loss must use the global class means."""
    r, y = _rand(4, SIZE, SIZE, seed=10), torch.tensor([0, 1, 1, 2])
    other, y_other = _rand(3, SIZE, SIZE, seed=11), torch.tensor([0, 0, 3])
    calls = []

    def reduce(sums, counts):
        calls.append((sums.clone(), counts.clone()))
        sums.index_add_(0, y_other, other)
        counts.index_add_(0, y_other, torch.ones(3, dtype=counts.dtype))

    got = batchcam_loss(r, y, "l2", num_classes=5, reduce=reduce)
    (sums, counts), = calls
    assert sums.shape == (5, SIZE, SIZE) and counts.shape == (5,)
    torch.testing.assert_close(counts, torch.tensor([1.0, 2, 1, 0, 0], dtype=counts.dtype))
    torch.testing.assert_close(sums[1], r[1] + r[2])
    torch.testing.assert_close(sums[0], r[0])
    # global batch: class 0 = {r0, other0, other1}, class 1 = {r1, r2}, class 2 = {r3} (singleton)
    m0, m1 = (r[0] + other[0] + other[1]) / 3, (r[1] + r[2]) / 2
    want = (ref_d(r[0], m0, "l2") + ref_d(r[1], m1, "l2") + ref_d(r[2], m1, "l2") + 0) / 4
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


def test_empty_batch_gives_zero_not_nan():
    empty, y = torch.zeros(0, SIZE, SIZE, requires_grad=True), torch.zeros(0, dtype=torch.long)
    for kind in ("l1", "l2", "ssim"):
        p = prototype_loss(empty, torch.rand(10, SIZE, SIZE), y, kind)
        b = batchcam_loss(empty, y, kind)
        b2 = batchcam_loss(empty, y, kind, num_classes=10)
        for loss in (p, b, b2):
            assert loss.dim() == 0 and loss.item() == 0.0
        (p + b).backward()
        assert torch.isfinite(empty.grad).all()


# --------------------------------------------------------------------------- distances


def test_l1_and_l2_by_hand():
    a = torch.tensor([[[0.0, 1.0], [0.5, 0.5]], [[0.2, 0.4], [0.6, 0.8]]])
    b = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # |a0 - b0| = (0 + 1 + .5 + .5) / 4 = .5 ; |a1 - b1| = (.8 + .6 + .4 + .2) / 4 = .5
    torch.testing.assert_close(distance(a, b, "l1"), torch.tensor([0.5, 0.5]))
    # (0 + 1 + .25 + .25) / 4 = .375 ; (.64 + .36 + .16 + .04) / 4 = .3
    torch.testing.assert_close(distance(a, b, "l2"), torch.tensor([0.375, 0.3]))
    with pytest.raises(ValueError, match=r"unknown distance 'cosine'.*'l1', 'l2', 'ssim'"):
        distance(a, b, "cosine")


@pytest.mark.parametrize("shape", [(4, 28, 28), (2, 11, 17), (3, 112, 112)])
@pytest.mark.parametrize("b_grad", [False, True])
def test_ssim_distance_equals_torchmetrics_values_and_gradients(shape, b_grad):
    g = torch.Generator().manual_seed(7)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = torch.rand(shape, generator=g, dtype=torch.float64)
    a[0] = 0.7 * b[0] + 0.1  # one close pair (SSIM near 1)
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    b1, b2 = b.clone().requires_grad_(b_grad), b.clone().requires_grad_(b_grad)
    want = 1 - tm_ssim(a1[:, None], b1[:, None], data_range=1.0, reduction="none")
    got = distance(a2, b2, "ssim")
    assert got.shape == (shape[0],)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    w = torch.rand(shape[0], generator=g, dtype=torch.float64)
    (want * w).sum().backward()
    (got * w).sum().backward()
    torch.testing.assert_close(a2.grad, a1.grad, rtol=0, atol=1e-12)
    if b_grad:
        torch.testing.assert_close(b2.grad, b1.grad, rtol=0, atol=1e-12)


def test_ssim_distance_of_identical_maps_is_zero_and_small_maps_are_refused():
    r = _rand(2, 16, 16, seed=12)
    torch.testing.assert_close(distance(r, r, "ssim"), torch.zeros(2, dtype=r.dtype), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"at least 11×11 pixels.*got 10×10"):
        distance(_rand(2, 10, 10), _rand(2, 10, 10), "ssim")


# --------------------------------------------------------------------------- prototypes


def test_class_prototypes_are_c_h_w_by_hand():
    imgs = torch.tensor([[[[0, 255]]], [[[255, 255]]], [[[51, 0]]]], dtype=torch.uint8)
    p = bc.class_prototypes(imgs, torch.tensor([0, 0, 1]), 2, normalize=None)
    assert p.shape == (2, 1, 2)
    torch.testing.assert_close(p, torch.tensor([[[0.5, 1.0]], [[0.2, 0.0]]]))
    torch.testing.assert_close(bc.class_prototypes(imgs, torch.tensor([0, 0, 1]), 2),
                               torch.tensor([[[0.5, 1.0]], [[1.0, 0.0]]]))
    with pytest.raises(ValueError, match=r"classes \[2\] have no images"):
        bc.class_prototypes(imgs, torch.tensor([0, 0, 1]), 3)


def test_class_prototypes_refuse_float_labels_and_0_255_floats():
    imgs = torch.tensor([[[[0, 255]]], [[[255, 255]]], [[[51, 0]]]], dtype=torch.uint8)
    with pytest.raises(TypeError, match="integer class indices"):
        bc.class_prototypes(imgs, torch.tensor([0.0, 0.7, 1.0]), 2)  # was truncated to [0, 0, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bc.class_prototypes(imgs.float(), torch.tensor([0, 0, 1]), 2)  # was clamped to 1 silently


# --------------------------------------------------------------------------- reconstruction metrics


def _corr(a, b):
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return 0.0 if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])


def test_reconstruction_meter_equals_a_slow_loop():
    n, c = 10, 3
    maps = _rand(n, SIZE, SIZE, seed=13, dtype=torch.float32)
    maps[2] = 0
    maps[7] = 0  # two dead maps
    images = _rand(n, SIZE, SIZE, seed=14, dtype=torch.float32)
    protos = _rand(c, SIZE, SIZE, seed=15, dtype=torch.float32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    dead = maps.flatten(1).amax(1) <= 0
    meter = ReconstructionMeter(protos)
    meter.update(maps[:6], y[:6], images[:6], dead[:6])
    meter.update(maps[6:], y[6:], images[6:], dead[6:])
    got = meter.compute()

    m, im, p = maps.double().numpy(), images.double().numpy(), protos.double().numpy()
    t = y.tolist()
    l1 = [np.abs(m[b] - p[t[b]]).mean() for b in range(n)]
    l2 = [((m[b] - p[t[b]]) ** 2).mean() for b in range(n)]
    ssim = [tm_ssim(maps[b][None, None], protos[t[b]][None, None], data_range=1.0).item() for b in range(n)]
    corr_img = [_corr(m[b], im[b]) for b in range(n)]
    corr_p = [_corr(m[b], p[t[b]]) for b in range(n)]
    mean_map = {k: m[[b for b in range(n) if t[b] == k]].mean(0) for k in range(c)}
    disp = [((m[b] - mean_map[t[b]]) ** 2).mean() for b in range(n)]
    assert got["l1"] == pytest.approx(np.mean(l1), rel=1e-6)
    assert got["l2"] == pytest.approx(np.mean(l2), rel=1e-6)
    assert got["ssim"] == pytest.approx(np.mean(ssim), rel=1e-5)
    assert got["dead_fraction"] == pytest.approx(0.2)
    assert got["dispersion"] == pytest.approx(np.mean(disp), rel=1e-5)
    assert got["corr_image"] == pytest.approx(np.mean(corr_img), rel=1e-5, abs=1e-7)
    assert got["corr_prototype"] == pytest.approx(np.mean(corr_p), rel=1e-5, abs=1e-7)
    pc = got["per_class"]
    assert pc["n"] == [4, 3, 3]
    for k in range(c):
        members = [b for b in range(n) if t[b] == k]
        assert pc["l1"][k] == pytest.approx(np.mean([l1[b] for b in members]), rel=1e-6)
        assert pc["dispersion"][k] == pytest.approx(np.mean([disp[b] for b in members]), rel=1e-5)
        assert pc["dead_fraction"][k] == pytest.approx(np.mean([bool(dead[b]) for b in members]))
    torch.testing.assert_close(meter.average_reconstruction().double(),
                               torch.from_numpy(np.stack([mean_map[k] for k in range(c)])), rtol=1e-6, atol=1e-7)
    one_shot = reconstruction_quality(maps, protos, y, images)
    assert one_shot["l1"] == pytest.approx(got["l1"], rel=1e-9) and one_shot["dead_fraction"] == pytest.approx(0.2)


def test_baselines_through_evaluate(TinyNet, synthetic):
    """The blank map is dead everywhere and its L1 is the mean of each sample's class prototype;
    the input baseline is the image divided by its max."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    images, labels = synthetic(30, 3)
    protos = bc.class_prototypes(images, labels, 10)
    out = evaluate(model, images, labels, protos, layer="features", batch_size=8)
    blank, inp = out["baselines"]["blank"], out["baselines"]["input"]
    assert blank["dead_fraction"] == 1.0
    assert blank["l1"] == pytest.approx(np.mean([protos[t].mean().item() for t in labels.tolist()]), rel=1e-6)
    assert blank["l2"] == pytest.approx(np.mean([protos[t].pow(2).mean().item() for t in labels.tolist()]), rel=1e-6)
    x = images[:, 0].float() / 255
    x = x / x.flatten(1).amax(1).view(-1, 1, 1)
    assert inp["l1"] == pytest.approx(np.mean([(x[b] - protos[t]).abs().mean().item()
                                               for b, t in enumerate(labels.tolist())]), rel=1e-5)
    assert inp["dead_fraction"] == 0.0
    torch.testing.assert_close(baseline_maps("input", x), x)
    assert out["samples"] == 30 and 0 <= out["accuracy"] <= 1
    assert out["average_reconstruction"].shape == (10, 28, 28)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_maps("noise", x)

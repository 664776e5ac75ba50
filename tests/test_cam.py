import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import batchcam as bc
from batchcam.cam import resolve_layer

from _tiny import TinyCNN, no_hooks_left

SIZES = {"simplecnn": 28, "resnet18": 28, "convnextv2_tiny": 64}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: bc.create_model(name).eval() for name in bc.list_models()}


def _x(b, size, seed=0):
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("explicit", [True, False])
def test_batch_equals_loop(models, name, b, explicit):
    model, x = models[name], _x(b, SIZES[name], seed=b)
    targets = torch.arange(b) % 10 if explicit else None
    layer = bc.default_target_layer(model)
    fast = bc.batch_gradcam(model, x, layer, targets)
    ref = bc.gradcam_loop(model, x, layer, targets)
    assert fast.shape == (b, SIZES[name], SIZES[name])
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()
    assert no_hooks_left(model)


@pytest.mark.parametrize("name", list(SIZES))
def test_equals_captum(models, name):
    from captum.attr import LayerAttribution, LayerGradCam

    model, x = models[name], _x(3, SIZES[name], seed=7)
    layer, _ = resolve_layer(model, bc.default_target_layer(model))
    targets = torch.tensor([1, 4, 9])
    attr = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    attr = LayerAttribution.interpolate(attr, x.shape[-2:], interpolate_mode="bilinear")
    ref = bc.normalize_cam(attr[:, 0].detach(), "max")
    ours = bc.batch_gradcam(model, x, layer, targets)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_none_targets_use_argmax(models):
    model, x = models["simplecnn"], _x(5, 28)
    pred = model(x).argmax(1)
    assert torch.equal(bc.batch_gradcam(model, x, "features"), bc.batch_gradcam(model, x, "features", pred))


def test_int_target_and_normalisations(models):
    model, x = models["simplecnn"], _x(4, 28)
    raw = bc.batch_gradcam(model, x, "features", 3, normalize=None)
    mx = bc.batch_gradcam(model, x, "features", 3, normalize="max")
    mm = bc.batch_gradcam(model, x, "features", 3, normalize="minmax")
    assert (raw >= 0).all()
    for m in (mx, mm):
        assert m.min() >= 0 and m.max() <= 1 + 1e-6
    assert torch.allclose(mx, raw / raw.flatten(1).amax(1).view(-1, 1, 1))
    assert torch.allclose(mm.flatten(1).amin(1), torch.zeros(4), atol=1e-6)


def _tiny_fn(model, targets):
    names = [n for n, _ in model.named_parameters()]

    class Wrapped(nn.Module):
        def __init__(self, params):
            super().__init__()
            self.model, self.params = model, params

        def forward(self, x):
            return functional_call(self.model, self.params, (x,))

    def f(x, *params):
        wrapped = Wrapped(dict(zip(names, params)))
        return bc.batch_gradcam(wrapped, x, "model.features", targets, create_graph=True)

    return f, [p.detach().clone().requires_grad_(True) for p in model.parameters()]


def test_gradcheck_and_gradgradcheck_float64():
    torch.manual_seed(0)
    model = TinyCNN().double()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    f, params = _tiny_fn(model, torch.tensor([0, 3]))
    inputs = (x, params[2], params[4])  # the input, the target conv's weight, the linear weight
    g = lambda x, w_feat, w_lin: f(x, params[0], params[1], w_feat, params[3], w_lin, params[5])  # noqa: E731
    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(g, inputs, eps=1e-6, atol=1e-5)


def test_cam_loss_reaches_weights_before_target_layer(models):
    model = bc.create_model("simplecnn").train()
    x = _x(6, 28)
    cam = bc.batch_gradcam(model, x, "features", torch.arange(6), create_graph=True)
    assert cam.requires_grad
    grads = torch.autograd.grad(cam.square().mean(), [model.features[0].weight, model.head[-1].weight])
    assert all(g.abs().sum() > 0 for g in grads)  # conv before the layer, and the head via α (double backprop)


def test_no_graph_without_create_graph(models):
    model = models["simplecnn"]
    cam, logits = bc.batch_gradcam_with_logits(model, _x(2, 28), "features")
    assert not cam.requires_grad and cam.grad_fn is None and not logits.requires_grad


def test_train_mode_batchnorm_after_layer_raises_and_differs():
    torch.manual_seed(0)
    model = bc.create_model("simplecnn").train()
    x, t = _x(8, 28), torch.arange(8)
    with pytest.raises(bc.SampleMixingError, match="allow_batch_mixing"):
        bc.batch_gradcam(model, x, "features.0", t)
    assert no_hooks_left(model)
    mixed = bc.batch_gradcam(model, x, "features.0", t, allow_batch_mixing=True)
    per_sample = bc.gradcam_loop(model, x, "features.0", t)  # one backward per sample: the true gradients
    diff = (mixed - per_sample).abs().max().item()
    assert diff > 1e-3, diff
    # the default layer is after every BatchNorm: batch and loop agree in train mode too
    model.eval()  # freeze running stats so both calls see the same normalisation
    assert torch.allclose(bc.batch_gradcam(model, x, "features.0", t), bc.gradcam_loop(model, x, "features.0", t),
                          atol=1e-5)


def test_train_mode_default_layer_is_allowed():
    model = bc.create_model("simplecnn").train()
    cam = bc.batch_gradcam(model, _x(4, 28), "features", torch.arange(4), create_graph=True)
    assert torch.isfinite(cam).all()


def test_blank_image_and_zero_cam_give_zeros():
    model = TinyCNN(bias=False).double().eval()  # no bias: a blank image gives all-zero activations
    x = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    for norm in ("max", "minmax"):
        cam = bc.batch_gradcam(model, x, "features", [0, 1], normalize=norm)
        assert torch.equal(cam, torch.zeros_like(cam))
    cam = bc.batch_gradcam(model.train(), x, "features", [0, 1], create_graph=True)
    (g,) = torch.autograd.grad(cam.sum() + 0 * sum(p.sum() for p in model.parameters()), model.head[2].weight,
                               allow_unused=True)
    assert g is None or torch.isfinite(g).all()
    assert torch.equal(bc.normalize_cam(torch.zeros(3, 4, 4)), torch.zeros(3, 4, 4))
    sc = bc.create_model("simplecnn").eval()
    out = bc.batch_gradcam(sc, torch.zeros(2, 1, 28, 28), "features")
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_frozen_backbone_still_works(models):
    model = bc.create_model("simplecnn").eval().requires_grad_(False)
    cam = bc.batch_gradcam(model, _x(2, 28), "features", [1, 2], normalize=None)
    assert cam.shape == (2, 28, 28) and torch.isfinite(cam).all()


def test_bad_inputs(models):
    model = models["simplecnn"]
    x = _x(3, 28)
    with pytest.raises(ValueError, match=r"unknown layer 'featurs'.*features"):
        bc.batch_gradcam(model, x, "featurs")
    with pytest.raises(ValueError, match="4-D feature map"):
        bc.batch_gradcam(model, x, "head")
    with pytest.raises(ValueError, match="3 samples"):
        bc.batch_gradcam(model, x, "features", [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        bc.batch_gradcam(model, x, "features", [0, 1, 10])
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        bc.batch_gradcam(model, x, "features", [0, -1, 2])
    with pytest.raises(TypeError, match="integer"):
        bc.batch_gradcam(model, x, "features", torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="4-D"):
        bc.batch_gradcam(model, x[0], "features")
    with pytest.raises(ValueError, match="normalize"):
        bc.batch_gradcam(model, x, "features", normalize="l2")
    for fn in (bc.batch_gradcam, bc.gradcam_loop):
        with pytest.raises(ValueError, match="unknown layer"):
            fn(model, x, "layer4")
    assert no_hooks_left(model)


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_released_after_exception():
    model = bc.create_model("simplecnn").eval()
    model.head.insert(0, _Boom())  # raises after the target layer has run
    for fn in (bc.batch_gradcam, bc.gradcam_loop):
        with pytest.raises(RuntimeError, match="boom"):
            fn(model, _x(2, 28), "features")
        assert no_hooks_left(model)
        assert torch.is_grad_enabled()
    with pytest.raises(RuntimeError):  # wrong channel count: fails before the target layer
        bc.batch_gradcam(model, _x(2, 28).repeat(1, 3, 1, 1), "features")
    assert no_hooks_left(model) and torch.is_grad_enabled()


def test_grad_mode_restored_under_no_grad(models):
    with torch.no_grad():
        cam = bc.batch_gradcam(models["simplecnn"], _x(2, 28), "features")
        assert not torch.is_grad_enabled()
    assert torch.isfinite(cam).all()


def test_inplace_after_layer_detected():
    model = TinyCNN()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
    with pytest.raises(RuntimeError, match="in place"):
        bc.batch_gradcam(model.eval(), torch.rand(2, 1, 6, 6), "features.0", create_graph=True)


def test_loop_frees_its_graph_without_gc():
    """gradcam_loop's hooks once formed a reference cycle that kept every forward graph alive."""
    import weakref

    model = bc.create_model("simplecnn").eval()
    refs = []
    handle = model.features.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
    try:
        bc.gradcam_loop(model, _x(4, 28), "features")
    finally:
        handle.remove()
    assert refs and all(r() is None for r in refs)

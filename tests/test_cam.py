import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny import TinyCNN, no_hooks_left
from torch import nn
from torch.func import functional_call

import batchcam as bc
import batchcam.cam as cam_module
from batchcam.cam import (
    SampleMixingError,
    batch_gradcam,
    batch_gradcam_with_logits,
    gradcam_loop,
    normalize_cam,
    resolve_layer,
)

SIZES = {"simplecnn": 28, "resnet18": 28, "convnextv2_tiny": 64}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small batches run faster on one thread


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: bc.create_model(name).eval() for name in bc.list_models()}


def _x(b, size, seed=0, chans=1):
    return torch.rand(b, chans, size, size, generator=torch.Generator().manual_seed(seed))


def _net(before=None, after=None, classes=5, seed=0):
    """conv → [before] → ReLU → conv (target ``"conv"``) → [after] → ReLU → GAP → linear; 1 input channel."""
    torch.manual_seed(seed)
    parts = [("stem", nn.Conv2d(1, 4, 3, padding=1)), ("before", before or nn.Identity()), ("act0", nn.ReLU()),
             ("conv", nn.Conv2d(4, 6, 3, padding=1)), ("after", after or nn.Identity()), ("act", nn.ReLU()),
             ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(6, classes))]
    return nn.Sequential(OrderedDict(parts))


# --- equality with the loop and with independent implementations ------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("explicit", [True, False])
def test_batch_equals_loop(models, name, b, explicit):
    model, x = models[name], _x(b, SIZES[name], seed=b)
    targets = torch.arange(b) % 10 if explicit else None
    layer = bc.default_target_layer(model)
    fast = batch_gradcam(model, x, layer, targets)
    ref = gradcam_loop(model, x, layer, targets)
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
    ref = normalize_cam(attr[:, 0].detach(), "max")
    ours = batch_gradcam(model, x, layer, targets)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def _pytorch_grad_cam(model, layer, x, targets):
    """pytorch-grad-cam's raw map (its weighting and channel sum), upsampled and max-normalised like ours.

    Its forward hook keeps ``output.cpu().detach()``, which on the CPU shares storage with the output, so an
    in-place op after the layer would change its copy too: the reshape_transform clones it first.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[layer], reshape_transform=lambda a: a.clone()) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        store = cam.activations_and_grads
        raw = cam.get_cam_image(x, layer, None, store.activations[0].numpy(), store.gradients[0].numpy())
    raw = F.relu(torch.from_numpy(raw))[:, None]
    return normalize_cam(F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0])


# --- row 1: in-place operations after the target layer, frozen models ----------------------------------------------


def _vgg11_bn_features():
    """vgg11_bn's ``features`` (``features.26`` is a BatchNorm followed by ReLU(inplace=True)) with a small head:
    the full torchvision classifier has 120 M parameters and only slows the test down."""
    from torchvision.models.vgg import cfgs, make_layers

    return nn.Sequential(OrderedDict(features=make_layers(cfgs["A"], batch_norm=True), pool=nn.AdaptiveAvgPool2d(1),
                                     flat=nn.Flatten(), fc=nn.Linear(512, 5)))


def _torchvision(name):
    from torchvision import models as tvm

    return {"resnet18": lambda: tvm.resnet18(weights=None, num_classes=5),
            "densenet121": lambda: tvm.densenet121(weights=None, num_classes=5),
            "vgg11_bn": _vgg11_bn_features}[name]()


INPLACE_CASES = [("resnet18", "layer4.1.bn2", 0),  # out = bn2(...); out += identity; relu(inplace)
                 ("densenet121", "features", 0),  # F.relu(features, inplace=True)
                 ("vgg11_bn", "features.26", 1)]  # BatchNorm2d → ReLU(inplace=True)


@pytest.mark.parametrize("name,layer,seed", INPLACE_CASES, ids=[c[0] for c in INPLACE_CASES])
def test_inplace_op_after_layer_works_and_equals_pytorch_grad_cam(name, layer, seed):
    torch.manual_seed(seed)
    model = _torchvision(name).eval()
    x, t = _x(3, 32, seed=seed, chans=3), torch.tensor([0, 2, 4])
    ref = _pytorch_grad_cam(model, model.get_submodule(layer), x, t)
    assert (ref.flatten(1).amax(1) > 0).any()  # not the trivial all-zero case
    for cam in (batch_gradcam(model, x, layer, t), batch_gradcam(model, x, layer, t, create_graph=True).detach(),
                gradcam_loop(model, x, layer, t)):
        assert torch.allclose(cam, ref, atol=1e-5), (cam - ref).abs().max()
    assert no_hooks_left(model)


def test_frozen_model_with_inplace_op_after_layer():
    torch.manual_seed(0)
    model = _torchvision("resnet18").eval().requires_grad_(False)
    x, t = _x(2, 32, chans=3), [1, 3]
    cam = batch_gradcam(model, x, "layer4.1.bn2", t, create_graph=True)
    assert cam.shape == (2, 32, 32)
    assert torch.allclose(cam.detach(), batch_gradcam(model, x, "layer4.1.bn2", t), atol=1e-6)
    assert torch.allclose(cam.detach(), gradcam_loop(model, x, "layer4.1.bn2", t), atol=1e-5)
    assert all(p.grad is None for p in model.parameters()) and no_hooks_left(model)


def test_frozen_backbone_still_works(models):
    model = bc.create_model("simplecnn").eval().requires_grad_(False)
    layer, x = bc.default_target_layer(model), _x(2, 28)
    cam = batch_gradcam(model, x, layer, [1, 2], normalize=None)
    assert cam.shape == (2, 28, 28) and torch.isfinite(cam).all()
    assert torch.allclose(cam, gradcam_loop(model, x, layer, [1, 2], normalize=None), atol=1e-5)


def test_inplace_relu_after_tiny_layer_works():
    model = _net(after=nn.Identity()).eval()
    model.act = nn.ReLU(inplace=True)
    x, t = _x(3, 6), [0, 1, 2]
    ref = gradcam_loop(model, x, "conv", t)
    for create_graph in (False, True):
        assert torch.allclose(batch_gradcam(model, x, "conv", t, create_graph=create_graph).detach(), ref, atol=1e-6)


def test_target_layer_may_be_a_train_mode_batchnorm():
    """The target BatchNorm's own batch statistics come before A: nothing after it mixes samples."""
    torch.manual_seed(0)
    model = _torchvision("resnet18").train()
    x, t = _x(3, 32, chans=3), [0, 1, 2]
    cam = batch_gradcam(model, x, "layer4.1.bn2", t, create_graph=True)
    assert torch.allclose(cam.detach(), gradcam_loop(model, x, "layer4.1.bn2", t), atol=1e-5)


class _Keeps(nn.Module):
    """The target layer, which keeps a reference to its output; ``_Mutates`` later changes it in place."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(1, 4, 3, padding=1), None

    def forward(self, x):
        self.out = self.conv(x)
        return self.out


class _Mutates(nn.Module):
    def __init__(self, keeps):
        super().__init__()
        self.keeps = [keeps]  # a list: not registered as a submodule

    def forward(self, x):
        self.keeps[0].out.mul_(2)
        return x


@pytest.mark.parametrize("create_graph", [False, True])
def test_inplace_change_through_a_kept_reference_is_detected(create_graph):
    keeps = _Keeps()
    model = nn.Sequential(keeps, _Mutates(keeps), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(RuntimeError, match="modified in place"):
        batch_gradcam(model, _x(2, 6), "0", create_graph=create_graph)
    assert no_hooks_left(model)


# --- row 2: BatchNorm with batch statistics after the layer, whatever model.training says -------------------------


def _eval_bn_without_running_stats():
    return _net(after=nn.BatchNorm2d(6, track_running_stats=False)).eval()


def _eval_model_train_bn():
    model = _net(after=nn.BatchNorm2d(6)).eval()
    model.after.train()
    return model


@pytest.mark.parametrize("make", [_eval_bn_without_running_stats, _eval_model_train_bn],
                         ids=["track_running_stats_false", "model_eval_bn_train"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_batch_statistics_after_layer_raise_in_eval_mode(make, create_graph):
    model, x, t = make(), _x(6, 6), torch.arange(6) % 5
    assert not model.training
    with pytest.raises(SampleMixingError, match="allow_batch_mixing"):
        batch_gradcam(model, x, "conv", t, create_graph=create_graph)
    assert no_hooks_left(model)
    mixed = batch_gradcam(model, x, "conv", t, create_graph=create_graph, allow_batch_mixing=True).detach()
    assert (mixed - gradcam_loop(model, x, "conv", t)).abs().max() > 1e-3  # the mixed gradient is not per-sample


def test_train_mode_model_with_eval_bn_after_layer_is_allowed():
    model = _net(after=nn.BatchNorm2d(6)).train()
    model.after.eval()
    x, t = _x(4, 6), [0, 1, 2, 3]
    cam = batch_gradcam(model, x, "conv", t, create_graph=True)
    assert torch.allclose(cam.detach(), gradcam_loop(model, x, "conv", t), atol=1e-6)


@pytest.mark.parametrize("bn", [lambda: nn.BatchNorm2d(4), lambda: nn.BatchNorm2d(4, track_running_stats=False)],
                         ids=["train", "no_running_stats"])
def test_batch_statistics_before_layer_are_fine(bn):
    model = _net(before=bn()).train()
    x, t = _x(4, 6), [0, 1, 2, 3]
    cam = batch_gradcam(model, x, "conv", t, create_graph=True)
    assert torch.allclose(cam.detach(), gradcam_loop(model, x, "conv", t), atol=1e-6)


def test_train_mode_batchnorm_after_layer_raises_and_differs():
    model = _net(after=nn.BatchNorm2d(6)).train()
    x, t = _x(8, 6), torch.arange(8) % 5
    with pytest.raises(SampleMixingError, match="allow_batch_mixing"):
        batch_gradcam(model, x, "conv", t)
    assert no_hooks_left(model)
    mixed = batch_gradcam(model, x, "conv", t, allow_batch_mixing=True)
    per_sample = gradcam_loop(model, x, "conv", t)  # one backward per sample: the true gradients
    diff = (mixed - per_sample).abs().max().item()
    assert diff > 1e-3, diff
    model.eval()  # running statistics: nothing mixes, batch and loop agree
    assert torch.allclose(batch_gradcam(model, x, "conv", t), gradcam_loop(model, x, "conv", t), atol=1e-6)


def test_train_mode_default_layer_is_allowed():
    model = bc.create_model("simplecnn").train()
    cam = batch_gradcam(model, _x(4, 28), bc.default_target_layer(model), torch.arange(4), create_graph=True)
    assert torch.isfinite(cam).all()


# --- row 3: tuple/dict outputs, inference mode ----------------------------------------------------------------------


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net(x), x.mean()


class _DictOut(_TupleOut):
    def forward(self, x):
        return {"logits": self.net(x), "aux": x.mean()}


class _Logits(nn.Module):
    def __init__(self, model, key):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(x)[self.key]


@pytest.mark.parametrize("make,key,what", [(_TupleOut, 0, "tuple of 2"), (_DictOut, "logits", "dict with keys")])
@pytest.mark.parametrize("fn", [batch_gradcam, gradcam_loop])
def test_model_returning_tuple_or_dict_gets_clear_type_error(make, key, what, fn):
    model, x = make().eval(), _x(2, 6)
    with pytest.raises(TypeError, match=rf"returned a {what}.*needs the logits.*Wrap the model.*returns the logits"):
        fn(model, x, "net.conv")
    assert no_hooks_left(model)
    wrapped = _Logits(model, key)  # the fix the message names
    assert torch.allclose(fn(wrapped, x, "model.net.conv"), batch_gradcam(model.net, x, "conv"), atol=1e-6)


@pytest.mark.parametrize("fn", [batch_gradcam, gradcam_loop])
def test_inference_mode_clear_error_and_no_grad_works(fn):
    model, x = _net().eval(), _x(2, 6)
    ref = fn(model, x, "conv")
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"needs autograd.*inference_mode.*torch\.no_grad\(\)"):
            fn(model, x, "conv")
        x_inference = x.clone()
    assert no_hooks_left(model)
    with torch.no_grad():
        assert torch.allclose(fn(model, x, "conv"), ref) and not torch.is_grad_enabled()
    assert torch.allclose(fn(model, x_inference, "conv"), ref)  # a tensor made under inference_mode is fine


def test_inference_tensor_input_with_create_graph():
    model = _net().train()
    with torch.inference_mode():
        x = _x(2, 6)
    cam = batch_gradcam(model, x, "conv", [0, 1], create_graph=True)
    assert cam.requires_grad


def test_grad_mode_restored_under_no_grad(models):
    model = models["simplecnn"]
    with torch.no_grad():
        cam = batch_gradcam(model, _x(2, 28), bc.default_target_layer(model))
        assert not torch.is_grad_enabled()
    assert torch.isfinite(cam).all()


# --- row 4: targets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scalar", [3, np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3),
                                    torch.tensor(3, dtype=torch.int32)],
                         ids=["int", "np.int64", "np.int32", "np.uint8", "tensor0d", "tensor0d_int32"])
@pytest.mark.parametrize("fn", [batch_gradcam, gradcam_loop])
def test_scalar_target_of_every_integer_type(scalar, fn):
    model, x = _net().eval(), _x(4, 6)
    assert torch.equal(fn(model, x, "conv", scalar), fn(model, x, "conv", [3, 3, 3, 3]))


@pytest.mark.parametrize("targets", [[0, 1, 2, 4], (0, 1, 2, 4), np.array([0, 1, 2, 4]), torch.tensor([0, 1, 2, 4]),
                                     torch.tensor([0, 1, 2, 4], dtype=torch.uint8),
                                     [np.int64(v) for v in (0, 1, 2, 4)]],
                         ids=["list", "tuple", "numpy", "tensor", "uint8", "list_np"])
def test_per_sample_targets(targets):
    model, x = _net().eval(), _x(4, 6)
    assert torch.equal(batch_gradcam(model, x, "conv", targets), gradcam_loop(model, x, "conv", [0, 1, 2, 4]))


@pytest.mark.parametrize("targets", [torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0], [1], [2], [3]]),
                                     [[0, 1], [2, 3]], [0, 1]],
                         ids=["2x2", "Bx1", "nested_list", "too_short"])
@pytest.mark.parametrize("fn", [batch_gradcam, gradcam_loop])
def test_ambiguous_target_shapes_rejected(targets, fn):
    with pytest.raises(ValueError, match=r"shape.*4 samples.*one class per sample"):
        fn(_net().eval(), _x(4, 6), "conv", targets)


@pytest.mark.parametrize("targets", [True, np.bool_(True), torch.tensor(True), [True, False, True, False],
                                     torch.tensor([0.0, 1.0, 2.0, 3.0]), 1.0, np.float64(1.0), "a"],
                         ids=["bool", "np.bool_", "tensor_bool", "bool_list", "float_tensor", "float", "np.float64",
                              "str"])
@pytest.mark.parametrize("fn", [batch_gradcam, gradcam_loop])
def test_bool_float_and_other_targets_rejected(targets, fn):
    with pytest.raises(TypeError, match="integer"):
        fn(_net().eval(), _x(4, 6), "conv", targets)


@pytest.mark.parametrize("targets", [5, np.int64(-1), torch.tensor(7), [0, 1, 5, 2], torch.tensor([0, -1, 2, 3])])
def test_out_of_range_targets_on_cpu(targets):
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        batch_gradcam(_net().eval(), _x(4, 6), "conv", targets, create_graph=True)


@pytest.mark.parametrize("targets", [None, 2, "tensor", "tensor0d"])
def test_create_graph_path_reads_no_tensor_values(targets):
    """On the meta device every tensor has a shape but no values: any .item(), int(t), bool(t) raises.

    So this runs the training-loop path and shows that it never waits for the device's values (on CUDA,
    an out-of-range target then surfaces as torch's device-side assertion)."""
    model = _net(before=nn.BatchNorm2d(4)).train().to("meta")
    x = torch.empty(4, 1, 6, 6, device="meta")
    targets = {"tensor": torch.empty(4, dtype=torch.long, device="meta"),
               "tensor0d": torch.empty((), dtype=torch.long, device="meta")}.get(targets, targets)
    cam, logits = batch_gradcam_with_logits(model, x, "conv", targets, create_graph=True)
    assert cam.shape == (4, 6, 6) and cam.device.type == "meta" and logits.shape == (4, 5)
    (g,) = torch.autograd.grad(cam.sum(), model.stem.weight)
    assert g.shape == model.stem.weight.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("targets", [None, 3, [0, 1, 2, 3], "cuda", "cuda0d"])
def test_create_graph_path_does_not_synchronise_on_cuda(targets):
    model = _net(before=nn.BatchNorm2d(4)).train().cuda()
    x = _x(4, 6).cuda()
    if isinstance(targets, str):
        targets = {"cuda": torch.tensor([0, 1, 2, 3]).cuda(), "cuda0d": torch.tensor(3).cuda()}[targets]
    batch_gradcam(model, x, "conv", targets, create_graph=True).sum().backward()  # warm-up: cuDNN/cuBLAS set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):  # the mode catches a synchronisation
            x.sum().item()
        cam = batch_gradcam(model, x, "conv", targets, create_graph=True)
        cam.mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(cam).all()


def test_none_targets_use_argmax(models):
    model, x = models["simplecnn"], _x(5, 28)
    layer = bc.default_target_layer(model)
    pred = model(x).argmax(1)
    assert torch.equal(batch_gradcam(model, x, layer), batch_gradcam(model, x, layer, pred))


# --- row 5: non-finite maps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("train,expect", [(False, "1 of 4"), (True, "4 of 4")])
@pytest.mark.parametrize("fn", [batch_gradcam, gradcam_loop])
def test_nan_input_warns_how_many_maps(train, expect, fn):
    model = _net(before=nn.BatchNorm2d(4)).train(train)
    x = _x(4, 6)
    x[2, 0, 1, 1] = float("nan")
    with pytest.warns(RuntimeWarning, match=rf"{expect} Grad-CAM maps.*non-finite input.*BatchNorm in train mode"):
        cam = fn(model, x, "conv", [0, 1, 2, 3])
    assert torch.isfinite(cam).all(1).all(1).sum() == 4 - int(expect[0])


def test_no_finiteness_check_on_the_create_graph_path():
    model = _net().eval()
    x = _x(2, 6)
    x[0, 0, 0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam = batch_gradcam(model, x, "conv", [0, 1], create_graph=True)
    assert not torch.isfinite(cam[0]).all() and torch.isfinite(cam[1]).all()


# --- normalisation, double backprop ---------------------------------------------------------------------------------


def test_int_target_and_normalisations(models):
    model, x = models["simplecnn"], _x(4, 28)
    layer = bc.default_target_layer(model)
    raw = batch_gradcam(model, x, layer, 3, normalize=None)
    mx = batch_gradcam(model, x, layer, 3, normalize="max")
    mm = batch_gradcam(model, x, layer, 3, normalize="minmax")
    assert (raw >= 0).all()
    for m in (mx, mm):
        assert m.min() >= 0 and m.max() <= 1 + 1e-6
    assert torch.allclose(mx, normalize_cam(raw))
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
        return batch_gradcam(wrapped, x, "model.features", targets, create_graph=True)

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


def test_cam_loss_reaches_weights_before_target_layer():
    model = _net(before=nn.BatchNorm2d(4)).train()
    cam = batch_gradcam(model, _x(6, 6), "conv", torch.arange(6) % 5, create_graph=True)
    assert cam.requires_grad
    grads = torch.autograd.grad(cam.square().mean(), [model.stem.weight, model.fc.weight])
    assert all(g.abs().sum() > 0 for g in grads)  # conv before the layer, and the head via α (double backprop)


def test_no_graph_without_create_graph(models):
    model = models["simplecnn"]
    cam, logits = batch_gradcam_with_logits(model, _x(2, 28), bc.default_target_layer(model))
    assert not cam.requires_grad and cam.grad_fn is None and not logits.requires_grad


def test_blank_image_and_zero_cam_give_zeros():
    model = TinyCNN(bias=False).double().eval()  # no bias: a blank image gives all-zero activations
    x = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    for norm in ("max", "minmax"):
        cam = batch_gradcam(model, x, "features", [0, 1], normalize=norm)
        assert torch.equal(cam, torch.zeros_like(cam))
    cam = batch_gradcam(model.train(), x, "features", [0, 1], create_graph=True)
    # The map reaches the head's weight through α (double backprop): a missing gradient (None, or an error
    # because the graph is cut) fails here, and the all-zero map's division by inf must not give NaN.
    g = torch.autograd.grad(cam.sum(), [model.head[2].weight, model.features[0].weight])
    assert all(gi is not None and torch.isfinite(gi).all() for gi in g)
    assert torch.equal(normalize_cam(torch.zeros(3, 4, 4)), torch.zeros(3, 4, 4))
    sc = bc.create_model("simplecnn").eval()
    out = batch_gradcam(sc, torch.zeros(2, 1, 28, 28), bc.default_target_layer(sc))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


# --- errors and hook hygiene ---------------------------------------------------------------------------------------


def test_bad_inputs():
    model, x = _net().eval(), _x(3, 6)
    with pytest.raises(ValueError, match=r"unknown layer 'con'.*conv"):
        batch_gradcam(model, x, "con")
    with pytest.raises(ValueError, match="4-D feature map"):
        batch_gradcam(model, x, "fc")
    with pytest.raises(ValueError, match="3 samples"):
        batch_gradcam(model, x, "conv", [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        batch_gradcam(model, x, "conv", [0, 1, 5])
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        batch_gradcam(model, x, "conv", [0, -1, 2])
    with pytest.raises(TypeError, match="integer"):
        batch_gradcam(model, x, "conv", torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="4-D"):
        batch_gradcam(model, x[0], "conv")
    with pytest.raises(ValueError, match="normalize"):
        batch_gradcam(model, x, "conv", normalize="l2")
    for fn in (batch_gradcam, gradcam_loop):
        with pytest.raises(ValueError, match="unknown layer"):
            fn(model, x, "layer4")
    assert no_hooks_left(model)


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_released_after_exception():
    model = _net().eval()
    model.pool = nn.Sequential(_Boom(), model.pool)  # raises after the target layer has run
    for fn in (batch_gradcam, gradcam_loop):
        with pytest.raises(RuntimeError, match="boom"):
            fn(model, _x(2, 6), "conv")
        assert no_hooks_left(model)
        assert torch.is_grad_enabled()
    with pytest.raises(RuntimeError):  # wrong channel count: fails before the target layer
        batch_gradcam(model, _x(2, 6, chans=3), "conv")
    assert no_hooks_left(model) and torch.is_grad_enabled()


def test_loop_frees_its_graph_without_gc():
    """gradcam_loop's hooks once formed a reference cycle that kept every forward graph alive."""
    import weakref

    model = _net(before=nn.BatchNorm2d(4)).eval()
    refs = []
    handle = model.conv.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
    try:
        gradcam_loop(model, _x(4, 6), "conv")
    finally:
        handle.remove()
    assert refs and all(r() is None for r in refs)


# --- row 7: docstrings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", cam_module.__all__)
def test_public_docstrings_give_shapes_and_chapter(name):
    doc = getattr(cam_module, name).__doc__ or ""
    assert "chapter" in doc.lower(), name
    if name != "SampleMixingError":
        assert "[B, " in doc, name

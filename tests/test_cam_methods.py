"""batch_cam's methods, targets, layers and reshapes against pytorch-grad-cam and per-image references.

Every method equals pytorch-grad-cam's class of the same name on eight architectures (float64, random
weights, eval mode), after the same min-max normalisation. pytorch-grad-cam keeps the layer's output by
reference, so where an in-place op follows the layer (DenseNet's ``features`` → ``F.relu(inplace=True)``)
it reads the modified activations; DenseNet is therefore compared at ``features.denseblock3``, followed by
an out-of-place BatchNorm (``test_cam.py`` covers ``features`` with a cloning ``reshape_transform``).
"""

from collections import OrderedDict
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from _tiny import no_hooks_left
from torch import nn
from torch.func import functional_call

import batchcam as bc
from batchcam import batch_cam, list_methods, register_method, tokens_to_grid, vit_reshape
from batchcam.bench.methods import PGC_CLASSES
from batchcam.methods import METHODS

BUILTIN = list(PGC_CLASSES)
#: name → (target layer, image side); ViT: the last block's attention input (its output reaches the
#: logits through the class token only, so its patch tokens would get zero gradient).
MODELS = {"simplecnn": ("features", 28), "resnet18": ("layer4", 96), "mobilenet_v3_small": ("features", 96),
          "densenet121": ("features.denseblock3", 64), "efficientnet_b0": ("features", 96),
          "convnextv2_atto": ("stages.3", 96), "resnet10t": ("layer4", 96), "vit_tiny": ("blocks.11.norm1", 64)}
B, CLASSES = 2, 10


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small batches run faster on one thread


def _build(name):
    if name == "simplecnn":
        return bc.create_model("simplecnn", CLASSES, 1, 28)
    if name == "vit_tiny":
        import timm

        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=CLASSES)
    if name in ("convnextv2_atto", "resnet10t"):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES)
    import torchvision.models as tvm

    return getattr(tvm, name)(weights=None, num_classes=CLASSES)


@lru_cache(maxsize=None)
def _setup(name):
    """(model, layer, x, targets): float64, eval mode, the last linear layer rescaled so that the logits
    spread over a few units (random initialisations give logits ~1e-2, and maps near the epsilons)."""
    torch.manual_seed(0)
    model = _build(name).double().eval()
    layer, side = MODELS[name]
    chans = 1 if name == "simplecnn" else 3
    x = torch.rand(B, chans, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(3.0 / model(x).std().clamp_min(1e-12))
    return model, layer, x, torch.tensor([1, 7])


def _reshapes(name, model):
    """(ours, pytorch-grad-cam's tutorial reshape_transform) for the ViT, (None, None) otherwise."""
    if name != "vit_tiny":
        return None, None
    h, w = model.patch_embed.grid_size

    def pgc_reshape(t):  # pytorch-grad-cam's vision-transformer tutorial, verbatim up to the grid size
        return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).transpose(2, 3).transpose(1, 2)

    return vit_reshape(model), pgc_reshape


def pytorch_grad_cam(method, model, layers, x, targets, reshape_transform=None):
    """pytorch-grad-cam's maps [B, H, W] (numpy, min-max normalised by scale_cam_image) as float64."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, PGC_CLASSES[method])
    with cls(model=model, target_layers=layers, reshape_transform=reshape_transform) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)  # its loss.backward() filled the .grad fields
    return torch.from_numpy(out).double()


def max_difference(name, method):
    """max |batch_cam − pytorch-grad-cam| over the maps of one model and method (both min-max normalised)."""
    model, layer, x, t = _setup(name)
    ours_reshape, pgc_reshape = _reshapes(name, model)
    ours = batch_cam(model, x, layer, t, method=method, normalize="minmax", reshape=ours_reshape)
    ref = pytorch_grad_cam(method, model, [model.get_submodule(layer)], x, t, pgc_reshape)
    assert ours.shape == ref.shape == x.shape[:1] + x.shape[2:] and no_hooks_left(model)
    assert (ref.flatten(1).amax(1) > 0.5).any()  # not the trivial all-zero case
    return (ours - ref).abs().max().item()


# --- equality with pytorch-grad-cam -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", BUILTIN)
@pytest.mark.parametrize("name", list(MODELS))
def test_method_equals_pytorch_grad_cam(name, method):
    assert max_difference(name, method) < 1e-5


@pytest.mark.parametrize("method", BUILTIN)
@pytest.mark.parametrize("name,layers", [("resnet18", ["layer3", "layer4"]),
                                         ("simplecnn", ["features.6", "features"])])
def test_several_layers_equal_pytorch_grad_cam(name, layers, method):
    """One forward and one autograd.grad for both layers; pytorch-grad-cam's aggregate_multi_layers."""
    model, _, x, t = _setup(name)
    ours = batch_cam(model, x, layers, t, method=method, normalize="minmax")
    ref = pytorch_grad_cam(method, model, [model.get_submodule(n) for n in layers], x, t)
    assert (ours - ref).abs().max() < 1e-5
    one = batch_cam(model, x, [layers[1]], t, method=method, normalize=None)  # a one-element list is the layer
    assert torch.equal(one, batch_cam(model, x, layers[1], t, method=method, normalize=None))


def test_float32_within_1e_4():
    model, layer, x, t = _setup("resnet18")
    model32 = _build("resnet18").eval()
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    for method in ("gradcam", "gradcam++", "layercam"):
        ours = batch_cam(model32, x.float(), layer, t, method=method, normalize="minmax")
        ref = pytorch_grad_cam(method, model32, [model32.get_submodule(layer)], x.float(), t)
        assert ours.dtype == torch.float32 and (ours.double() - ref).abs().max() < 1e-4, method


def test_vit_reshape_equals_pytorch_grad_cam_reshape_transform():
    model, _, x, _ = _setup("vit_tiny")
    ours, pgc = _reshapes("vit_tiny", model)
    tokens = torch.randn(2, 1 + 16, 192, dtype=torch.float64)
    assert torch.equal(ours(tokens), pgc(tokens)) and ours(tokens).shape == (2, 192, 4, 4)
    with pytest.raises(ValueError, match="17 tokens minus 1 prefix tokens is 16.*5×5"):
        tokens_to_grid(tokens, (5, 5), 1)
    with pytest.raises(ValueError, match=r"\(2, 17, 192\).*pass reshape=.*vit_reshape"):
        batch_cam(model, x[:2], "blocks.11.norm1")
    with pytest.raises(TypeError, match="timm vision transformers"):
        vit_reshape(nn.Linear(2, 2))


# --- targets ------------------------------------------------------------------------------------------------------


def margin(classes):
    """z_c − max_{j≠c} z_j per sample: a callable target."""
    def score(logits):
        others = logits.masked_fill(F.one_hot(classes, logits.shape[1]).bool(), float("-inf"))
        return logits.gather(1, classes[:, None])[:, 0] - others.amax(1)
    return score


def _margin_loop(model, layer, x, classes, method):
    """Per-image reference: a forward of each image alone, a hook on the layer, ∂margin/∂A by autograd."""
    maps = []
    for b in range(x.shape[0]):
        kept: list = []
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o, kept=kept: kept.append(o))
        try:
            z = model(x[b:b + 1])
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(margin(classes[b:b + 1])(z).sum(), kept[0])
        a = kept[0].detach()
        cam = (g.mean((2, 3))[:, :, None, None] * a) if method == "gradcam" else F.relu(g) * a
        cam = F.interpolate(F.relu(cam.sum(1, keepdim=True)), size=x.shape[-2:], mode="bilinear")
        maps.append(cam[0, 0] / cam.max())
    return torch.stack(maps)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_callable_margin_target_equals_per_image_loop(method):
    model, layer, x, _ = _setup("simplecnn")
    classes = torch.tensor([2, 8])
    ours = batch_cam(model, x, layer, margin(classes), method=method)
    assert torch.allclose(ours, _margin_loop(model, layer, x, classes, method), atol=1e-10)
    cam = batch_cam(model, x, layer, margin(classes), create_graph=True)  # differentiable too
    assert cam.requires_grad and torch.autograd.grad(cam.sum(), model.head[2].weight)[0].abs().sum() > 0


@pytest.mark.parametrize("bad", [lambda z: z, lambda z: z.argmax(1), lambda z: z[:-1, 0], lambda z: 3.0])
def test_callable_target_must_return_one_float_per_sample(bad):
    model, layer, x, _ = _setup("simplecnn")
    with pytest.raises(ValueError, match=r"one floating-point score per sample, shape \[2\]"):
        batch_cam(model, x, layer, bad)
    assert no_hooks_left(model)


def test_none_targets_are_the_predicted_class_and_logits_are_returned():
    model, layer, x, _ = _setup("simplecnn")
    cam, logits = batch_cam(model, x, layer, return_logits=True, size=(10, 12))
    assert cam.shape == (2, 10, 12) and logits.shape == (2, CLASSES) and not logits.requires_grad
    assert torch.equal(cam, batch_cam(model, x, layer, logits.argmax(1), size=(10, 12)))


def test_layer_list_and_size_errors():
    model, layer, x, t = _setup("simplecnn")
    with pytest.raises(ValueError, match="listed twice"):
        batch_cam(model, x, [layer, model.features], t)
    with pytest.raises(ValueError, match="empty list"):
        batch_cam(model, x, [], t)
    with pytest.raises(ValueError, match=r"size must be \(H, W\)"):
        batch_cam(model, x, layer, t, size=(0, 3))
    assert no_hooks_left(model)


def test_batch_statistics_between_two_layers_raise():
    """A train-mode BatchNorm after the first of two layers mixes that layer's per-sample gradients."""
    model = _build("simplecnn").double().eval()
    model.features[11].train()  # the last BatchNorm, after features.6
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    with pytest.raises(bc.SampleMixingError, match="'features.6'"):
        batch_cam(model, x, ["features.6", "features"])
    assert batch_cam(model, x, ["features.6", "features"], allow_batch_mixing=True).shape == (3, 28, 28)


# --- registry -----------------------------------------------------------------------------------------------------


def test_registry():
    assert list_methods()[:6] == ["gradcam", "hirescam", "gradcam-elementwise", "gradcam++", "xgradcam",
                                  "layercam"]
    model, layer, x, t = _setup("simplecnn")

    def absgrad(acts, grads):
        return grads.abs().mean((2, 3))

    register_method("absgrad", absgrad)
    try:
        assert "absgrad" in list_methods()
        with pytest.raises(ValueError, match="already exists.*overwrite=True"):
            register_method("absgrad", absgrad)
        cam = batch_cam(model, x, layer, t, method="absgrad")
        assert torch.equal(cam, batch_cam(model, x, layer, t, method=absgrad))  # a function works directly
        assert not torch.allclose(cam, batch_cam(model, x, layer, t, method="gradcam"), atol=1e-3)
    finally:
        METHODS.pop("absgrad")
    with pytest.raises(ValueError, match=r"unknown method 'gradcam\+'.*Did you mean 'gradcam\+\+'"):
        batch_cam(model, x, layer, t, method="gradcam+")
    with pytest.raises(ValueError, match=r"weights of shape \(2,\)"):
        batch_cam(model, x, layer, t, method=lambda a, g: g.mean((1, 2, 3)))
    with pytest.raises(TypeError, match="callable"):
        register_method("x", 3)


def test_gradcam_alias_keywords():
    model, layer, x, t = _setup("simplecnn")
    for method in BUILTIN:
        cam, logits = bc.batch_gradcam_with_logits(model, x, layer, t, create_graph=True, normalize="max",
                                                   method=method)
        ref = batch_cam(model, x, layer, t, method=method)
        assert torch.allclose(cam.detach(), ref, atol=1e-12) and logits.shape == (2, CLASSES)
        assert torch.equal(bc.batch_gradcam(model, x, layer, t, method=method), ref)


# --- derivatives --------------------------------------------------------------------------------------------------


class _Smooth(nn.Module):
    """Tanh/Softplus everywhere and a non-linear head: ∂z/∂A depends on A, higher derivatives do not vanish."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh())
        self.features = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Softplus())
        self.head = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3))

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


@pytest.mark.parametrize("method", BUILTIN)
def test_gradcheck_and_gradgradcheck_float64(method):
    torch.manual_seed(0)
    model = _Smooth().double()
    names = [n for n, _ in model.named_parameters()]
    fixed = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    checked = ["features.0.weight", "head.4.weight"]  # the target conv and the head's first linear layer

    class Wrapped(nn.Module):
        def __init__(self, params):
            super().__init__()
            self.model, self.params = model, params

        def forward(self, inp):
            return functional_call(self.model, self.params, (inp,))

    def f(inp, *ws):
        wrapped = Wrapped({**fixed, **dict(zip(checked, ws))})
        return batch_cam(wrapped, inp, "model.features", torch.tensor([0, 2]), method=method, create_graph=True,
                         normalize=None, size=4)

    inputs = (x, *[fixed[n].clone().requires_grad_(True) for n in checked])
    assert set(checked) <= set(names)
    out = f(*inputs)
    assert out.shape == (2, 4, 4) and (out > 0).any()
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_maps_stay_float32_under_autocast():
    """Issue 25: under bf16 and fp16 autocast every method forms and normalises its map in float32 (the
    docstring says so), and the map is the float32 map of the autocast activations: close to the plain one."""
    torch.manual_seed(0)
    model, x = bc.create_model("simplecnn", CLASSES, 1, 28).eval(), torch.rand(2, 1, 28, 28)
    for dtype in (torch.bfloat16, torch.float16):
        for method in BUILTIN:
            plain = batch_cam(model, x, "features", method=method)
            with torch.autocast("cpu", dtype=dtype):
                low = batch_cam(model, x, "features", method=method, create_graph=True)
            assert low.dtype == torch.float32, (dtype, method)
            assert (low - plain).abs().max() < 0.1, (dtype, method)  # activations in bf16/fp16, maps in fp32
    assert batch_cam(model, x, "features").dtype == torch.float32


def test_vit_maps_are_differentiable_with_the_math_attention_kernel():
    """The fused attention kernels have no double backward; the math kernel (used in the forward) has."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, layer, x, t = _setup("vit_tiny")
    with sdpa_kernel(SDPBackend.MATH):
        cam = batch_cam(model, x, layer, t, method="gradcam++", create_graph=True, reshape=vit_reshape(model))
    (g,) = torch.autograd.grad(cam.sum(), model.blocks[11].attn.qkv.weight)
    assert cam.shape == (2, 64, 64) and torch.isfinite(g).all() and g.abs().sum() > 0


# --- torch.compile ----------------------------------------------------------------------------------------------


def test_compiled_model_runs_its_original_module():
    """A compiled graph would skip hooks added after it was compiled (a no_grad warm-up caches one)."""
    model, layer, x, t = _setup("simplecnn")
    compiled = torch.compile(model, backend="eager")
    try:
        with torch.no_grad():
            compiled(x)
    except Exception as err:  # pragma: no cover - dynamo unsupported on this Python/platform
        pytest.skip(f"torch.compile unavailable: {err}")
    for create_graph in (False, True):
        ref = batch_cam(model, x, layer, t, create_graph=create_graph)
        for name in (layer, "_orig_mod." + layer):
            cam = batch_cam(compiled, x, name, t, create_graph=create_graph)
            assert torch.equal(cam.detach(), ref.detach())
        if create_graph:
            assert torch.autograd.grad(cam.sum(), model.head[2].weight)[0].abs().sum() > 0
    assert no_hooks_left(model)


def test_compiled_submodule_gets_an_error_saying_what_to_do():
    model = bc.create_model("simplecnn", CLASSES, 1, 28).eval()
    wrapped = nn.Sequential(OrderedDict(net=torch.compile(model, backend="eager")))  # never called: no compile
    with pytest.raises(TypeError, match=r"submodule 'net' is compiled.*replace 'net' by its \._orig_mod"):
        batch_cam(wrapped, torch.rand(2, 1, 28, 28), "net._orig_mod.features", create_graph=True)

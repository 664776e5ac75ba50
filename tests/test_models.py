"""The model registry: every model builds and classifies, its default Grad-CAM layer gives a feature
map, and Grad-CAM depends on the input. Nothing here looks inside SimpleCNN."""

import pytest
import torch

import batchcam as bc
from batchcam.models import MODEL_SPECS

# small and fast, but large enough for a last feature map of at least 2 × 2 (ConvNeXt-V2 divides by 32)
SIZES = {name: 64 if spec.min_size > 28 else 28 for name, spec in MODEL_SPECS.items()}


@pytest.fixture(scope="module")
def models():
    """One randomly initialised model per registered name (seed 0), shared by the tests; each test
    sets the mode it needs."""
    out = {}
    for name in bc.list_models():
        torch.manual_seed(0)
        out[name] = bc.create_model(name, image_size=SIZES[name])
    return out


def _layer_output_and_alpha(model, x, layer, y):
    """Activations A [B, K, h, w] of ``layer`` (forward hook) and Grad-CAM's α [B, K] = mean_ij ∂z_b[y_b]/∂A_bkij."""
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), seen["a"])
    return seen["a"], grad.mean(dim=(2, 3))


def test_registry_lists_the_three_models():
    assert bc.list_models() == ["simplecnn", "resnet18", "convnextv2_tiny"]
    assert [bc.default_target_layer(n) for n in bc.list_models()] == ["features", "layer4", "stages.3"]


@pytest.mark.parametrize("name", bc.list_models())
def test_every_model_builds_classifies_and_its_layer_is_a_feature_map(models, name):
    size = SIZES[name]
    model = models[name].eval()
    assert bc.default_target_layer(model) == bc.default_target_layer(name)
    x, y = torch.rand(3, 1, size, size), torch.tensor([1, 4, 4])
    acts, alpha = _layer_output_and_alpha(model, x, bc.default_target_layer(name), y)
    assert model(x).shape == (3, 10)
    assert acts.dim() == 4 and acts.shape[0] == 3 and alpha.shape == acts.shape[:2]
    if name == "simplecnn":
        assert bc.create_model(name, num_classes=7).eval()(x).shape == (3, 7)


def test_unknown_model_and_too_small_image_are_refused():
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*'resnet18'.*Valid models: 'simplecnn'"):
        bc.create_model("resnet19")
    with pytest.raises(ValueError, match="Valid models"):
        bc.default_target_layer("vgg")
    with pytest.raises(ValueError, match="needs image_size ≥ 32"):
        bc.create_model("convnextv2_tiny", image_size=28)


def test_default_layer_of_a_foreign_model(TinyNet):
    assert bc.default_target_layer(TinyNet()) == "features"


@pytest.mark.parametrize("name", bc.list_models())
def test_hooked_alpha_reproduces_batch_gradcam_and_maps_depend_on_the_input(models, name):
    """The test's own α (hooks) rebuilds the package's raw map; two different images of the same
    class get different maps."""
    size = SIZES[name]
    model = models[name].eval()
    layer = bc.default_target_layer(name)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, size, size, generator=g)
    x[1] = torch.roll(x[0], shifts=(size // 4, size // 3), dims=(-2, -1)) * 0.8
    y = torch.tensor([3, 3])
    acts, alpha = _layer_output_and_alpha(model, x, layer, y)
    raw = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, acts))[:, None]
    raw = torch.nn.functional.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    got = bc.batch_gradcam(model, x, layer, y, normalize=None)
    torch.testing.assert_close(got, raw, rtol=1e-4, atol=1e-6)
    maps = bc.batch_gradcam(model, x, layer, y)
    assert (maps[0] - maps[1]).abs().max() > 1e-3


def test_alpha_depends_on_the_input_only_with_a_nonlinear_head(models):
    """Grad-CAM's α is the mean gradient at the layer. After a GAP + linear head (ResNet-18) it is
    W[c] / (h·w) for every input (Grad-CAM = CAM), whatever the image; a per-sample LayerNorm after
    the pooling (ConvNeXt-V2's head) makes it depend on the input."""
    g = torch.Generator().manual_seed(2)
    y = torch.tensor([5, 5])
    resnet = models["resnet18"].eval()
    x = torch.rand(2, 1, 28, 28, generator=g)
    acts, alpha = _layer_output_and_alpha(resnet, x, "layer4", y)
    h, w = acts.shape[-2:]
    torch.testing.assert_close(alpha, resnet.fc.weight[5].detach().expand(2, -1) / (h * w), rtol=1e-5, atol=1e-9)
    convnext = models["convnextv2_tiny"].eval()
    x = torch.rand(2, 1, 32, 32, generator=g)
    _, alpha = _layer_output_and_alpha(convnext, x, "stages.3", y)
    assert (alpha[0] - alpha[1]).abs().max() > 1e-2 * alpha.abs().max()


@pytest.mark.parametrize("name", bc.list_models())
def test_every_parameter_gets_a_gradient_under_the_full_objective(models, name):
    size = 32 if name == "convnextv2_tiny" else SIZES[name]  # its smallest input: a 1 × 1 map is enough here
    model = models[name].train()
    model.zero_grad(set_to_none=True)
    x, y = torch.rand(4, 1, size, size), torch.tensor([0, 0, 1, 2])
    terms, _ = bc.objective_loss(bc.Objective.from_name("ce+proto+batchcam"), model, x, y,
                                 layer=bc.default_target_layer(name), prototypes=torch.rand(10, size, size))
    terms["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    model.zero_grad(set_to_none=True)
    model.eval()
    assert not missing, missing

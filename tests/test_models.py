import pytest
import torch
import torch.nn.functional as F

import batchcam as bc


def test_registry_and_default_layers():
    assert bc.list_models() == ["simplecnn", "resnet18", "convnextv2_tiny"]
    assert [bc.default_target_layer(n) for n in bc.list_models()] == ["features", "layer4", "stages.3"]
    for name in bc.list_models():
        m = bc.create_model(name, num_classes=7)
        assert bc.default_target_layer(m) == bc.default_target_layer(name)
        size = 64 if name == "convnextv2_tiny" else 28
        assert m.eval()(torch.rand(2, 1, size, size)).shape == (2, 7)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*'resnet18'.*Valid models: 'simplecnn'"):
        bc.create_model("resnet19")
    with pytest.raises(ValueError, match="Valid models"):
        bc.default_target_layer("vgg")


def test_default_layer_of_foreign_model():
    from _tiny import TinyCNN

    assert bc.default_target_layer(TinyCNN()) == "features"


@pytest.mark.parametrize("name", ["simplecnn", "resnet18", "convnextv2_tiny"])
def test_every_parameter_gets_a_gradient_under_training_objective(name):
    torch.manual_seed(0)
    model = bc.create_model(name).train()
    size = 64 if name == "convnextv2_tiny" else 28
    x, y = torch.rand(8, 1, size, size), torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    protos = torch.rand(10, 1, size, size)
    cam, logits = bc.batch_gradcam_with_logits(model, x, bc.default_target_layer(model), y, create_graph=True)
    loss = F.cross_entropy(logits, y) + bc.prototype_loss(cam, protos, y) + bc.batchcam_loss(cam, y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, missing

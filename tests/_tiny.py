"""Tiny float64 models shared by the tests."""

from torch import nn


class TinyCNN(nn.Module):
    """conv → ReLU → conv (target ``features``) → GAP → linear; no BatchNorm, no bias in convs."""

    def __init__(self, classes: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=bias), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not getattr(m, "_backward_pre_hooks", {}) for m in model.modules())

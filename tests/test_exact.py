"""Grad-CAM on tiny hand-built models, against values derived by hand."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from camkit import GradCAM


class Head(nn.Module):
    """``layer`` then flatten then a linear layer with hand-set weights."""

    def __init__(self, layer: nn.Module, weight: list[list[float]], after: nn.Module | None = None):
        super().__init__()
        self.layer = layer
        self.after = after or nn.Identity()
        w = torch.tensor(weight)
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.fill_(0.25)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.after(self.layer(x)).flatten(1))


# Two channels of 2x2, fed through an identity layer, so A = x:
#   A^1 = [[1, 2], [3, 4]]        A^2 = [[0, -1], [2, 1]]
# The score is linear in A, y^c = sum W^c * A + b, so dy^c/dA = W^c (b drops out).
X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [2.0, 1.0]]]])
W = [
    # class 0: channel 1 weights [1, 0, 0, 1] (mean 1/2), channel 2 all -2 (mean -2)
    [1, 0, 0, 1, -2, -2, -2, -2],
    # class 1: channel 1 all 0 (mean 0), channel 2 all 1 (mean 1)
    [0, 0, 0, 0, 1, 1, 1, 1],
]


def test_linear_head_class0_by_hand() -> None:
    # alpha = (1/2, -2); L = A^1/2 - 2 A^2 = [[0.5, 1 + 2], [1.5 - 4, 2 - 2]]
    cam = GradCAM(Head(nn.Identity(), W), "layer")
    raw = cam(X, target=0, relu=False, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[[0.5, 3.0], [-2.5, 0.0]]]))
    # ReLU -> [[0.5, 3], [0, 0]]; min-max -> [[1/6, 1], [0, 0]]
    torch.testing.assert_close(cam(X, target=0), torch.tensor([[[1 / 6, 1.0], [0.0, 0.0]]]))


def test_linear_head_class1_by_hand() -> None:
    # alpha = (0, 1); L = A^2 = [[0, -1], [2, 1]]; ReLU -> [[0, 0], [2, 1]]; min-max -> /2
    cam = GradCAM(Head(nn.Identity(), W), "layer")
    torch.testing.assert_close(
        cam(X, target=1, normalize=False), torch.tensor([[[0.0, 0.0], [2.0, 1.0]]])
    )
    torch.testing.assert_close(cam(X, target=1), torch.tensor([[[0.0, 0.0], [1.0, 0.5]]]))


def test_relu_after_layer_masks_the_gradient() -> None:
    # A = x = [[1, -2], [3, -4]] (one channel); y = sum w * ReLU(A), w = [[1, 2], [3, 4]].
    # dy/dA = w * [A > 0] = [[1, 0], [3, 0]], alpha = 4/4 = 1, so L = A itself.
    model = Head(nn.Identity(), [[1, 2, 3, 4]], after=nn.ReLU())
    x = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])
    cam = GradCAM(model, "layer")
    torch.testing.assert_close(cam(x, 0, relu=False, normalize=False), x[:, 0])
    # ReLU -> [[1, 0], [3, 0]]; min-max -> [[1/3, 0], [1, 0]]
    torch.testing.assert_close(cam(x, 0), torch.tensor([[[1 / 3, 0.0], [1.0, 0.0]]]))


def test_linear_upsampling_by_hand() -> None:
    # x = [0, 0, 2, 2] -> AvgPool1d(2) -> A = [0, 2]; y = A_0 + A_1, so alpha = 1, L = [0, 2].
    # Linear upsampling 2 -> 4 with align_corners=False samples source positions
    # (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]: L = [0, 0.5, 1.5, 2].
    model = Head(nn.AvgPool1d(2), [[1, 1]])
    x = torch.tensor([[[0.0, 0.0, 2.0, 2.0]]])
    cam = GradCAM(model, "layer")
    torch.testing.assert_close(cam(x, 0, normalize=False), torch.tensor([[0.0, 0.5, 1.5, 2.0]]))
    torch.testing.assert_close(cam(x, 0), torch.tensor([[0.0, 0.25, 0.75, 1.0]]))
    assert cam(x, 0, upsample=False, normalize=False).shape == (1, 2)


class ReusedRelu(nn.Module):
    """One ReLU module called twice: b = act(act(x) - 1), then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.act(x) - 1).flatten(1))


def test_reused_module_uses_its_last_call() -> None:
    # x = [[1, 3], [2, -1]]: first call a = [[1, 3], [2, 0]], last call b = [[0, 2], [1, 0]].
    # Last call: dy/db = 1 everywhere, alpha = 1, L = b -> normalized [[0, 1], [0.5, 0]].
    # (The first call would give dy/da = [[0, 1], [1, 0]], alpha = 1/2, L = a / 2 ->
    # [[1/3, 1], [2/3, 0]], so the two readings are told apart.)
    x = torch.tensor([[[[1.0, 3.0], [2.0, -1.0]]]])
    maps = GradCAM(ReusedRelu(), "act")(x, target=0)
    torch.testing.assert_close(maps, torch.tensor([[[0.0, 1.0], [0.5, 0.0]]]))


@pytest.mark.parametrize("constant", [0.0, 5.0])
def test_constant_map_is_all_zeros(constant: float) -> None:
    # A constant activation with a positive channel weight gives a constant map.
    model = Head(nn.Identity(), [[1, 1, 1, 1]])
    x = torch.full((1, 1, 2, 2), constant)
    maps = GradCAM(model, "layer")(x, target=0)
    assert torch.equal(maps, torch.zeros(1, 2, 2))

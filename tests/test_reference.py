"""camkit's Grad-CAM against an independent plain-autograd computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camkit import GradCAM
from examples.mnist.model import MnistNet
from tests.helpers import finish, reference_gradcam
from tests.models import cam_net, conv_net

SHAPES = {1: (2, 2, 13), 2: (3, 2, 11, 9), 3: (2, 2, 7, 6, 9)}


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("layer", ["0", "1", "2", "3", "4", "5", "6"])
def test_matches_plain_autograd(dims: int, layer: str) -> None:
    model = conv_net(dims)
    _randomize_bn(model)
    x = torch.randn(SHAPES[dims])
    classes = torch.arange(len(x)) % 5
    expected = reference_gradcam(model, model.get_submodule(layer), x, classes)
    cam = GradCAM(model, layer)
    raw = cam(x, classes, relu=False, upsample=False, normalize=False)
    torch.testing.assert_close(raw.double(), expected, rtol=1e-4, atol=1e-6)
    maps = cam(x, classes)
    torch.testing.assert_close(maps.double(), finish(expected, x.shape[2:]), rtol=1e-3, atol=1e-4)


def test_matches_plain_autograd_on_the_mnist_net() -> None:
    model = MnistNet().eval()
    x = torch.randn(6, 1, 28, 28)
    classes = torch.tensor([3, 1, 4, 1, 5, 9])
    for layer in ("features.relu", "features.conv1", "features.pool1"):
        expected = reference_gradcam(model, model.get_submodule(layer), x, classes)
        raw = GradCAM(model, layer)(x, classes, relu=False, upsample=False, normalize=False)
        torch.testing.assert_close(raw.double(), expected, rtol=1e-4, atol=1e-6)


def test_predicted_class_is_the_default_target() -> None:
    model = MnistNet().eval()
    x = torch.randn(8, 1, 28, 28)
    cam = GradCAM(model, "features.relu")
    result = cam.explain(x)
    predicted = model(x).argmax(1)
    assert result.classes is not None
    assert torch.equal(result.classes, predicted)
    torch.testing.assert_close(result.maps, cam(x, predicted))
    torch.testing.assert_close(result.output, model(x))
    torch.testing.assert_close(result.scores, model(x).gather(1, predicted[:, None])[:, 0])


def test_callable_target_matches_reference() -> None:
    model = conv_net(2)
    x = torch.randn(3, 2, 10, 10)

    def score(out: torch.Tensor) -> torch.Tensor:
        return out.softmax(1)[:, 2] - 0.5 * out[:, 0]

    expected = reference_gradcam(model, model.get_submodule("4"), x, score=score)
    raw = GradCAM(model, "4")(x, score, relu=False, upsample=False, normalize=False)
    torch.testing.assert_close(raw.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradcam_generalizes_cam(dims: int) -> None:
    # conv -> GAP -> linear: y^c = sum_k w_k^c mean_ij A^k_ij + b^c, so
    # dy^c/dA^k_ij = w_k^c / Z and Grad-CAM = (1/Z) sum_k w_k^c A^k, CAM up to scale.
    model = cam_net(dims)
    x = torch.randn(SHAPES[dims])
    linear = model[4]
    for c in range(5):
        A = model[1](model[0](x)).detach()
        cam_map = torch.einsum("k,nk...->n...", linear.weight[c].detach(), A)
        z = A[0, 0].numel()
        raw = GradCAM(model, "1")(x, c, relu=False, upsample=False, normalize=False)
        torch.testing.assert_close(raw, cam_map / z, rtol=1e-4, atol=1e-6)
        maps = GradCAM(model, "1")(x, c)
        torch.testing.assert_close(
            maps.double(), finish(cam_map.double(), x.shape[2:]), rtol=1e-3, atol=1e-4
        )

"""Real architectures from torchvision, random weights, small inputs.

torchvision is a test dependency: this module fails, rather than skips, without it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from camkit import GradCAM
from tests.helpers import assert_untouched, finish, reference_gradcam, snapshot

ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], int, list[str]]] = {
    # name: (builder, input size, layers) -- layers chosen to cover in-place ops after
    # the layer (ReLU(inplace=True), `out += identity`) and modules reused in one pass.
    "resnet18": (tvm.resnet18, 64, ["layer4", "layer4.1.bn2", "layer4.1.relu", "layer3.0.conv1"]),
    "vgg11": (tvm.vgg11, 32, ["features.18", "features.19", "features.20"]),
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, 64, ["features.12", "features.9.block.0"]),
    "densenet121": (tvm.densenet121, 64, ["features.norm5", "features.transition2.conv"]),
    "efficientnet_b0": (tvm.efficientnet_b0, 64, ["features.8", "features.6.0.block.1"]),
    "convnext_tiny": (tvm.convnext_tiny, 64, ["features.7", "features.5.3.block.0"]),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def architecture(request: pytest.FixtureRequest) -> tuple[nn.Module, int, list[str]]:
    builder, size, layers = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    model = builder(weights=None, num_classes=10).eval()
    return model, size, layers


def test_matches_plain_autograd(architecture: tuple[nn.Module, int, list[str]]) -> None:
    model, size, layers = architecture
    x = torch.randn(2, 3, size, size)
    classes = torch.tensor([3, 7])
    before = snapshot(model)
    for layer in layers:
        expected = reference_gradcam(model, model.get_submodule(layer), x, classes)
        cam = GradCAM(model, layer)
        raw = cam(x, classes, relu=False, upsample=False, normalize=False)
        assert torch.isfinite(raw).all()
        scale = expected.abs().max()
        torch.testing.assert_close(raw.double() / scale, expected / scale, rtol=1e-4, atol=1e-5)
        maps = cam(x, classes)
        assert maps.shape == (2, size, size)
        assert torch.isfinite(maps).all()
        torch.testing.assert_close(
            maps.double(), finish(expected, (size, size)), rtol=1e-3, atol=1e-3
        )
    assert_untouched(before, snapshot(model))


def test_resnet_reused_relu_is_its_last_call() -> None:
    # BasicBlock calls `self.relu` twice; its last call is the block's output.
    model = tvm.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    by_relu = GradCAM(model, "layer4.1.relu")(x, [1, 2], relu=False, normalize=False)
    by_block = GradCAM(model, "layer4.1")(x, [1, 2], relu=False, normalize=False)
    torch.testing.assert_close(by_relu, by_block)

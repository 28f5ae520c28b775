"""FullGrad against plain autograd and its definition; the model is left as it was."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from camkit import CamkitTypeError, CamkitValueError, FullGrad
from tests.helpers import assert_untouched, snapshot


def bn_net(dims: int = 2) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    torch.manual_seed(0)
    model = nn.Sequential(
        conv(2, 4, 3, padding=1),
        bn(4),
        nn.ReLU(inplace=True),
        pool(2),
        conv(4, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(5),
    )
    for module in model.modules():  # running statistics that are not the identity
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model


SHAPES = {1: (3, 2, 12), 2: (3, 2, 10, 8), 3: (3, 2, 6, 4, 8)}


def _reference(model: nn.Sequential, x: Tensor, classes: Tensor, scaling: str) -> Tensor:
    """FullGrad by its definition, with full backward passes and explicit loops; each term
    scaled as the authors' code does (``_postProcess`` on the whole sample, then
    ``interpolate(..., align_corners=True)``) or as pytorch-grad-cam does (each channel,
    dividing by its range plus 1e-7, then resized)."""
    model(x)  # initialize the lazy layer
    model.eval()
    biased = [m for m in model if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    biased += [m for m in model if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    store: dict[int, Tensor] = {}

    def keep(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        store[id(module)] = output
        return output.clone()

    handles = [m.register_forward_hook(keep) for m in biased]
    leaf = x.clone().requires_grad_(True)
    with torch.enable_grad():
        y = model(leaf)[torch.arange(len(x)), classes].sum()
        grads = torch.autograd.grad(y, [leaf, *(store[id(m)] for m in biased)])
    for handle in handles:
        handle.remove()
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]

    def psi(values: Tensor) -> Tensor:
        total = torch.zeros(len(x), *x.shape[2:], dtype=torch.float64)
        for i in range(len(x)):
            sample = values[i].abs().double()
            if scaling == "authors":
                sample = sample - sample.min()
                sample = sample / (sample.max() + 1e-6)
            for c in range(values.shape[1]):
                channel = sample[c]
                if scaling == "per_channel":
                    channel = (channel - channel.min()) / (channel.max() - channel.min() + 1e-7)
                up = F.interpolate(
                    channel[None, None], size=x.shape[2:], mode=mode,
                    align_corners=scaling == "authors",
                )  # fmt: skip
                total[i] += up[0, 0]
        return total

    total = psi(grads[0] * x)
    for module, grad in zip(biased, grads[1:], strict=True):
        bias = module.bias.detach()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            bias = bias - module.running_mean * module.weight.detach() / torch.sqrt(
                module.running_var + module.eps
            )
        total += psi(grad * bias.view(1, -1, *[1] * (x.dim() - 2)))
    flat = total.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(total)


@pytest.mark.parametrize("scaling", ["authors", "per_channel"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fullgrad_matches_its_definition(dims: int, scaling: str) -> None:
    model = bn_net(dims)
    x = torch.randn(SHAPES[dims])
    classes = torch.tensor([1, 4, 0])
    expected = _reference(model, x, classes, scaling)
    maps = FullGrad(model, scaling=scaling)(x, classes)
    torch.testing.assert_close(maps.double(), expected, rtol=1e-4, atol=1e-5)


def test_the_two_scalings_differ_where_terms_are_resized() -> None:
    model = bn_net()
    x = torch.randn(SHAPES[2])
    authors = FullGrad(model)(x, 1)
    per_channel = FullGrad(model, scaling="per_channel")(x, 1)
    assert float((authors - per_channel).abs().max()) > 0.05
    with pytest.raises(CamkitValueError, match=r"^scaling: got 'paper'; allowed: 'authors'"):
        FullGrad(model, scaling="paper")


def test_fullgrad_terms_and_k_targets() -> None:
    model = bn_net()
    x = torch.randn(SHAPES[2])
    model(x)
    model.eval()
    cam = FullGrad(model)
    result = cam.explain(x, torch.tensor([[1, 2], [0, 3], [4, 4]]))
    assert result.maps.shape == (3, 2, 10, 8)
    assert set(result.layer_maps) == {"input", "0", "1", "4"}
    for t in range(2):
        alone = cam(x, torch.tensor([[1, 2], [0, 3], [4, 4]])[:, t])
        torch.testing.assert_close(result.maps[:, t], alone)


def test_fullgrad_on_resnet18_with_in_place_relus_leaves_the_model_untouched() -> None:
    model = torchvision.models.resnet18(num_classes=5).train()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model, x)
    maps = FullGrad(model)(x, 3)
    assert maps.shape == (2, 32, 32) and bool(torch.isfinite(maps).all())
    assert len(FullGrad(model).layers) == 20  # its convolutions have no bias; 20 BNs do
    assert_untouched(before, snapshot(model, x))


def test_fullgrad_layers_and_errors() -> None:
    model = bn_net()
    model(torch.randn(SHAPES[2]))
    only = FullGrad(model, layers=["1"])
    assert [name for name, _ in only.layers] == ["1"]
    with pytest.raises(CamkitValueError, match="layers: '2' is not a convolution"):
        FullGrad(model, layers=["2"])
    with pytest.raises(CamkitValueError, match="model: has no convolution"):
        FullGrad(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(CamkitValueError, match="layers: got an empty list"):
        FullGrad(model, layers=[])
    with pytest.raises(CamkitTypeError, match="layers: got int; allowed: a layer's name"):
        FullGrad(model, layers=3)  # type: ignore[arg-type]


def test_fullgrad_takes_one_layer_by_name_or_module() -> None:
    # a name of several characters: a str is a sequence too, taken one character at a time
    outer = nn.Sequential()
    outer.add_module("body", bn_net())
    x = torch.randn(SHAPES[2])
    expected = FullGrad(outer, layers=["body.1"])(x, target=1)
    for one in ("body.1", outer.body[1]):
        cam = FullGrad(outer, layers=one)
        assert [name for name, _ in cam.layers] == ["body.1"]
        assert torch.equal(cam(x, target=1), expected)

"""Differentiable maps (``explain(..., differentiable=True)``): gradients of a loss on the maps.

Checked by ``torch.autograd.gradcheck`` in float64 (the maps as a function of
the input and of every parameter), against a plain-autograd Grad-CAM written
here with ``create_graph=True`` in train mode, and against the default maps'
values.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit.errors import CamkitValueError
from examples.mnist.model import MnistNet
from tests.helpers import MNIST_EXPLAINERS, MNIST_LAYER, assert_untouched, snapshot

Make = Callable[[nn.Module], camkit.BaseCAM]

# Layer "1" (Tanh) is followed by a smooth, nonlinear tail, so the gradient at the layer
# depends on the input and the parameters: gradcheck then covers create_graph's second order.
GRADIENT_METHODS: dict[str, Make] = {
    "GradCAM": lambda m: camkit.GradCAM(m, "1"),
    "GradCAMPlusPlus": lambda m: camkit.GradCAMPlusPlus(m, "1"),
    "XGradCAM": lambda m: camkit.XGradCAM(m, "1"),
    "HiResCAM": lambda m: camkit.HiResCAM(m, "1"),
    "LayerCAM": lambda m: camkit.LayerCAM(m, "1"),
    "LayerCAM tanh": lambda m: camkit.LayerCAM(m, "1", tanh_scale=2.0),
    "EigenCAM": lambda m: camkit.EigenCAM(m, "1"),
    "GradCAMElementWise": lambda m: camkit.GradCAMElementWise(m, "1"),
    "EigenGradCAM": lambda m: camkit.EigenGradCAM(m, "1"),
    "FinerCAM": lambda m: camkit.FinerCAM(m, "1", similar=1),
}
SUPPORTED = [
    *("GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"),
    *("GradCAMElementWise", "EigenGradCAM", "FinerCAM", "FEM"),
]
REFUSED = [
    *("ScoreCAM", "AblationCAM", "GuidedBackprop", "GuidedGradCAM", "SSCAM", "ISCAM"),
    *("ShapleyCAM", "SmoothGradCAMPlusPlus", "RandomCAM"),
]


def smooth_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.Tanh(),
        nn.Conv2d(3, 2, 3),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).double()


def smooth_cam_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)
    ).double()


class _Explained(nn.Module):
    """The maps as a module's output, so ``functional_call`` can vary every parameter."""

    def __init__(self, net: nn.Module, make: Make, options: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.cam = make(net)
        self.options = options

    def forward(self, x: Tensor) -> Tensor:
        return self.cam.explain(x, differentiable=True, **self.options).maps


def _gradcheck(net: nn.Module, make: Make, **options: Any) -> None:
    wrapper = _Explained(net, make, options)
    names = [n for n, _ in wrapper.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in wrapper.parameters()]
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)

    def maps(x: Tensor, *values: Tensor) -> Tensor:
        return torch.func.functional_call(wrapper, dict(zip(names, values, strict=True)), (x,))

    assert torch.autograd.gradcheck(maps, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_gradcheck_in_float64(method: str) -> None:
    _gradcheck(smooth_net(), GRADIENT_METHODS[method], target=torch.tensor([0, 2]))


def test_gradcheck_cam() -> None:
    _gradcheck(smooth_cam_net(), lambda m: camkit.CAM(m, "1", fc="4"), target=torch.tensor([1, 2]))


@pytest.mark.parametrize(
    "options",
    [
        {"relu": False, "normalize": False},
        {"upsample": False},
        {"target": torch.tensor([[0, 1], [2, 0]])},
        {"counterfactual": True, "eigen_smooth": True},
        {"aug_smooth": True},
    ],
    ids=["signed raw", "layer resolution", "k targets", "counterfactual eigen", "aug smooth"],
)
def test_gradcheck_with_options(options: dict[str, Any]) -> None:
    _gradcheck(smooth_net(), GRADIENT_METHODS["GradCAM"], **{"target": 1, **options})


def test_gradcheck_fused_layers() -> None:
    _gradcheck(smooth_net(), lambda m: camkit.GradCAM(m, ["1", "3"]), target=1)


@pytest.mark.parametrize("method", SUPPORTED)
@pytest.mark.parametrize(
    "options",
    [{}, {"relu": False, "normalize": False, "upsample": False}, {"eigen_smooth": True}],
    ids=["default", "raw", "eigen"],
)
def test_values_equal_the_default_maps(method: str, options: dict[str, Any]) -> None:
    model = MnistNet().eval()
    cam = MNIST_EXPLAINERS[method](model)
    x = torch.randn(5, 1, 28, 28)
    for target in (None, 3, torch.randint(0, 10, (5, 3))):
        plain = cam.explain(x, target, **options)
        with warnings.catch_warnings():  # the finite check reads the maps quietly
            warnings.simplefilter("error")
            kept = cam.explain(x, target, differentiable=True, **options)
        assert kept.maps.requires_grad and not plain.maps.requires_grad
        torch.testing.assert_close(kept.maps.detach(), plain.maps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(kept.output.detach(), plain.output)
        torch.testing.assert_close(kept.scores.detach(), plain.scores)


def test_cam_values_equal_the_default_maps() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()
    cam = camkit.CAM(model, "1", fc="4")
    x = torch.randn(3, 1, 10, 10)
    kept = cam.explain(x, 2, differentiable=True)
    torch.testing.assert_close(kept.maps.detach(), cam(x, 2))
    kept.maps.sum().backward()
    assert model[4].weight.grad is not None and model[4].weight.grad[2].abs().sum() > 0
    assert model[4].weight.grad[[0, 1, 3, 4]].abs().sum() == 0  # only class 2's weights read


def _train_net() -> nn.Sequential:
    """BatchNorm before the layer, Dropout after it: train mode changes both. In float64,
    so that gradients a BatchNorm cancels (the first bias's) compare as zeros."""
    return (
        nn.Sequential(
            nn.Conv2d(1, 6, 3),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 5, 3),
            nn.ReLU(),  # "4", explained
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.Linear(5 * 8 * 8, 4),
        )
        .double()
        .train()
    )


def _reference_step(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Grad-CAM by plain autograd with ``create_graph=True``, and the loss of one step."""
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        store["A"] = output
        return output.clone()

    handle = model[4].register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    a = store["A"]
    score = out.gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(score, a, create_graph=True)
    raw = (grad.mean(dim=(2, 3), keepdim=True) * a).sum(1).clamp_min(0)
    up = F.interpolate(raw[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    maps = ((flat - low) / (high - low).clamp_min(1e-6)).view_as(up)
    return F.cross_entropy(out, y) + (maps * mask).sum()


def test_a_training_step_matches_plain_autograd_in_train_mode() -> None:
    model = _train_net()
    reference = copy.deepcopy(model)
    x, y = torch.randn(6, 1, 12, 12, dtype=torch.float64), torch.randint(0, 4, (6,))
    mask = torch.zeros(12, 12, dtype=torch.float64)
    mask[:, :4] = 1
    x_ref = x.clone().requires_grad_(True)
    x = x.requires_grad_(True)

    torch.manual_seed(1)  # the same dropout mask in both
    _reference_step(reference, x_ref, y, mask).backward()

    before = snapshot(model)
    torch.manual_seed(1)
    explained = camkit.GradCAM(model, "4").explain(x, y, differentiable=True)
    after = snapshot(model)
    assert after.hooks == before.hooks and after.training == before.training
    assert all(g is None for g in after.grads.values())  # the call itself writes no .grad
    assert explained.output.grad_fn is not None
    loss = F.cross_entropy(explained.output, y) + (explained.maps * mask).sum()
    loss.backward()

    assert model.training and model[1].training and model[5].training
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert got.grad is not None and want.grad is not None, name
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-12)
    assert x.grad is not None and x_ref.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)
    # BatchNorm's running statistics moved exactly once, as in the reference step
    for got, want in zip(model.buffers(), reference.buffers(), strict=True):
        assert torch.equal(got, want)


def test_the_loss_on_the_maps_alone_reaches_parameters_before_the_layer() -> None:
    model = MnistNet().train()
    x = torch.randn(4, 1, 28, 28)
    maps = camkit.HiResCAM(model, MNIST_LAYER)(x, target=1, differentiable=True)
    maps.square().sum().backward()
    conv1 = model.features.conv1.weight.grad
    assert conv1 is not None and conv1.abs().sum() > 0


def test_under_autocast() -> None:
    model = MnistNet().train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    cam = camkit.GradCAM(model, MNIST_LAYER)

    def gradients(autocast: bool) -> list[Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            explained = cam.explain(x, y, differentiable=True)
            loss = F.cross_entropy(explained.output.float(), y) + explained.maps.mean()
        assert explained.maps.dtype == torch.float32
        assert (explained.output.dtype == torch.bfloat16) == autocast
        loss.backward()
        return [p.grad.flatten() for p in model.parameters() if p.grad is not None]

    full, mixed = torch.cat(gradients(False)), torch.cat(gradients(True))
    assert mixed.isfinite().all() and len(mixed) == len(full)
    assert F.cosine_similarity(full, mixed, dim=0) > 0.98


def test_leaves_grad_mode_and_model_as_they_were() -> None:
    model = MnistNet().eval()
    x = torch.randn(3, 1, 28, 28)
    before = snapshot(model, x)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            maps = camkit.GradCAM(model, MNIST_LAYER)(x, differentiable=True)
            assert torch.is_grad_enabled() == grad_mode
        assert maps.requires_grad  # asked for explicitly: recorded even under no_grad
    assert_untouched(before, snapshot(model, x))


def test_the_default_path_keeps_no_graph() -> None:
    model = MnistNet().train()
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    explained = camkit.GradCAM(model, MNIST_LAYER).explain(x)
    assert not explained.maps.requires_grad and not explained.output.requires_grad
    assert not explained.scores.requires_grad and model.training


@pytest.mark.parametrize("method", REFUSED)
def test_methods_that_cannot_be_differentiated_say_so(method: str) -> None:
    model = MnistNet().eval()
    x = torch.randn(2, 1, 28, 28)
    before = snapshot(model, x)
    with pytest.raises(CamkitValueError, match=r"^differentiable: .*GradCAM"):
        MNIST_EXPLAINERS[method](model).explain(x, differentiable=True)
    assert_untouched(before, snapshot(model, x))


@pytest.mark.parametrize("method", SUPPORTED)
def test_one_forward_pass_serves_both_losses(method: str) -> None:
    model = MnistNet().train()
    runs: list[int] = []
    handle = model.register_forward_hook(lambda m, i, o: runs.append(1))
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    try:
        for target in (y, torch.randint(0, 10, (4, 3))):
            runs.clear()
            explained = MNIST_EXPLAINERS[method](model).explain(x, target, differentiable=True)
            assert len(runs) == 1
            loss = F.cross_entropy(explained.output, y) + explained.maps.sum()
            loss.backward()
            assert len(runs) == 1  # the backward pass runs no forward
    finally:
        handle.remove()


def test_the_error_messages_list_exactly_the_differentiable_methods() -> None:
    from camkit.explainer import differentiable_methods

    listed = set(differentiable_methods().replace(" and ", ", ").split(", "))
    methods = {name: getattr(camkit, name) for name in camkit.methods.__all__}
    differentiable = {
        name
        for name, method in methods.items()
        if issubclass(method, camkit.Explainer) and method.differentiable
    }
    assert listed == differentiable
    assert set(SUPPORTED) <= differentiable

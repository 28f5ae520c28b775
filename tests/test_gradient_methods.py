"""Gradient methods beyond the first five, each against an independent computation:
element-wise Grad-CAM, Eigen-Grad-CAM, Shapley-CAM, Smooth Grad-CAM++, Finer-CAM,
Seg-Eigen-CAM and RefineCAM.

As in ``test_methods.py``: plain autograd over the whole model, explicit loops,
numpy and float64 linear algebra; none of it calls camkit's weighting code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from camkit import (
    CamkitTypeError,
    CamkitValueError,
    EigenGradCAM,
    FinerCAM,
    FinerTarget,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    RefineCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
)
from tests.method_cases import CLASSES, SHAPES, SMOOTH_SHAPES, raw_maps, reference, smooth_net
from tests.models import conv_net

# --- element-wise Grad-CAM and Eigen-Grad-CAM ---


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("layer", ["2", "4", "6"])
def test_elementwise_gradcam_sums_positive_products(dims: int, layer: str) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, g = reference(model, layer, x)
    expected = (g * a[:, None]).clamp(min=0).sum(dim=2)
    torch.testing.assert_close(
        raw_maps(GradCAMElementWise(model, layer), x), expected, rtol=1e-4, atol=1e-6
    )


def test_elementwise_gradcam_differs_from_hirescam_where_channels_cancel() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    elementwise = raw_maps(GradCAMElementWise(model, "4"), x)
    hires = raw_maps(HiResCAM(model, "4"), x)
    assert bool((elementwise >= hires.clamp(min=0) - 1e-6).all())  # a sum of positive parts
    assert bool((elementwise > hires.clamp(min=0) + 1e-4).any())


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_eigen_gradcam_projects_gradient_times_activation(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, g = reference(model, "4", x)
    raw = raw_maps(EigenGradCAM(model, "4"), x)
    for i in range(len(x)):
        for t in range(CLASSES.shape[1]):
            matrix = (g[i, t] * a[i]).flatten(1).T.numpy()  # positions x channels, uncentred
            _, _, vt = np.linalg.svd(matrix, full_matrices=False)
            projection = matrix @ vt[0]
            projection *= 1 if projection.sum() >= 0 else -1
            expected = torch.from_numpy(projection).view(a.shape[2:])
            torch.testing.assert_close(raw[i, t], expected, rtol=1e-4, atol=1e-6)


# --- Shapley-CAM ---


def _hessian_reference(model: nn.Sequential, x: Tensor, classes: Tensor) -> Tensor:
    """Shapley-CAM's raw maps with the full Hessian of each score at layer "2"."""
    head = model[3:]
    a = model[:3](x).detach().double()
    out = torch.zeros(len(x), classes.shape[1], *a.shape[2:], dtype=torch.float64)
    for i in range(len(x)):
        for t in range(classes.shape[1]):

            def score(activation: Tensor, i: int = i, t: int = t) -> Tensor:
                return head.double()(activation[None])[0, classes[i, t]]

            hessian = torch.autograd.functional.hessian(score, a[i])
            gradient = torch.autograd.functional.jacobian(score, a[i])
            flat = a[i].numel()
            hv = (hessian.reshape(flat, flat) @ a[i].reshape(flat)).view_as(a[i])
            weights = (gradient - 0.5 * hv).flatten(1).mean(dim=1)
            out[i, t] = torch.einsum("c,c...->...", weights, a[i])
    head.float()
    return out


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shapley_cam_matches_the_hessian_formula(dims: int) -> None:
    model = smooth_net(dims)
    x = torch.randn(SMOOTH_SHAPES[dims])
    expected = _hessian_reference(model, x, CLASSES)
    raw = raw_maps(ShapleyCAM(model, "2"), x)
    gradcam = raw_maps(GradCAM(model, "2"), x)
    assert (raw - gradcam).abs().max() > 1e-3 * raw.abs().max()  # the Hessian term matters
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-6)


def test_shapley_cam_is_gradcam_on_a_piecewise_linear_head() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    torch.testing.assert_close(
        raw_maps(ShapleyCAM(model, "4"), x), raw_maps(GradCAM(model, "4"), x)
    )


def test_shapley_cam_counterfactual_negates_the_corrected_gradient() -> None:
    model = smooth_net()
    x = torch.randn(SMOOTH_SHAPES[2])
    cam = ShapleyCAM(model, "2")
    against = cam(x, CLASSES, relu=False, upsample=False, normalize=False, counterfactual=True)
    torch.testing.assert_close(against.double(), -raw_maps(cam, x))


# --- Smooth Grad-CAM++ ---


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_smooth_gradcam_pp_matches_the_averaged_derivatives(dims: int) -> None:
    model = smooth_net(dims)
    x = torch.randn(SMOOTH_SHAPES[dims])
    samples, std, seed = 3, 0.4, 7
    generator = torch.Generator().manual_seed(seed)
    a, _ = reference(model, "2", x)
    moments = [torch.zeros(()) for _ in range(3)]
    for _ in range(samples):
        noisy = x + std * torch.randn(x.shape, generator=generator)
        _, g = reference(model, "2", noisy)
        moments = [m + g**p for m, p in zip(moments, (1, 2, 3), strict=True)]
    d1, d2, d3 = (m / samples for m in moments)
    weights = torch.zeros(*d1.shape[:3], dtype=torch.float64)
    for i, t, c in np.ndindex(*weights.shape):
        total = float(a[i, c].sum())
        for position in np.ndindex(*a.shape[2:]):
            den = 2 * d2[i, t, c][position] + total * d3[i, t, c][position]
            alpha = d2[i, t, c][position] / den if den != 0 else 0.0
            weights[i, t, c] += alpha * max(float(d1[i, t, c][position]), 0.0)
    expected = torch.einsum("ntc,nc...->nt...", weights, a)
    cam = SmoothGradCAMPlusPlus(model, "2", samples=samples, noise_std=std, seed=seed)
    torch.testing.assert_close(raw_maps(cam, x), expected, rtol=1e-4, atol=1e-6)


def test_smooth_gradcam_pp_keeps_the_explained_class_on_noisy_copies() -> None:
    model = smooth_net()
    x = torch.randn(SMOOTH_SHAPES[2])
    predicted = model(x).argmax(1)
    cam = SmoothGradCAMPlusPlus(model, "2", samples=2, noise_std=5.0, seed=0)
    torch.testing.assert_close(cam(x), cam(x, predicted))
    result = cam.explain(x)
    assert torch.equal(result.classes, predicted)


def test_smooth_gradcam_pp_is_reproducible_with_a_seed() -> None:
    model = smooth_net()
    x = torch.randn(SMOOTH_SHAPES[2])
    first = SmoothGradCAMPlusPlus(model, "2", seed=1)(x)
    torch.testing.assert_close(SmoothGradCAMPlusPlus(model, "2", seed=1)(x), first)
    assert not torch.allclose(SmoothGradCAMPlusPlus(model, "2", seed=2)(x), first)


# --- Finer-CAM ---


def _finer_score(logits: Tensor, main: int, alpha: float, similar: int) -> Tensor:
    values = logits.detach().numpy()
    distance = np.abs(values - values[main])
    distance[main] = np.inf
    compared = np.argsort(distance, kind="stable")[:similar]
    p = torch.softmax(logits, dim=0)
    return sum(p[j] * (logits[main] - alpha * logits[j]) for j in compared) / p[compared].sum()


@pytest.mark.parametrize(("alpha", "similar"), [(1.0, 3), (0.5, 1), (0.0, 2)])
def test_finer_cam_is_gradcam_of_the_finer_score(alpha: float, similar: int) -> None:
    model = conv_net(2, classes=6)
    x = torch.randn(3, 2, 10, 10)
    layer = model.get_submodule("4")
    store: dict[str, Tensor] = {}

    def keep(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        store["A"] = output
        return output.clone()  # the in-place ReLU after the layer must not alter it

    handle = layer.register_forward_hook(keep)
    classes = [2, 0, 5]
    expected = []
    try:
        for i in range(len(x)):
            store.clear()
            with torch.enable_grad():
                logits = model(x[i : i + 1].clone())[0]
                score = _finer_score(logits, classes[i], alpha, similar)
                (g,) = torch.autograd.grad(score, store["A"])
            a = store["A"].detach()[0].double()
            expected.append(torch.einsum("c,c...->...", g[0].double().mean(dim=(1, 2)), a))
    finally:
        handle.remove()
    cam = FinerCAM(model, "4", alpha=alpha, similar=similar)
    raw = cam(x, torch.tensor(classes), relu=False, upsample=False, normalize=False)
    torch.testing.assert_close(raw.double(), torch.stack(expected), rtol=1e-4, atol=1e-6)


def test_finer_cam_with_alpha_zero_is_gradcam() -> None:
    model = conv_net(2, classes=6)
    x = torch.randn(3, 2, 10, 10)
    # alpha = 0: the score is y^c times a positive constant, so the scaled maps agree
    torch.testing.assert_close(FinerCAM(model, "4", alpha=0.0)(x), GradCAM(model, "4")(x))


def test_finer_target_keeps_its_classes_for_rescored_copies() -> None:
    logits = torch.tensor([[5.0, 4.5, 0.0, 3.0], [0.0, 1.0, 2.0, 9.0]])
    target = FinerTarget(None, similar=2)
    explained = target(logits)
    assert target.compared is not None
    assert target.compared.tolist() == [[[1, 3]], [[2, 1]]]
    # a perturbed copy of sample 0 whose logits reorder is still compared with 1 and 3
    copy = torch.tensor([[0.0, 4.0, 3.9, 1.0]])
    p = copy.softmax(1)[0]
    by_hand = (p[1] * (0.0 - 4.0) + p[3] * (0.0 - 1.0)) / (p[1] + p[3])
    torch.testing.assert_close(target(copy, torch.tensor([0])), by_hand[None])
    assert explained.shape == (2,)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: FinerTarget(similar=0), CamkitValueError, "similar: got 0"),
        (lambda: FinerTarget(alpha="1"), CamkitValueError, "alpha: got '1'"),
    ],
)
def test_finer_target_options_are_checked(make: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_finer_target_with_k_classes_equals_k_separate_targets() -> None:
    logits = torch.randn(4, 7)
    classes = torch.randint(0, 7, (4, 3))
    together = FinerTarget(classes, alpha=0.7)(logits)
    for t in range(3):
        alone = FinerTarget(classes[:, t], alpha=0.7)(logits)
        torch.testing.assert_close(together[:, t], alone)


def test_finer_cam_refuses_a_callable_and_too_few_classes() -> None:
    model = conv_net(2, classes=3)
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(CamkitTypeError, match="target: FinerCAM compares"):
        FinerCAM(model, "4")(x, lambda out: out[:, 0])
    with pytest.raises(CamkitValueError, match="C > 3"):
        FinerCAM(model, "4")(x)


# --- Seg-Eigen-CAM and RefineCAM ---


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_seg_eigen_cam_projects_centred_absolute_gradient_times_activation(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, g = reference(model, "4", x)
    raw = raw_maps(SegEigenCAM(model, "4"), x)
    for i in range(len(x)):
        for t in range(CLASSES.shape[1]):
            matrix = (g[i, t].abs() * a[i]).flatten(1).T.numpy()  # positions x channels
            matrix = matrix - matrix.mean(axis=0)
            _, _, vt = np.linalg.svd(matrix, full_matrices=False)
            projection = matrix @ vt[0]
            if abs(projection.min()) > abs(projection.max()):
                projection = -projection
            expected = torch.from_numpy(projection).view(a.shape[2:])
            torch.testing.assert_close(raw[i, t], expected, rtol=1e-4, atol=1e-6)


def test_refine_cam_multiplies_the_scaled_maps_of_its_layers() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    layers = ["2", "4", "6"]
    per_layer = [GradCAMPlusPlus(model, layer)(x, CLASSES) for layer in layers]  # each in [0, 1]
    product = per_layer[0] * per_layer[1] * per_layer[2]
    flat = product.flatten(2)
    low, high = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    expected = torch.where(high > low, (flat - low) / (high - low), 0.0).view_as(product)
    result = RefineCAM(model, layers).explain(x, CLASSES)
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=1e-5)
    for layer, maps in zip(layers, per_layer, strict=True):
        torch.testing.assert_close(result.layer_maps[layer], maps)
    mean = GradCAMPlusPlus(model, layers)(x, CLASSES)  # the default fusion differs
    assert not torch.allclose(mean, result.maps, atol=1e-3)


def test_any_method_fuses_its_layers_by_product() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    torch.testing.assert_close(
        GradCAM(model, ["2", "4"], fuse="product")(x, 1),
        _scaled_product(GradCAM(model, "2")(x, 1), GradCAM(model, "4")(x, 1)),
    )
    with pytest.raises(CamkitValueError, match="fuse: got 'max'; allowed: 'mean', 'product'"):
        GradCAM(model, ["2", "4"], fuse="max")


def _scaled_product(a: Tensor, b: Tensor) -> Tensor:
    product = (a * b).flatten(1)
    low, high = product.amin(1, keepdim=True), product.amax(1, keepdim=True)
    return ((product - low) / (high - low)).view_as(a)

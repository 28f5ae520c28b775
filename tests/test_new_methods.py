"""The methods added on the core in issue 16, each against an independent computation.

As in ``test_methods.py``: plain autograd over the whole model, explicit loops,
numpy and float64 linear algebra; none of it calls camkit's weighting code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit import (
    FEM,
    ISCAM,
    SSCAM,
    CamkitTypeError,
    CamkitValueError,
    EigenGradCAM,
    FinerCAM,
    FinerTarget,
    GradCAM,
    GradCAMElementWise,
    HiResCAM,
    RandomCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
)
from tests.helpers import reference_activations_and_gradients
from tests.models import conv_net

SHAPES = {1: (2, 2, 13), 2: (2, 2, 11, 9), 3: (2, 2, 7, 6, 8)}
CLASSES = torch.tensor([[1, 3], [4, 0]])


def _raw(cam: Any, x: Tensor, classes: Any = CLASSES) -> Tensor:
    return cam(x, classes, relu=False, upsample=False, normalize=False).double()


def _reference(model: nn.Module, layer: str, x: Tensor, classes: Tensor = CLASSES) -> Any:
    a, g = reference_activations_and_gradients(model, model.get_submodule(layer), x, classes)
    return a, g


def smooth_net(dims: int = 2) -> nn.Sequential:
    """conv -> tanh -> conv ("2") -> softplus -> flatten -> linear: a tail with curvature."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    size = {1: 9, 2: 9 * 7, 3: 5 * 4 * 6}[dims]
    torch.manual_seed(1)
    return nn.Sequential(
        conv(2, 4, 3, padding=1),
        nn.Tanh(),
        conv(4, 3, 3, padding=1),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(3 * size, 5),
    ).eval()


SMOOTH_SHAPES = {1: (2, 2, 9), 2: (2, 2, 9, 7), 3: (2, 2, 5, 4, 6)}


# --- element-wise Grad-CAM and Eigen-Grad-CAM ---


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("layer", ["2", "4", "6"])
def test_elementwise_gradcam_sums_positive_products(dims: int, layer: str) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, g = _reference(model, layer, x)
    expected = (g * a[:, None]).clamp(min=0).sum(dim=2)
    torch.testing.assert_close(
        _raw(GradCAMElementWise(model, layer), x), expected, rtol=1e-4, atol=1e-6
    )


def test_elementwise_gradcam_differs_from_hirescam_where_channels_cancel() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    elementwise = _raw(GradCAMElementWise(model, "4"), x)
    hires = _raw(HiResCAM(model, "4"), x)
    assert bool((elementwise >= hires.clamp(min=0) - 1e-6).all())  # a sum of positive parts
    assert bool((elementwise > hires.clamp(min=0) + 1e-4).any())


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_eigen_gradcam_projects_gradient_times_activation(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, g = _reference(model, "4", x)
    raw = _raw(EigenGradCAM(model, "4"), x)
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
    raw = _raw(ShapleyCAM(model, "2"), x)
    gradcam = _raw(GradCAM(model, "2"), x)
    assert (raw - gradcam).abs().max() > 1e-3 * raw.abs().max()  # the Hessian term matters
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-6)


def test_shapley_cam_is_gradcam_on_a_piecewise_linear_head() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    torch.testing.assert_close(_raw(ShapleyCAM(model, "4"), x), _raw(GradCAM(model, "4"), x))


def test_shapley_cam_counterfactual_negates_the_corrected_gradient() -> None:
    model = smooth_net()
    x = torch.randn(SMOOTH_SHAPES[2])
    cam = ShapleyCAM(model, "2")
    against = cam(x, CLASSES, relu=False, upsample=False, normalize=False, counterfactual=True)
    torch.testing.assert_close(against.double(), -_raw(cam, x))


# --- Smooth Grad-CAM++ ---


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_smooth_gradcam_pp_matches_the_averaged_derivatives(dims: int) -> None:
    model = smooth_net(dims)
    x = torch.randn(SMOOTH_SHAPES[dims])
    samples, std, seed = 3, 0.4, 7
    generator = torch.Generator().manual_seed(seed)
    a, _ = _reference(model, "2", x)
    moments = [torch.zeros(()) for _ in range(3)]
    for _ in range(samples):
        noisy = x + std * torch.randn(x.shape, generator=generator)
        _, g = _reference(model, "2", noisy)
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
    torch.testing.assert_close(_raw(cam, x), expected, rtol=1e-4, atol=1e-6)


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


# --- FEM ---


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
def test_fem_weights_are_the_fraction_of_strong_responses(dims: int, k: float) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, _ = _reference(model, "4", x)
    raw = _raw(FEM(model, "4", k=k), x)
    for i in range(len(x)):
        flat = a[i].flatten(1).numpy()
        threshold = flat.mean(axis=1) + k * flat.std(axis=1)
        weights = (flat > threshold[:, None]).mean(axis=1)
        expected = torch.einsum("c,c...->...", torch.from_numpy(weights), a[i])
        for t in range(CLASSES.shape[1]):
            torch.testing.assert_close(raw[i, t], expected, rtol=1e-5, atol=1e-7)


# --- Random-CAM ---


def test_random_cam_weights_are_uniform_on_minus_one_one() -> None:
    # 64 (rectified, so independent) channels on a 16 x 16 grid: each raw map is
    # sum_c w_c A^c, so least squares on the channels recovers every sample's weights
    model = nn.Sequential(
        nn.Conv2d(2, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 256, 10)
    )
    x = torch.randn(8, 2, 16, 16)
    classes = torch.arange(10).expand(8, 10)
    raw = _raw(RandomCAM(model, "1", seed=3), x, classes)
    a = model[:2](x).detach().double()
    weights = torch.stack(
        [torch.linalg.lstsq(a[i].flatten(1).T, raw[i].flatten(1).T).solution.T for i in range(8)]
    )  # (8, 10, 64)
    flat = weights.flatten()
    assert float(flat.min()) >= -1 - 1e-4 and float(flat.max()) <= 1 + 1e-4
    assert abs(float(flat.mean())) < 0.05
    assert abs(float(flat.var()) - 1 / 3) < 0.03
    assert not torch.allclose(weights[0, 0], weights[0, 1])  # per target
    assert not torch.allclose(weights[0, 0], weights[1, 0])  # per sample


def test_random_cam_seed_fixes_the_maps() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    first = RandomCAM(model, "4", seed=0)(x)
    torch.testing.assert_close(RandomCAM(model, "4", seed=0)(x), first)
    assert not torch.allclose(RandomCAM(model, "4", seed=1)(x), first)


# --- SS-CAM and IS-CAM ---


def _smoothed_score_cam_reference(
    model: nn.Module, x: Tensor, samples: int, vary: Any, classes: Tensor = CLASSES
) -> Tensor:
    a, _ = _reference(model, "4", x, classes)
    n, c = a.shape[:2]
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    totals = torch.zeros(n, c, classes.shape[1], dtype=torch.float64)
    with torch.no_grad():
        for s in range(samples):
            masks = []
            for i in range(n):
                for ch in range(c):
                    up = F.interpolate(a[i, ch][None, None].float(), size=x.shape[2:], mode=mode)
                    up = up[0, 0].double()
                    masks.append((up - up.min()) / (up.max() - up.min()))
            varied = vary(torch.stack(masks), s)  # every mask of sample s, in row order
            for i in range(n):
                for ch in range(c):
                    masked = (x[i] * varied[i * c + ch].float())[None]
                    totals[i, ch] += model(masked)[0].double()[classes[i]]
    weights = torch.softmax(totals / samples, dim=1)  # (n, c, k)
    return torch.einsum("nck,nc...->nk...", weights, a)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_ss_cam_matches_its_formula(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    generator = torch.Generator().manual_seed(11)

    def noisy(masks: Tensor, s: int) -> Tensor:
        return masks + 0.7 * torch.randn(masks.shape, generator=generator).double()

    expected = _smoothed_score_cam_reference(model, x, 3, noisy)
    cam = SSCAM(model, "4", samples=3, noise_std=0.7, seed=11, batch_size=10)  # one batch
    torch.testing.assert_close(_raw(cam, x), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_is_cam_matches_its_formula(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    samples = 4

    def scaled(masks: Tensor, s: int) -> Tensor:
        return masks * sum(j / samples for j in range(1, s + 2))

    expected = _smoothed_score_cam_reference(model, x, samples, scaled)
    cam = ISCAM(model, "4", samples=samples, batch_size=3)
    torch.testing.assert_close(_raw(cam, x), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: SSCAM(m, "4", samples=0), "samples: got 0"),
        (lambda m: SSCAM(m, "4", noise_std=-1.0), "noise_std: got -1.0"),
        (lambda m: SSCAM(m, "4", seed=1.5), "seed: got 1.5"),
        (lambda m: ISCAM(m, "4", samples=True), "samples: got True"),
        (lambda m: SmoothGradCAMPlusPlus(m, "4", noise_std=float("nan")), "noise_std: got nan"),
        (lambda m: RandomCAM(m, "4", seed="0"), "seed: got '0'"),
        (lambda m: FEM(m, "4", k=-2), "k: got -2"),
        (lambda m: FinerCAM(m, "4", similar=0), "similar: got 0"),
    ],
)
def test_new_method_options_are_checked(make: Any, message: str) -> None:
    with pytest.raises(CamkitValueError, match=message):
        make(conv_net(2))

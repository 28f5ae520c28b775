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
    KPCACAM,
    SSCAM,
    CamkitTypeError,
    CamkitValueError,
    EigenGradCAM,
    FinerCAM,
    FinerTarget,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    RandomCAM,
    RefineCAM,
    SegEigenCAM,
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
        (lambda m: KPCACAM(m, "4", kernel="laplacian"), "kernel: got 'laplacian'"),
        (lambda m: KPCACAM(m, "4", gamma=0), "gamma: got 0"),
    ],
)
def test_new_method_options_are_checked(make: Any, message: str) -> None:
    with pytest.raises(CamkitValueError, match=message):
        make(conv_net(2))


# --- Seg-Eigen-CAM and RefineCAM ---


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_seg_eigen_cam_projects_centred_absolute_gradient_times_activation(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, g = _reference(model, "4", x)
    raw = _raw(SegEigenCAM(model, "4"), x)
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


# --- test-time augmentation ---


def _manual_augmented(cam: Any, x: Tensor, classes: Tensor, pairs: list[Any]) -> Tensor:
    """The mean of x's raw map and each copy's, brought back by hand."""
    options = {"normalize": False}
    total = cam(x, classes, **options)
    for apply, back in pairs:
        total = total + back(cam(apply(x), classes, **options))
    return total / (1 + len(pairs))


def test_augmentations_average_the_maps_brought_back() -> None:
    from camkit.augment import horizontal_flip, photometric, rotation, scaled, vertical_flip

    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3))
    model.append(nn.Flatten()).append(nn.Linear(36, 5)).eval()
    x = torch.randn(3, 2, 12, 12)
    classes = torch.tensor([1, 4, 0])
    cam = GradCAM(model, "1")
    pairs = [
        (lambda t: t.flip(-1), lambda m: m.flip(-1)),
        (lambda t: t.flip(-2), lambda m: m.flip(-2)),
        (lambda t: torch.rot90(t, 1, (-2, -1)), lambda m: torch.rot90(m, -1, (-2, -1))),
        (
            lambda t: F.interpolate(t, size=(18, 18), mode="bilinear"),
            lambda m: F.interpolate(m[:, None], size=(12, 12), mode="bilinear")[:, 0],
        ),
        (lambda t: 0.5 * t, lambda m: m),
    ]
    expected = _manual_augmented(cam, x, classes, pairs)
    augment = [horizontal_flip, vertical_flip, rotation(1), scaled(1.5)]
    augment.append(photometric(lambda t: 0.5 * t))
    got = cam(x, classes, normalize=False, augment=augment)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_aug_smooth_is_the_horizontal_flip_augmentation() -> None:
    from camkit.augment import horizontal_flip

    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    cam = GradCAM(model, ["2", "4"])
    torch.testing.assert_close(
        cam(x, CLASSES, aug_smooth=True), cam(x, CLASSES, augment=[horizontal_flip])
    )


def test_augmented_copies_explain_the_classes_explained_on_x() -> None:
    from camkit.augment import rotation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
    model.append(nn.Linear(400, 5)).eval()
    x = torch.randn(6, 2, 10, 10)
    predicted = model(x).argmax(1)
    copies = model(torch.rot90(x, 1, (-2, -1))).argmax(1)
    assert not torch.equal(predicted, copies)  # some copy alone would explain another class
    cam = GradCAM(model, "1")
    torch.testing.assert_close(
        cam(x, augment=[rotation(1)]), cam(x, predicted, augment=[rotation(1)])
    )


def test_augmentation_errors_name_the_argument_and_leave_the_model_untouched() -> None:
    from camkit import SegmentationTarget
    from camkit.augment import Augmentation, horizontal_flip, photometric
    from tests.helpers import assert_untouched, snapshot

    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    before = snapshot(model, x)
    cam = GradCAM(model, "4")
    with pytest.raises(CamkitTypeError, match="augment: got 'flip'"):
        cam(x, 1, augment=["flip"])
    bad = Augmentation(lambda t: t, lambda maps, size: maps[..., 1:], "crop")
    with pytest.raises(CamkitValueError, match="augment: 'crop' brought a map"):
        cam(x, 1, augment=[bad])
    pixels = SegmentationTarget(1, mask=torch.ones(11, 9, dtype=torch.bool))
    with pytest.raises(CamkitValueError, match=r"augment: the target .*horizontal flip"):
        cam(x, pixels, augment=[horizontal_flip])
    assert_untouched(before, snapshot(model, x))
    cam(x, 1, augment=[photometric(lambda t: 2 * t)])  # values only: allowed


# --- KPCA-CAM ---


def _kernel(rows: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    n = len(rows)
    out = np.zeros((n, n))
    for p in range(n):
        for q in range(n):
            a, b = rows[p], rows[q]
            if kernel == "sigmoid":
                out[p, q] = np.tanh(gamma * a @ b + 1.0)
            elif kernel == "rbf":
                out[p, q] = np.exp(-gamma * ((a - b) ** 2).sum())
            elif kernel == "poly":
                out[p, q] = (gamma * a @ b + 1.0) ** 3
            elif kernel == "cosine":
                norm = np.linalg.norm(a) * np.linalg.norm(b)
                out[p, q] = a @ b / norm if norm > 0 else 0.0
            else:
                out[p, q] = a @ b
    return out


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "cosine", "linear"])
def test_kpca_cam_is_the_first_kernel_principal_component(kernel: str) -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 8, 6)
    a, _ = _reference(model, "4", x)
    raw = _raw(KPCACAM(model, "4", kernel=kernel), x)
    for i in range(len(x)):
        rows = a[i].flatten(1).T.numpy()
        rows = rows - rows.mean(axis=0)
        k = _kernel(rows, kernel, 1.0 / rows.shape[1])
        ones = np.full_like(k, 1.0 / len(k))
        centred = k - ones @ k - k @ ones + ones @ k @ ones
        values, vectors = np.linalg.eigh(centred)
        projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        if projection[np.abs(projection).argmax()] < 0:
            projection = -projection
        expected = torch.from_numpy(projection).view(a.shape[2:])
        for t in range(CLASSES.shape[1]):
            torch.testing.assert_close(raw[i, t], expected, rtol=1e-4, atol=1e-6)


def test_kpca_cam_with_the_linear_kernel_is_centred_pca() -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 8, 6)
    a, _ = _reference(model, "4", x)
    raw = _raw(KPCACAM(model, "4", kernel="linear"), x)
    for i in range(len(x)):
        rows = a[i].flatten(1).T.numpy()
        rows = rows - rows.mean(axis=0)
        _, _, vt = np.linalg.svd(rows, full_matrices=False)
        projection = rows @ vt[0]
        if projection[np.abs(projection).argmax()] < 0:
            projection = -projection
        torch.testing.assert_close(
            raw[i, 0], torch.from_numpy(projection).view(a.shape[2:]), rtol=1e-4, atol=1e-6
        )

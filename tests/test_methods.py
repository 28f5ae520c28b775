"""Every CAM method against an independent computation of its paper's formula.

The references below use plain autograd (a full backward pass through the
whole model), explicit loops and float64 tensor algebra; none of them calls
camkit's weighting code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit import (
    CAM,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from tests.helpers import reference_activations_and_gradients
from tests.models import cam_net, conv_net

SHAPES = {1: (2, 2, 13), 2: (2, 2, 11, 9), 3: (2, 2, 7, 6, 8)}
CLASSES = torch.tensor([[1, 3], [4, 0]])


def _raw(cam: Any, x: Tensor, classes: Tensor = CLASSES) -> Tensor:
    return cam(x, classes, relu=False, upsample=False, normalize=False).double()


# --- references: weights per (sample, target, channel) from A (N,1,C,*s) and G (N,k,C,*s) ---


def ref_gradcam(a: Tensor, g: Tensor) -> Tensor:
    return torch.einsum("nkc...->nkc", g) / np.prod(g.shape[3:])


def ref_gradcam_pp(a: Tensor, g: Tensor) -> Tensor:
    n, k, c = g.shape[:3]
    out = torch.zeros(n, k, c, dtype=torch.float64)
    for i in range(n):
        for t in range(k):
            for ch in range(c):
                gij, total = g[i, t, ch].flatten(), a[i, 0, ch].sum()
                num, den = gij**2, 2 * gij**2 + total * gij**3
                alpha = [
                    float(nu / de) if gi != 0 and de != 0 else 0.0
                    for nu, de, gi in zip(num, den, gij, strict=True)
                ]
                out[i, t, ch] = sum(
                    al * max(float(gi), 0.0) for al, gi in zip(alpha, gij, strict=True)
                )
    return out


def ref_xgradcam(a: Tensor, g: Tensor) -> Tensor:
    total = a.flatten(3).sum(3)
    return torch.where(total != 0, (a * g).flatten(3).sum(3) / total, torch.zeros(()))


def ref_hirescam(a: Tensor, g: Tensor) -> Tensor:
    return g


def ref_layercam(a: Tensor, g: Tensor) -> Tensor:
    return g.clamp(min=0)


REFERENCES: dict[type, Callable[[Tensor, Tensor], Tensor]] = {
    GradCAM: ref_gradcam,
    GradCAMPlusPlus: ref_gradcam_pp,
    XGradCAM: ref_xgradcam,
    HiResCAM: ref_hirescam,
    LayerCAM: ref_layercam,
}


def _map(a: Tensor, w: Tensor) -> Tensor:
    if w.dim() == 3:
        w = w.view(*w.shape, *([1] * (a.dim() - 3)))
    return (w * a).sum(2)


@pytest.mark.parametrize("method", list(REFERENCES), ids=lambda m: m.__name__)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("layer", ["2", "4", "6"])
def test_gradient_methods_match_their_formulas(method: type, dims: int, layer: str) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, g = reference_activations_and_gradients(model, model.get_submodule(layer), x, CLASSES)
    a = a[:, None]
    expected = _map(a, REFERENCES[method](a, g))
    raw = _raw(method(model, layer), x)
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-6)


def test_gradcam_pp_with_gradients_whose_cube_overflows_float32() -> None:
    model = conv_net(2)
    with torch.no_grad():
        model[-1].weight.mul_(1e16)  # gradients at the layer near 1e14: g**3 > float32 max
    x = torch.randn(SHAPES[2])
    a, g = reference_activations_and_gradients(model, model.get_submodule("6"), x, CLASSES)
    assert float(g.abs().max()) ** 3 > torch.finfo(torch.float32).max
    a = a[:, None]
    expected = _map(a, ref_gradcam_pp(a, g))
    raw = _raw(GradCAMPlusPlus(model, "6"), x)
    assert raw.abs().max() > 0
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=0)


def test_layercam_tanh_scaling_by_formula() -> None:
    model = conv_net(2)
    x = torch.randn(SHAPES[2])
    a, g = reference_activations_and_gradients(model, model.get_submodule("2"), x, CLASSES)
    plain = _map(a[:, None], g.clamp(min=0))
    peak = plain.flatten(2).max(2).values[..., None, None]
    expected = torch.tanh(2.0 * plain / peak)
    torch.testing.assert_close(
        _raw(LayerCAM(model, "2", tanh_scale=2.0), x), expected, rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_eigencam_is_the_first_singular_vector_projection(dims: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    a, _ = reference_activations_and_gradients(model, model.get_submodule("4"), x, CLASSES)
    raw = _raw(EigenCAM(model, "4"), x)
    for i in range(len(x)):
        matrix = a[i].flatten(1).T.numpy()  # pixels x channels
        _, _, vt = np.linalg.svd(matrix, full_matrices=False)
        projection = matrix @ vt[0]
        projection *= 1 if projection.sum() >= 0 else -1
        expected = torch.from_numpy(projection).view(a.shape[2:])
        for t in range(2):
            torch.testing.assert_close(raw[i, t], expected, rtol=1e-4, atol=1e-5)


def test_eigencam_with_more_channels_than_pixels_is_the_svd_projection() -> None:
    # 16 channels on a 3x3 grid: the direction comes from the (pixels x pixels) Gram matrix
    model = nn.Sequential(nn.Conv2d(2, 16, 3), nn.Flatten(), nn.Linear(16 * 9, 3)).eval()
    x = torch.randn(4, 2, 5, 5)
    a = model[0](x).detach().double()
    for cam, options in ((EigenCAM(model, "0"), {}), (GradCAM(model, "0"), {"eigen_smooth": True})):
        raw = cam(x, 1, relu=False, upsample=False, normalize=False, **options).double()
        weights = 1.0
        if options:  # Grad-CAM weights: the gradient of the linear score, averaged per channel
            weights = model[2].weight[1].detach().double().view(16, 9).mean(1)[:, None]
        for i in range(len(x)):
            matrix = (weights * a[i].flatten(1)).T.numpy()  # 9 pixels x 16 channels
            _, _, vt = np.linalg.svd(matrix, full_matrices=False)
            projection = matrix @ vt[0]
            projection *= 1 if projection.sum() >= 0 else -1
            expected = torch.from_numpy(projection).view(3, 3)
            torch.testing.assert_close(raw[i], expected, rtol=1e-4, atol=1e-5)


def test_eigencam_gives_the_same_map_for_every_target() -> None:
    model = conv_net(2)
    x = torch.randn(3, 2, 10, 10)
    maps = EigenCAM(model, "4")(x, torch.arange(5).expand(3, 5))
    for t in range(1, 5):
        torch.testing.assert_close(maps[:, t], maps[:, 0])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_cam_reads_the_classifier_weights(dims: int) -> None:
    model = cam_net(dims)
    x = torch.randn(SHAPES[dims])
    a = model[1](model[0](x)).detach().double()
    w = model[4].weight.detach().double()
    expected = torch.stack([torch.einsum("c,nc...->n...", w[c], a) for c in range(5)], 1)
    classes = torch.arange(5).expand(len(x), 5)
    torch.testing.assert_close(
        _raw(CAM(model, "1", fc="4"), x, classes), expected, rtol=1e-5, atol=1e-6
    )


def _score_cam_reference(model: nn.Module, layer: str, x: Tensor, classes: Tensor) -> Tensor:
    a, _ = reference_activations_and_gradients(model, model.get_submodule(layer), x, classes)
    n, c = a.shape[:2]
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    out = torch.zeros(n, classes.shape[1], *a.shape[2:], dtype=torch.float64)
    with torch.no_grad():
        base = model(torch.zeros_like(x[:1]))[0].double()
        for i in range(n):
            increase = torch.zeros(c, classes.shape[1], dtype=torch.float64)
            for ch in range(c):
                up = F.interpolate(
                    a[i, ch][None, None].float(), size=x.shape[2:], mode=mode, align_corners=False
                )[0, 0].double()
                lo, hi = up.min(), up.max()
                mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
                scores = model((x[i] * mask.float())[None])[0].double()
                increase[ch] = scores[classes[i]] - base[classes[i]]
            weights = torch.softmax(increase, dim=0)  # over channels
            for t in range(classes.shape[1]):
                out[i, t] = torch.einsum("c,c...->...", weights[:, t], a[i])
    return out


def _ablation_reference(model: nn.Module, layer: str, x: Tensor, classes: Tensor) -> Tensor:
    a, _ = reference_activations_and_gradients(model, model.get_submodule(layer), x, classes)
    n, c = a.shape[:2]
    module = model.get_submodule(layer)
    out = torch.zeros(n, classes.shape[1], *a.shape[2:], dtype=torch.float64)
    with torch.no_grad():
        full = model(x).double()
        for i in range(n):
            y = full[i, classes[i]]
            drops = torch.zeros(c, classes.shape[1], dtype=torch.float64)
            for ch in range(c):

                def zero(m: nn.Module, inp: Any, o: Tensor, ch: int = ch) -> Tensor:
                    o = o.clone()
                    o[:, ch] = 0
                    return o

                handle = module.register_forward_hook(zero)
                try:
                    drops[ch] = (y - model(x[i : i + 1])[0].double()[classes[i]]) / y
                finally:
                    handle.remove()
            for t in range(classes.shape[1]):
                out[i, t] = torch.einsum("c,c...->...", drops[:, t], a[i])
    return out


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_scorecam_matches_its_formula_for_every_batch_size(dims: int, batch_size: int) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    expected = _score_cam_reference(model, "4", x, CLASSES)
    raw = _raw(ScoreCAM(model, "4", batch_size=batch_size), x)
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("split_tail", [True, False], ids=["tail", "full reruns"])
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_ablationcam_matches_its_formula_for_every_batch_size(
    dims: int, batch_size: int, split_tail: bool
) -> None:
    model = conv_net(dims)
    x = torch.randn(SHAPES[dims])
    expected = _ablation_reference(model, "4", x, CLASSES)
    raw = _raw(AblationCAM(model, "4", batch_size=batch_size, split_tail=split_tail), x)
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-5)


class SpyScoreCAM(ScoreCAM):
    seen: list[Tensor]

    def weights(self, context: Any) -> Tensor:
        w = super().weights(context)
        self.seen = [*getattr(self, "seen", []), w]
        return w


def test_scorecam_weights_sum_to_one() -> None:
    model = conv_net(2)
    spy = SpyScoreCAM(model, ["2", "4"], batch_size=7)
    spy(torch.randn(3, 2, 10, 10), torch.tensor([[0, 1], [2, 3], [4, 0]]))
    assert len(spy.seen) == 2
    for w in spy.seen:
        torch.testing.assert_close(w.sum(dim=2), torch.ones(3, 2))


# --- identities between methods ---


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_on_conv_gap_linear_hirescam_gradcam_xgradcam_and_cam_coincide(dims: int) -> None:
    model = cam_net(dims)
    x = torch.randn(SHAPES[dims])
    classes = torch.arange(5).expand(len(x), 5)
    reference = CAM(model, "1", fc="4")(x, classes)
    for method in (GradCAM, HiResCAM, XGradCAM):
        torch.testing.assert_close(method(model, "1")(x, classes), reference, atol=1e-5, rtol=1e-4)
    # raw maps: Grad-CAM = HiResCAM = CAM / Z, since dy/dA = w / Z everywhere
    z = float(np.prod(model[0](x).shape[2:]))  # positions in the layer's map
    cam_raw = _raw(CAM(model, "1", fc="4"), x, classes)
    for method in (GradCAM, HiResCAM):
        torch.testing.assert_close(
            _raw(method(model, "1"), x, classes), cam_raw / z, rtol=1e-4, atol=1e-7
        )


@pytest.mark.parametrize("layer", ["features.relu", "features.conv2", "features.pool2"])
def test_hirescam_sums_to_score_minus_bias_on_piecewise_linear_head(layer: str) -> None:
    from examples.mnist.model import MnistNet

    model = MnistNet().eval()
    x = torch.randn(6, 1, 28, 28)
    classes = torch.arange(10).expand(6, 10)
    raw = _raw(HiResCAM(model, layer), x, classes)
    logits = model(x).detach().double()
    bias = model.classifier[1].bias.detach().double()
    torch.testing.assert_close(raw.flatten(2).sum(2), logits - bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "method", [GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM], ids=lambda m: m.__name__
)
def test_counterfactual_and_gradcam_maps_have_disjoint_support(method: type) -> None:
    model = conv_net(2)
    x = torch.randn(4, 2, 12, 12)
    cam = method(model, "4")
    plain = cam(x, 2, upsample=False, normalize=False)
    against = cam(x, 2, upsample=False, normalize=False, counterfactual=True)
    if method in (GradCAM, XGradCAM, HiResCAM):
        assert torch.equal(plain * against, torch.zeros_like(plain))
        assert (plain > 0).any()
        assert (against > 0).any()
    raw = cam(x, 2, relu=False, upsample=False, normalize=False, counterfactual=True)
    if method in (GradCAM, XGradCAM, HiResCAM):
        torch.testing.assert_close(raw, -cam(x, 2, relu=False, upsample=False, normalize=False))


# --- Guided Backprop: against a copy of the model with guided ReLU modules ---


class _GuidedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _GuidedModule(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _GuidedFn.apply(x)


def _guided_copy(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for module in list(twin.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, _GuidedModule())
    return twin


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_guided_backprop_matches_a_rebuilt_guided_model(dims: int) -> None:
    model = conv_net(dims)  # has ReLU() and ReLU(inplace=True)
    x = torch.randn(SHAPES[dims])
    twin = _guided_copy(model)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(twin(leaf)[torch.arange(len(x)), CLASSES[:, 0]].sum(), leaf)
    got = GuidedBackprop(model)(x, CLASSES[:, 0])
    torch.testing.assert_close(got, expected)
    multi = GuidedBackprop(model)(x, CLASSES)
    torch.testing.assert_close(multi[:, 0], expected)
    guided_gradcam = GuidedGradCAM(model, "4")(x, CLASSES[:, 0])
    cam = GradCAM(model, "4")(x, CLASSES[:, 0])
    torch.testing.assert_close(guided_gradcam, expected * cam[:, None])


def test_guided_backprop_needs_relu_modules() -> None:
    from camkit import CamkitValueError

    with pytest.raises(CamkitValueError, match=r"no nn\.ReLU"):
        GuidedBackprop(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))

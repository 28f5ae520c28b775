"""What every method shares: several layers, k targets, layouts, smoothing, a clean model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import Tensor, nn

import camkit
from camkit import (
    CAM,
    AblationCAM,
    BaseCAM,
    CamkitError,
    CamkitValueError,
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
from examples.mnist.model import MnistNet
from tests.helpers import (
    assert_untouched,
    reference_activations_and_gradients,
    snapshot,
)
from tests.models import TokenNet, cam_net, channels_last_net, conv_net

Factory = Callable[[nn.Module, Any], Any]
METHODS: dict[str, Factory] = {
    "GradCAM": GradCAM,
    "GradCAMPlusPlus": GradCAMPlusPlus,
    "XGradCAM": XGradCAM,
    "HiResCAM": HiResCAM,
    "LayerCAM": LayerCAM,
    "EigenCAM": EigenCAM,
    "ScoreCAM": lambda m, layer: ScoreCAM(m, layer, batch_size=16),
    "AblationCAM": lambda m, layer: AblationCAM(m, layer, batch_size=16),
    "CAM": lambda m, layer: CAM(m, layer, fc="4"),
    "GradCAMElementWise": camkit.GradCAMElementWise,
    "EigenGradCAM": camkit.EigenGradCAM,
    "ShapleyCAM": camkit.ShapleyCAM,
    "SmoothGradCAMPlusPlus": lambda m, layer: camkit.SmoothGradCAMPlusPlus(
        m, layer, samples=2, seed=0
    ),
    "FEM": camkit.FEM,
    "SSCAM": lambda m, layer: camkit.SSCAM(m, layer, samples=2, seed=0, batch_size=16),
    "ISCAM": lambda m, layer: camkit.ISCAM(m, layer, samples=2, batch_size=16),
}


def _scaled(m: Tensor) -> Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return torch.where(hi > lo, (flat - lo) / (hi - lo), 0.0).view_as(m)


@pytest.mark.parametrize("name", list(METHODS))
def test_k_targets_equal_separate_calls(name: str) -> None:
    model = cam_net(2)
    x = torch.randn(3, 2, 10, 10)
    classes = torch.tensor([[0, 4, 2], [1, 1, 3], [4, 0, 2]])
    cam = METHODS[name](model, "1")
    together = cam(x, classes)
    assert together.shape == (3, 3, 10, 10)
    for j in range(3):
        torch.testing.assert_close(together[:, j], cam(x, classes[:, j]), atol=1e-5, rtol=1e-4)
    lists = cam(x, classes.tolist())
    torch.testing.assert_close(lists, together)


def test_all_ten_mnist_classes_from_one_call() -> None:
    model = MnistNet().eval()
    x = torch.randn(4, 1, 28, 28)
    result = GradCAM(model, "features.relu").explain(x, torch.arange(10).expand(4, 10))
    assert result.maps.shape == (4, 10, 28, 28)
    assert result.scores.shape == (4, 10)
    torch.testing.assert_close(result.scores, model(x).detach())
    for c in (0, 7):
        torch.testing.assert_close(result.maps[:, c], GradCAM(model, "features.relu")(x, c))


def test_callable_with_k_scores() -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 10, 10)
    maps = GradCAM(model, "4")(x, lambda out: out.log_softmax(1)[:, :3])
    assert maps.shape == (2, 3, 10, 10)
    torch.testing.assert_close(maps[:, 1], GradCAM(model, "4")(x, lambda o: o.log_softmax(1)[:, 1]))


@pytest.mark.parametrize("name", [m for m in METHODS if m != "CAM"])  # CAM has one layer
def test_several_layers_fuse_the_mean_of_scaled_maps(name: str) -> None:
    model = cam_net(2)
    model.insert(2, nn.Conv2d(6, 6, 1))  # a second layer to fuse: "1" ReLU, "2" conv
    model[5] = nn.Linear(6, 5)
    x = torch.randn(2, 2, 9, 11)
    factory = METHODS[name]
    fused = factory(model, ["1", "2"]).explain(x, [1, 3])
    singles = [factory(model, layer)(x, [1, 3]) for layer in ("1", "2")]
    for layer, single in zip(("1", "2"), singles, strict=True):
        torch.testing.assert_close(fused.layer_maps[layer], single, atol=1e-5, rtol=1e-4)
    expected = _scaled(torch.stack([_scaled(s) for s in singles]).mean(0))
    torch.testing.assert_close(fused.maps, expected, atol=1e-5, rtol=1e-4)
    unscaled = factory(model, ["1", "2"]).explain(x, [1, 3], normalize=False)
    for layer in ("1", "2"):
        torch.testing.assert_close(
            unscaled.layer_maps[layer], factory(model, layer)(x, [1, 3], normalize=False)
        )


@pytest.mark.parametrize("target", [1, [[1, 2]] * 2], ids=["one target", "k=2"])
def test_one_layers_map_shares_memory_with_the_result_as_documented(target: Any) -> None:
    result = GradCAM(conv_net(2), "2").explain(torch.randn(2, 2, 8, 8), target)
    (layer_map,) = result.layer_maps.values()
    assert layer_map.data_ptr() == result.maps.data_ptr()  # no copy: no memory spent
    torch.testing.assert_close(layer_map, result.maps)
    result.maps.add_(5.0)  # documented: an in-place edit of one shows in the other
    torch.testing.assert_close(layer_map, result.maps)


def test_fused_layers_maps_are_tensors_of_their_own() -> None:
    result = GradCAM(conv_net(2), ["2", "4"]).explain(torch.randn(2, 2, 8, 8), 1)
    before = {name: m.clone() for name, m in result.layer_maps.items()}
    result.maps.add_(5.0)
    for name, m in result.layer_maps.items():
        torch.testing.assert_close(m, before[name])


def test_fusing_layers_needs_upsampling_and_distinct_layers() -> None:
    model = conv_net(2)
    with pytest.raises(CamkitValueError, match="upsample"):
        GradCAM(model, ["2", "4"])(torch.randn(1, 2, 8, 8), upsample=False)
    with pytest.raises(CamkitValueError, match="names a layer twice"):
        GradCAM(model, ["2", model[2]])
    with pytest.raises(CamkitValueError, match="empty list"):
        GradCAM(model, [])


# --- token and channels-last layouts ---


def _reference_layout(
    model: nn.Module, layer: str, x: Tensor, classes: Tensor, to_cf: Callable[[Tensor], Tensor]
) -> Tensor:
    a, g = reference_activations_and_gradients(model, model.get_submodule(layer), x, classes)
    a_cf = to_cf(a)
    g_cf = torch.stack([to_cf(g[:, j]) for j in range(g.shape[1])], 1)
    alpha = g_cf.flatten(3).mean(3)
    return torch.einsum("nkc,nc...->nk...", alpha, a_cf)


def test_vit_tokens_layout() -> None:
    torch.manual_seed(0)
    model = tvm.vit_b_16(weights=None, image_size=32, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero
    x = torch.randn(2, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_11.ln_1"
    classes = torch.tensor([[3], [5]])
    expected = _reference_layout(
        model,
        layer,
        x,
        classes,
        lambda t: t[:, 1:].reshape(len(t), 2, 2, -1).permute(0, 3, 1, 2),
    )
    cam = GradCAM(model, layer, layout="tokens")
    raw = cam(x, classes, relu=False, upsample=False, normalize=False).double()
    scale = expected.abs().max()
    torch.testing.assert_close(raw / scale, expected / scale, rtol=1e-4, atol=1e-5)
    assert cam(x, [3, 5]).shape == (2, 32, 32)
    with pytest.raises(CamkitValueError, match="not a square number"):
        GradCAM(model, layer, layout="tokens", prefix_tokens=0)(x, 1)
    with pytest.raises(CamkitValueError, match=r"grid: \(3, 2\) holds 6 tokens"):
        GradCAM(model, layer, layout="tokens", grid=(3, 2))(x, 1)
    rect = GradCAM(model, layer, layout="tokens", grid=(1, 4))
    assert rect(x, 1, upsample=False).shape == (2, 1, 4)


@pytest.mark.parametrize(
    ("builder", "layer"),
    [(tvm.swin_t, "features.7.1"), (tvm.convnext_tiny, "features.5.2.block.3")],
)
def test_channels_last_layout(builder: Callable[..., nn.Module], layer: str) -> None:
    torch.manual_seed(0)
    model = builder(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    classes = torch.tensor([[1], [8]])
    expected = _reference_layout(model, layer, x, classes, lambda t: t.permute(0, 3, 1, 2))
    raw = GradCAM(model, layer, layout="channels_last")(
        x, classes, relu=False, upsample=False, normalize=False
    ).double()
    scale = expected.abs().max()
    torch.testing.assert_close(raw / scale, expected / scale, rtol=1e-4, atol=1e-5)


def test_ablation_through_channels_last_layout() -> None:
    # Ablating channel k of the channels-last output "2" is ablating channel k of its
    # channels-first twin "3" (a permutation of the same tensor).
    model = channels_last_net()
    x = torch.randn(3, 2, 9, 9)
    last = AblationCAM(model, "2", layout="channels_last", batch_size=4)
    first = AblationCAM(model, "3", batch_size=4)
    torch.testing.assert_close(
        last(x, [0, 2, 4], normalize=False), first(x, [0, 2, 4], normalize=False)
    )


def test_ablation_through_token_layout_keeps_the_cls_token() -> None:
    model = TokenNet().eval()
    x = torch.randn(2, 2, 9, 9)
    classes = [1, 3]
    a, _ = reference_activations_and_gradients(model, model.mix, x, torch.tensor([[1], [3]]))
    with torch.no_grad():
        y = model(x).double()[torch.arange(2), classes]
        drops = torch.zeros(2, 6, dtype=torch.float64)
        for ch in range(6):

            def zero(m: nn.Module, i: Any, o: Tensor, ch: int = ch) -> Tensor:
                o = o.clone()
                o[:, 1:, ch] = 0  # patch tokens only; CLS stays
                return o

            handle = model.mix.register_forward_hook(zero)
            drops[:, ch] = (y - model(x).double()[torch.arange(2), classes]) / y
            handle.remove()
    grid = a[:, 1:].reshape(2, 3, 3, 6).permute(0, 3, 1, 2)
    expected = torch.einsum("nc,nc...->n...", drops, grid)
    raw = AblationCAM(model, "mix", layout="tokens", batch_size=5)(
        x, classes, relu=False, upsample=False, normalize=False
    )
    torch.testing.assert_close(raw.double(), expected, rtol=1e-4, atol=1e-6)


def test_layout_errors() -> None:
    model = conv_net(2)
    with pytest.raises(CamkitValueError, match="layout: got 'nhwc'"):
        GradCAM(model, "4", layout="nhwc")
    with pytest.raises(CamkitValueError, match="tokens needs"):
        GradCAM(model, "4", layout="tokens")(torch.randn(1, 2, 8, 8), 0)


# --- smoothing ---


def test_eigen_smooth_projects_the_weighted_activations() -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 10, 10)
    classes = torch.tensor([[2], [4]])
    a, g = reference_activations_and_gradients(model, model.get_submodule("4"), x, classes)
    weighted = g[:, 0].mean(dim=(2, 3))[:, :, None, None] * a
    raw = GradCAM(model, "4")(
        x, classes[:, 0], relu=False, upsample=False, normalize=False, eigen_smooth=True
    )
    for i in range(2):
        matrix = weighted[i].flatten(1).T.numpy()
        _, _, vt = np.linalg.svd(matrix, full_matrices=False)
        projection = matrix @ vt[0]
        projection *= 1 if projection.sum() >= 0 else -1
        torch.testing.assert_close(
            raw[i].double(), torch.from_numpy(projection).view(5, 5), rtol=1e-4, atol=1e-6
        )


def test_aug_smooth_averages_the_flipped_map() -> None:
    model = conv_net(2)
    x = torch.randn(2, 2, 10, 12)
    cam = GradCAM(model, "4")
    plain = cam(x, 3, normalize=False)
    mirrored = cam(x.flip(-1), 3, normalize=False).flip(-1)
    smooth = cam(x, 3, normalize=False, aug_smooth=True)
    torch.testing.assert_close(smooth, (plain + mirrored) / 2)
    torch.testing.assert_close(cam(x, 3, aug_smooth=True), _scaled(smooth))


def test_counterfactual_needs_a_gradient_method() -> None:
    with pytest.raises(CamkitValueError, match="counterfactual: EigenCAM does not use gradients"):
        EigenCAM(conv_net(2), "4")(torch.randn(1, 2, 8, 8), counterfactual=True)


# --- every method leaves the model as it was ---


def _dirty_model() -> nn.Module:
    model = cam_net(2)
    model.insert(1, nn.BatchNorm2d(6))
    model.insert(3, nn.Dropout(0.3))  # "2" ReLU, "3" Dropout, "5" Flatten, "6" Linear
    model.train()
    model(torch.randn(4, 2, 8, 8)).sum().backward()
    model[0].weight.grad = None
    model[0].bias.requires_grad_(False)
    return model


ALL: dict[str, Factory] = {
    **{k: v for k, v in METHODS.items() if k != "CAM"},
    "CAM": lambda m, layer: CAM(m, layer, fc="6"),
    "GuidedBackprop": lambda m, layer: GuidedBackprop(m),
    "GuidedGradCAM": GuidedGradCAM,
    "RandomCAM": lambda m, layer: camkit.RandomCAM(m, layer, seed=0),
    "FinerCAM": camkit.FinerCAM,
}


@pytest.mark.parametrize("name", list(ALL))
def test_every_method_leaves_the_model_untouched(name: str) -> None:
    model = _dirty_model()
    before = snapshot(model)
    cam = ALL[name](model, "2")
    x = torch.randn(3, 2, 8, 8)
    maps = cam(x, [0, 1, 2])
    assert torch.isfinite(maps).all()
    assert_untouched(before, snapshot(model))
    with pytest.raises(CamkitError):
        cam(x, [0, 1, 99])
    assert_untouched(before, snapshot(model))
    eval_maps = ALL[name](model.eval(), "2")(x, [0, 1, 2])
    model.train()
    torch.testing.assert_close(maps, eval_maps)


class ExplodingError(Exception):
    pass


@pytest.mark.parametrize("name", ["ScoreCAM", "AblationCAM"])
def test_perturbation_methods_restore_the_model_when_scoring_fails(name: str) -> None:
    model = _dirty_model()
    before = snapshot(model)
    calls = {"n": 0}

    def score(out: Tensor) -> Tensor:
        calls["n"] += 1
        if calls["n"] > 1:  # the explained pass scores once; re-scoring fails
            raise ExplodingError
        return out[:, 1]

    with pytest.raises(ExplodingError):
        ALL[name](model, "2")(torch.randn(2, 2, 8, 8), score)
    assert calls["n"] == 2
    assert_untouched(before, snapshot(model))


def test_custom_method_in_a_few_lines() -> None:
    class MaxGradCAM(BaseCAM):
        """Channels weighted by their largest gradient."""

        def weights(self, context: Any) -> Tensor:
            return context.gradients.flatten(3).amax(dim=3)

    model = conv_net(2)
    x = torch.randn(2, 2, 8, 8)
    a, g = reference_activations_and_gradients(model, model[4], x, torch.tensor([[1], [2]]))
    expected = torch.einsum("nc,nc...->n...", g[:, 0].flatten(2).amax(2), a)
    raw = MaxGradCAM(model, "4")(x, [1, 2], relu=False, upsample=False, normalize=False)
    torch.testing.assert_close(raw.double(), expected, rtol=1e-5, atol=1e-6)

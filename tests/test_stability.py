"""Local Lipschitz Estimate, Continuity and the relative stabilities: hand-derived values
with known perturbations, and Quantus 0.6's values with the same noise."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import (
    continuity,
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
from examples.mnist.data import load_split
from examples.mnist.train import load
from tests.helpers import FLOAT32_EPS, assert_untouched, snapshot


def _linear(channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * 36, 3)).eval()


def _image_map(inputs: Tensor, classes: Tensor) -> Tensor:
    """The map is the image (its channels' mean), clamped to [0, 1]."""
    return inputs.mean(dim=1).clamp(0, 1)


def _shifted(inputs: Tensor, step: int) -> Tensor:
    return inputs + 0.01 * (step + 1)


def _scaled(inputs: Tensor, step: int) -> Tensor:
    return inputs * (1 + 0.01 * (step + 1))


def test_local_lipschitz_by_hand() -> None:
    x = 0.2 + 0.6 * torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    model = _linear(3)
    state = snapshot(model)
    # every value moves by c: the map (a mean over 3 channels) by c at 36 positions, the
    # input at 108 values: ||de|| / ||dx|| = sqrt(36) c / sqrt(108) c = 1 / sqrt(3)
    got = local_lipschitz_estimate(model, x, _image_map, samples=4, noise=_shifted)
    # float32 rounding of the shifted input and the map, relative to c >= 0.01
    torch.testing.assert_close(got.values, torch.full((2,), 1 / math.sqrt(3), dtype=torch.float64),
                               rtol=4 * FLOAT32_EPS / 0.01, atol=0)  # fmt: skip
    assert_untouched(state, snapshot(model))


def test_continuity_by_hand() -> None:
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    model = _linear()
    got = continuity(model, x, _image_map, steps=4)
    # d = (2 * 6 + 1) // 4 = 3: shifts -3, 0 (left out), 3, 6; black = each image's minimum
    expected = []
    for i in range(2):
        image = x[i, 0].double().numpy()
        low = image.min()
        ratios = []
        for by in (-3, 3, 6):
            moved = np.full_like(image, low)
            if by > 0:
                moved[:, by:] = image[:, : 6 - by]
            else:
                moved[:, :by] = image[:, -by:]
            ratios.append(np.abs(image - moved).sum() / (np.linalg.norm(image - moved) + 1e-9))
        expected.append(max(ratios))
    np.testing.assert_allclose(got.values.numpy(), expected, rtol=1e-6)


def test_relative_stabilities_by_hand() -> None:
    x = 0.2 + 0.6 * torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    model = _linear()
    # x' = x (1 + s): the map's and the input's relative changes are both s at every
    # position, so RIS = 1; and the Flatten layer's output is the input: RRS = RIS
    for got in (
        relative_input_stability(model, x, _image_map, samples=3, noise=_scaled),
        relative_representation_stability(model, x, _image_map, layer="0", samples=3,
                                          noise=_scaled),
    ):  # fmt: skip
        torch.testing.assert_close(got.values, torch.ones(2, dtype=torch.float64),
                                   rtol=8 * FLOAT32_EPS / 0.01, atol=0)  # fmt: skip
    # ROS: a shift by c moves the logits by c W 1 and the map by c / e relative
    weight = model[1].weight.detach().double()
    ros = relative_output_stability(model, x, _image_map, samples=3, noise=_shifted)
    for i in range(2):
        e = x[i, 0].double().flatten()
        ratios = [
            (c / e).norm() / (c * weight.sum(1)).norm() for c in (0.01, 0.02, 0.03)
        ]  # all equal: the ratio does not depend on c
        assert ros.values[i].item() == pytest.approx(float(max(ratios)), rel=1e-4)


def test_changed_predictions_are_left_out() -> None:
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    model = _linear()

    def wild(inputs: Tensor, step: int) -> Tensor:
        return inputs + 50 * torch.randn(
            inputs.shape, generator=torch.Generator().manual_seed(step)
        )

    every = local_lipschitz_estimate(model, x, _image_map, samples=6, noise=wild)
    kept = local_lipschitz_estimate(model, x, _image_map, samples=6, noise=wild,
                                    nan_when_prediction_changes=True)  # fmt: skip
    for all_copies, fewer in zip(every.values.tolist(), kept.values.tolist(), strict=True):
        assert math.isnan(fewer) or fewer <= all_copies + 1e-12


def test_clear_errors() -> None:
    model = _linear()
    x = torch.rand(2, 1, 6, 6)
    with pytest.raises(CamkitValueError, match="std: got -1"):
        local_lipschitz_estimate(model, x, _image_map, std=-1)
    with pytest.raises(CamkitValueError, match="steps: got 20; allowed: at most 2 W"):
        continuity(model, x, _image_map, steps=20)
    with pytest.raises(CamkitValueError, match="eps: got 0"):
        relative_input_stability(model, x, _image_map, eps=0)
    with pytest.raises(camkit.CamkitError, match="nothing"):
        relative_representation_stability(model, x, _image_map, layer="nothing", samples=1)


def test_equal_to_quantus_with_the_same_noise() -> None:
    quantus = pytest.importorskip("quantus")
    checkpoint, _ = load()
    model = checkpoint.model
    x = checkpoint.prepare(load_split("test").images[:8])
    cam = camkit.GradCAM(model, "features.relu")
    y = cam.explain(x).classes
    assert y is not None
    samples = 3
    draws = [np.random.default_rng(step).normal(0, 0.1, x.shape).astype(np.float32)
             for step in range(samples)]  # fmt: skip

    def camkit_noise(inputs: Tensor, step: int) -> Tensor:
        return inputs + torch.from_numpy(draws[step])

    steps = {"count": 0}

    def quantus_noise(arr: np.ndarray, **kwargs: object) -> np.ndarray:
        draw = draws[steps["count"] % samples]
        steps["count"] += 1
        return arr + draw.reshape(arr.shape)

    def explain(model: object, inputs: np.ndarray, targets: np.ndarray, **kwargs: object
                ) -> np.ndarray:  # fmt: skip
        return cam.explain(torch.from_numpy(inputs), torch.from_numpy(targets)).maps.numpy()[
            :, None
        ]

    common = {"model": model, "x_batch": x.numpy(), "y_batch": y.numpy(), "device": "cpu",
              "explain_func": explain}  # fmt: skip
    cases = [
        (quantus.LocalLipschitzEstimate(nr_samples=samples, perturb_func=quantus_noise,
                                        disable_warnings=True),
         local_lipschitz_estimate(model, x, cam, y, samples=samples, noise=camkit_noise)),
        (quantus.RelativeInputStability(nr_samples=samples, perturb_func=quantus_noise,
                                        return_nan_when_prediction_changes=False,
                                        disable_warnings=True),
         relative_input_stability(model, x, cam, y, samples=samples, noise=camkit_noise,
                                  nan_when_prediction_changes=False)),
        (quantus.RelativeOutputStability(nr_samples=samples, perturb_func=quantus_noise,
                                         return_nan_when_prediction_changes=False,
                                         disable_warnings=True),
         relative_output_stability(model, x, cam, y, samples=samples, noise=camkit_noise,
                                   nan_when_prediction_changes=False)),
        (quantus.RelativeRepresentationStability(nr_samples=samples, perturb_func=quantus_noise,
                                                 layer_names=["features.relu"],
                                                 return_nan_when_prediction_changes=False,
                                                 disable_warnings=True),
         relative_representation_stability(model, x, cam, y, layer="features.relu",
                                           samples=samples, noise=camkit_noise,
                                           nan_when_prediction_changes=False)),
    ]  # fmt: skip
    for metric, got in cases:
        steps["count"] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = metric(a_batch=explain(None, x.numpy(), y.numpy()), **common)
        # the same maps and noise; Quantus's norms in float32, camkit's in float64
        np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-4,
                                   err_msg=type(metric).__name__)  # fmt: skip
    # Continuity shifts the digit out of the image, where Grad-CAM's maps can all be 0 and an
    # image's are constant (both of which Quantus refuses): a map that is neither, left
    # unscaled by both
    ramp = torch.linspace(0, 0.4, 28 * 28).view(28, 28)

    def soft(inputs: Tensor, classes: Tensor) -> Tensor:
        return 0.5 * torch.sigmoid(inputs.mean(dim=1)) + ramp

    def soft_quantus(model: object, inputs: np.ndarray, targets: np.ndarray, **kwargs: object
                     ) -> np.ndarray:  # fmt: skip
        return soft(torch.from_numpy(inputs), torch.from_numpy(targets)).numpy()[:, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = quantus.Continuity(normalise=False, disable_warnings=True)(
            **{**common, "explain_func": soft_quantus},
            a_batch=soft_quantus(None, x.numpy(), y.numpy()),
        )
    got = continuity(model, x, soft, y)
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-4)


def _explainer_and_function(
    score: Callable[[object], Any], model: nn.Module, cam: camkit.Explainer
) -> tuple[Any, Any, int, int]:
    """``score`` of the explainer itself and of a plain function calling it, with the
    model's forward passes in each: (direct, wrapped, passes direct, passes wrapped)."""
    passes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: passes.append(1))
    try:
        direct = score(cam)
        explained = len(passes)
        passes.clear()
        wrapped = score(lambda v, c: cam(v, c))
    finally:
        handle.remove()
    return direct, wrapped, explained, len(passes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer", ["1", "2", "4"])  # the CAM layer, one before it, one after
def test_representations_are_read_from_the_explainers_own_passes(
    layer: str, dtype: torch.dtype
) -> None:
    """Given a camkit explainer of the same model, relative representation stability reads
    the layer's output from the explainer's forward passes: no pass of its own, and values
    equal to the last bit to those of the separate passes a plain function needs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True),  # "2" writes over "1"
        nn.Flatten(), nn.Linear(64, 8), nn.ReLU(inplace=True), nn.Linear(8, 3),
    ).eval().to(dtype)  # fmt: skip
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=dtype)
    cam = camkit.GradCAM(model, "2")
    score = partial(relative_representation_stability, model, x, target=[0, 1, 2, 0], layer=layer,
                    samples=5, nan_when_prediction_changes=False)  # fmt: skip
    direct, wrapped, explained, both = _explainer_and_function(score, model, cam)
    assert explained == 1 + 5  # the input's pass and one per copy, nothing else
    assert both == 2 * explained  # a function: the explainer's passes, and the layer's
    torch.testing.assert_close(direct.values, wrapped.values, rtol=0, atol=0, equal_nan=True)
    # the layer's output as the layer gave it, before the in-place ReLU after it wrote over it
    from camkit.metrics.robustness import layer_output

    with torch.no_grad():
        expected = model[: int(layer) + 1](x).double().flatten(1)  # the model up to the layer
    got = layer_output(model, layer, model.get_submodule(layer), x, 4)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class _Flipped(camkit.GradCAM):
    """Grad-CAM with a test-time flip on every call."""

    def explain(self, x: Tensor, target: object = None, **options: object) -> camkit.CAMResult:
        return super().explain(x, target, aug_smooth=True, **options)  # type: ignore[arg-type]


class _LooksElsewhereFirst(camkit.GradCAM):
    """Grad-CAM that first runs the model on another input."""

    def explain(self, x: Tensor, target: object = None, **options: object) -> camkit.CAMResult:
        with torch.no_grad():
            self.model(x.flip(-1))
        return super().explain(x, target, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "read"),
    [
        (lambda m: camkit.SmoothGradCAMPlusPlus(m, "2", samples=2), True),  # x's, then noisy
        (lambda m: _Flipped(m, "2"), True),  # x's own pass first, then the flipped copy's
        (lambda m: camkit.ScoreCAM(m, "2"), True),  # x's own pass first, then masked copies
        (lambda m: _LooksElsewhereFirst(m, "2"), False),  # another input's pass first
    ],
)
def test_an_explainer_whose_first_pass_is_another_gets_the_layers_own_pass(
    make: object, read: bool
) -> None:
    """The layer's output is read from the explainer's pass only where that first pass was
    the model's own on the input; otherwise a pass runs for it. Either way the values equal
    a plain function's, to the last bit."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    cam = make(model)  # type: ignore[operator]
    score = partial(relative_representation_stability, model, x, target=[0, 1, 2], layer="1",
                    samples=3, nan_when_prediction_changes=False)  # fmt: skip
    direct, wrapped, explained, both = _explainer_and_function(score, model, cam)
    own = 1 + 3  # the layer's passes: the input's and one per copy
    assert explained == both - (own if read else 0)
    torch.testing.assert_close(direct.values, wrapped.values, rtol=0, atol=0, equal_nan=True)


class _Interrupted(camkit.GradCAM):
    """Grad-CAM during whose first pass another thread runs the model on another input:
    that pass reaches layer "2" before the explainer's does, and ends after it."""

    def explain(self, x: Tensor, target: object = None, **options: object) -> camkit.CAMResult:
        reached, release = threading.Event(), threading.Event()
        other = threading.Thread(target=lambda: self.model(x.flip(-1)))

        def start(module: nn.Module, args: object, output: object) -> None:
            if threading.current_thread() is not other and other.ident is None:  # once
                other.start()
                reached.wait(30)  # until the other pass has been through layer "2"

        def seen(module: nn.Module, args: object, output: object) -> None:
            if threading.current_thread() is other:
                reached.set()

        def hold(module: nn.Module, args: object, output: object) -> None:
            if threading.current_thread() is other:
                release.wait(30)  # until the explainer's own pass is over

        layer = self.model.get_submodule
        handles = [layer("1").register_forward_hook(start),
                   layer("2").register_forward_hook(seen),
                   layer("3").register_forward_hook(hold)]  # fmt: skip
        try:
            return super().explain(x, target, **options)  # type: ignore[arg-type]
        finally:
            release.set()
            other.join(30)
            for handle in handles:
                handle.remove()


def test_another_threads_pass_is_not_taken_for_the_explainers() -> None:
    """A pass of the model in another thread, during the explainer's own, does not lend
    its layer output: the values equal a plain function's."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(64, 3),
    ).eval()  # fmt: skip
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    cam = _Interrupted(model, "3")
    score = partial(relative_representation_stability, model, x, target=[0, 1, 2], layer="2",
                    samples=2, nan_when_prediction_changes=False)  # fmt: skip
    torch.testing.assert_close(
        score(cam).values, score(lambda v, c: cam(v, c)).values, rtol=0, atol=0, equal_nan=True
    )


class _FullPrecision(camkit.GradCAM):
    """Grad-CAM that closes the caller's CPU autocast for its whole call."""

    def explain(self, x: Tensor, target: object = None, **options: object) -> camkit.CAMResult:
        with torch.autocast("cpu", enabled=False):
            return super().explain(x, target, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "read"), [(camkit.GradCAM, True), (_FullPrecision, False)])
def test_representations_under_autocast_equal_a_plain_functions(kind: type, read: bool) -> None:
    """Under the caller's CPU autocast, the layer's output is read from the explainer's pass
    only where that pass ran in the caller's precision: an explainer that runs in full
    precision gets a pass in the caller's, as a plain function does."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    cam = kind(model, "2")
    score = partial(relative_representation_stability, model, x, target=[0, 1, 2], layer="1",
                    samples=2, nan_when_prediction_changes=False)  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        direct, wrapped, explained, both = _explainer_and_function(score, model, cam)
    assert explained == both - (1 + 2 if read else 0)  # the layer's passes, when read
    torch.testing.assert_close(direct.values, wrapped.values, rtol=0, atol=0, equal_nan=True)

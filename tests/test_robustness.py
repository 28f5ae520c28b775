"""Robustness metrics: hand-derived values with a known perturbation, and Quantus 0.6's."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import avg_sensitivity, max_sensitivity, robustness
from examples.mnist.data import load_split
from examples.mnist.train import load
from tests.helpers import FLOAT32_EPS, assert_untouched, snapshot


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    ).eval()


def test_hand_derived_values_with_a_known_shift() -> None:
    model = _model()
    x = 0.2 + 0.6 * torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def identity(inputs: Tensor, classes: Tensor) -> Tensor:
        return inputs[:, 0].clamp(0, 1)  # the map is the image

    def shifted(inputs: Tensor, step: int) -> Tensor:
        return inputs + 0.01 * (step + 1)  # every value moves by the same amount

    samples = 5
    norms = x[:, 0].double().flatten(1).norm(dim=1)
    # ||e(x') - e(x)||_F = 0.01 (step + 1) sqrt(64)
    largest = max_sensitivity(model, x, identity, samples=samples, noise=shifted).values
    mean = avg_sensitivity(model, x, identity, samples=samples, noise=shifted).values
    # the maps are float32: the shifted input and the map round once each, by at most
    # eps32 |value| <= eps32, so each difference of ~0.01 is off by <= 2 eps32
    rtol = 2 * FLOAT32_EPS / 0.01
    torch.testing.assert_close(largest, 0.01 * samples * 8 / norms, rtol=rtol, atol=0)
    torch.testing.assert_close(mean, 0.01 * 3 * 8 / norms, rtol=rtol, atol=0)  # mean of 1..5


def test_a_map_that_ignores_the_input_is_perfectly_robust() -> None:
    model = _model()
    x = torch.randn(4, 1, 8, 8)

    def fixed(inputs: Tensor, classes: Tensor) -> Tensor:
        return torch.linspace(0, 1, 64).view(1, 8, 8).expand(len(inputs), 8, 8)

    assert max_sensitivity(model, x, fixed, samples=3).values.tolist() == [0.0] * 4


def test_noise_is_seeded_and_the_model_is_left_alone() -> None:
    model = _model()
    cam = camkit.GradCAM(model, "1")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    state = snapshot(model)
    first = avg_sensitivity(model, x, cam, samples=4, seed=3).values
    assert torch.equal(first, avg_sensitivity(model, x, cam, samples=4, seed=3).values)
    assert not torch.equal(first, avg_sensitivity(model, x, cam, samples=4, seed=4).values)
    assert_untouched(state, snapshot(model))


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_a_seed_gives_the_same_copies_in_every_precision(kind: str) -> None:
    """The noise is drawn in float32 whatever the input's dtype: a float64 input's copies are
    its float32 twin's, to the one rounding of the sum (float32's sum of two float32 values
    is their exact sum, held in float64, rounded once)."""
    make = (
        partial(robustness.uniform_noise, -0.1, 0.1)
        if kind == "uniform"
        else partial(robustness.gaussian_noise, 0.1)
    )
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    single, double = make(seed=5), make(seed=5)
    for step in range(3):
        assert torch.equal(double(x.double(), step).float(), single(x, step))


def test_prediction_changes_can_be_left_out() -> None:
    model = _model()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cam = camkit.GradCAM(model, "1")
    huge = max_sensitivity(model, x, cam, samples=6, radius=50.0, seed=0)
    kept = max_sensitivity(model, x, cam, samples=6, radius=50.0, seed=0,
                           nan_when_prediction_changes=True)  # fmt: skip
    # every kept copy is one of the copies: the largest over fewer is no larger
    for all_copies, fewer in zip(huge.values.tolist(), kept.values.tolist(), strict=True):
        assert math.isnan(fewer) or fewer <= all_copies + 1e-12


@pytest.mark.parametrize(
    "metric",
    ["max_sensitivity", "relative_input_stability", "relative_output_stability", "continuity"],
)
def test_an_explainer_of_the_model_gives_the_predictions_without_another_pass(
    metric: str,
) -> None:
    """A camkit explainer of the same model reports its forward pass's output: the check
    that a copy kept its prediction reads it there (one pass fewer per copy, and for the
    input), and the values are those of the separate passes a plain function needs."""
    from camkit import metrics

    model = _model()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cam = camkit.GradCAM(model, "1")
    options: dict[str, object] = {"steps": 6} if metric == "continuity" else {"samples": 6}
    if metric == "max_sensitivity":
        options["radius"] = 3.0  # large enough that some copies change their prediction
    score = partial(getattr(metrics, metric), model, x, target=[0, 1, 2, 0],
                    nan_when_prediction_changes=True, **options)  # fmt: skip
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    try:
        direct = score(cam)
        explained = len(rows)  # the explainer's passes: the input's and one per copy
        rows.clear()
        wrapped = score(lambda v, c: cam(v, c))
        both = len(rows)
        rows.clear()
        score(camkit.GradCAM(_model(), "1"))  # an equal model, but another object
        predicted = len(rows)  # its explainer runs elsewhere: these are the prediction passes
    finally:
        handle.remove()
    # relative output stability's logits, the input's and each copy's, serve both its
    # denominator and the prediction check: it runs no pass of its own
    assert predicted == explained >= 6  # continuity skips the shift by the whole width
    assert both == explained + predicted
    torch.testing.assert_close(direct.values, wrapped.values, rtol=0, atol=0, equal_nan=True)
    if metric == "max_sensitivity":  # copies did change their prediction, and were left out
        kept_all = score(cam, nan_when_prediction_changes=False)
        assert not torch.equal(kept_all.values, direct.values)


def test_clear_errors() -> None:
    model = _model()
    x = torch.randn(2, 1, 8, 8)
    cam = camkit.GradCAM(model, "1")
    with pytest.raises(CamkitValueError, match="samples: got 0"):
        max_sensitivity(model, x, cam, samples=0)
    with pytest.raises(CamkitValueError, match="radius: got -1"):
        avg_sensitivity(model, x, cam, radius=-1)


def test_equal_to_quantus_with_the_same_noise() -> None:
    quantus = pytest.importorskip("quantus")
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:8])
    cam = camkit.GradCAM(checkpoint.model, "features.relu")
    y = cam.explain(x).classes
    assert y is not None
    samples, radius = 4, 0.2

    def camkit_noise(inputs: Tensor, step: int) -> Tensor:
        generator = np.random.default_rng(step)
        return inputs + torch.from_numpy(
            generator.uniform(-radius, radius, inputs.shape).astype(np.float32)
        )

    steps = {"count": 0}

    def quantus_noise(arr: np.ndarray, **kwargs: object) -> np.ndarray:
        # Quantus perturbs the flattened batch once per copy, in order
        generator = np.random.default_rng(steps["count"] % samples)
        steps["count"] += 1
        return arr + generator.uniform(-radius, radius, x.shape).astype(np.float32).reshape(
            arr.shape
        )

    def explain(model: object, inputs: np.ndarray, targets: np.ndarray, **kwargs: object
                ) -> np.ndarray:  # fmt: skip
        maps = cam.explain(torch.from_numpy(inputs), torch.from_numpy(targets)).maps
        return maps.numpy()[:, None]

    for ours, theirs in ((max_sensitivity, quantus.MaxSensitivity),
                         (avg_sensitivity, quantus.AvgSensitivity)):  # fmt: skip
        steps["count"] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric = theirs(nr_samples=samples, perturb_func=quantus_noise, disable_warnings=True)
            expected = metric(
                model=checkpoint.model, x_batch=x.numpy(), y_batch=y.numpy(),
                a_batch=explain(None, x.numpy(), y.numpy()), explain_func=explain, device="cpu",
            )  # fmt: skip
        got = ours(checkpoint.model, x, cam, y, samples=samples, noise=camkit_noise).values
        # both: float32 maps, the norms in float64 (camkit) and float32 (Quantus)
        np.testing.assert_allclose(got.numpy(), np.asarray(expected), rtol=1e-5)


def test_a_tensor_of_maps_is_refused_and_evaluate_hands_over_the_explainer() -> None:
    from camkit.metrics import evaluate, local_lipschitz_estimate, random_logit

    model = _model()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    cam = camkit.GradCAM(model, "1")
    maps = cam(x)
    # a tensor would be reused for every noisy copy and every class: silently "robust"
    for metric in (max_sensitivity, avg_sensitivity, local_lipschitz_estimate, random_logit):
        with pytest.raises(camkit.CamkitTypeError, match=r"maps: .* calls the explainer again"):
            metric(model, x, maps)
    data = [x[:2], x[2:]]
    through = evaluate(model, cam, data, {"max": partial(max_sensitivity, samples=3)},
                       progress=False)["max"]  # fmt: skip
    direct = torch.cat([max_sensitivity(model, part, cam, samples=3).values for part in data])
    torch.testing.assert_close(through.values, direct)

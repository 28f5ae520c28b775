"""Faithfulness Estimate: exact on a linear model, and Quantus 0.6's values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import faithfulness_estimate
from examples.mnist.data import load_split
from examples.mnist.train import load
from tests.helpers import assert_untouched, snapshot


def _linear() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    return model, model[1].weight.detach()[0].view(6, 6)


def test_the_exact_attribution_of_a_linear_model_scores_one() -> None:
    model, weight = _linear()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    black = x.flatten(1).amin(1).view(4, 1, 1)
    # removing pixel i (setting it to the black baseline b) lowers the logit by w_i (x_i - b)
    exact = weight * (x[:, 0] - black)
    shifted = exact - exact.flatten(1).amin(1).view(4, 1, 1)  # into [0, 1]: the same ranking...
    scaled = shifted / shifted.flatten(1).amax(1).view(4, 1, 1)  # ...and masses up to affinity
    state = snapshot(model)
    result = faithfulness_estimate(model, x, scaled, 0)
    torch.testing.assert_close(result.values, torch.ones(4, dtype=torch.float64))
    assert_untouched(state, snapshot(model))
    # the reversed map (1 - map) has masses that fall as the drops rise: -1
    reverse = faithfulness_estimate(model, x, 1 - scaled, 0).values
    torch.testing.assert_close(reverse, -torch.ones(4, dtype=torch.float64))


def test_groups_and_baselines() -> None:
    model, weight = _linear()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    exact = weight * (x[:, 0] - 0.25)
    scaled = (exact - exact.min()) / (exact.max() - exact.min())
    # with a fixed baseline 0.25 and groups of 4, each group's drop is its exact mass: r = 1
    grouped = faithfulness_estimate(model, x, scaled, 0, features_in_step=4, baseline=0.25)
    torch.testing.assert_close(grouped.values, torch.ones(2, dtype=torch.float64))
    constant = faithfulness_estimate(model, x, torch.full((2, 6, 6), 0.5), 0, features_in_step=6)
    assert all(math.isnan(v) for v in constant.values.tolist())  # no ranking: NaN


def test_clear_errors() -> None:
    model, _ = _linear()
    x, maps = torch.rand(2, 1, 6, 6), torch.rand(2, 6, 6)
    with pytest.raises(CamkitValueError, match="features_in_step: got 0"):
        faithfulness_estimate(model, x, maps, 0, features_in_step=0)
    with pytest.raises(CamkitValueError, match="baseline: got 'grey'"):
        faithfulness_estimate(model, x, maps, 0, baseline="grey")
    with pytest.raises(CamkitValueError, match="ties: got 'random'"):
        faithfulness_estimate(model, x, maps, 0, ties="random")


def test_equal_to_quantus_on_the_mnist_net() -> None:
    quantus = pytest.importorskip("quantus")
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:16])
    result = camkit.GradCAM(checkpoint.model, "features.relu").explain(x)
    maps, y = result.maps, result.classes
    assert y is not None
    for step in (28, 56):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = quantus.FaithfulnessEstimate(features_in_step=step, disable_warnings=True)(
                model=checkpoint.model, x_batch=x.numpy(), y_batch=y.numpy(),
                a_batch=maps.numpy()[:, None].copy(), device="cpu",
            )  # fmt: skip
        got = faithfulness_estimate(checkpoint.model, x, maps, y, features_in_step=step,
                                    ties="quantus")  # fmt: skip
        # the same groups and logits; Quantus's logits are float32 and its correlation
        # scipy's: agreement to float32 rounding of the drops
        np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-4, atol=1e-5)


def _one_logit() -> nn.Module:
    """Two classes; class 0's logit is the sum of the pixels, class 1's is 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.zero_()
    return model


def test_monotonicity_by_hand() -> None:
    model = _one_logit()
    # above the black baseline (0.1) everywhere: each pixel put back raises p(class 0)
    rising = torch.tensor([[[[0.1, 0.6], [0.7, 0.8]]]])
    for maps in (torch.rand(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.5, 0.2]]])):
        assert camkit.metrics.monotonicity(model, rising, maps, 0).values.tolist() == [1.0]
    # with a fixed baseline of 0.5, pixel (0, 0) = 0.1 lowers the logit when put back
    second = torch.tensor([[[0.55, 0.5], [0.6, 0.7]]])  # (0, 0) comes back second: falls
    last = torch.tensor([[[1.0, 0.5], [0.6, 0.7]]])  # (0, 0) comes back last: falls at the end
    for maps in (second, last):
        result = camkit.metrics.monotonicity(model, rising, maps, 0, baseline=0.5)
        assert result.values.tolist() == [0.0]
    # the curve starts once the first group is back (as in Quantus): a fall from the
    # baseline itself to the first state is not counted
    first = torch.tensor([[[0.0, 0.5], [0.6, 0.7]]])
    assert camkit.metrics.monotonicity(model, rising, first, 0, baseline=0.5).summary == 1.0
    only_rising = torch.tensor([[[[0.5, 0.6], [0.7, 0.8]]]])
    assert camkit.metrics.monotonicity(model, only_rising, last, 0, baseline=0.5).summary == 1.0


def test_monotonicity_is_the_papers_not_quantus_06s() -> None:
    quantus = pytest.importorskip("quantus")
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:16])
    result = camkit.GradCAM(checkpoint.model, "features.relu").explain(x)
    y = result.classes
    assert y is not None
    random_maps = torch.rand(16, 28, 28, generator=torch.Generator().manual_seed(0))
    flat_x = x.numpy().reshape(16, -1)

    def restore(arr: np.ndarray, indices: np.ndarray, **kwargs: object) -> np.ndarray:
        """Quantus's loop with its perturbation fixed: put the input's values back."""
        restored = arr.copy()
        rows = np.arange(len(arr))[:, None]
        restored[rows, indices] = flat_x[rows, indices]
        return restored

    for maps in (result.maps, random_maps):
        a = maps.numpy()[:, None].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            as_shipped = quantus.Monotonicity(features_in_step=28, disable_warnings=True)(
                model=checkpoint.model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.copy(),
                device="cpu",
            )  # fmt: skip
            fixed = quantus.Monotonicity(features_in_step=28, perturb_func=restore,
                                         disable_warnings=True)(
                model=checkpoint.model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.copy(),
                device="cpu",
            )  # fmt: skip
        ours = camkit.metrics.monotonicity(checkpoint.model, x, maps, y, features_in_step=28,
                                           ties="quantus")  # fmt: skip
        assert all(as_shipped)  # Quantus 0.6 scores every map monotonic, a random one too
        assert ours.values.tolist() == [float(v) for v in fixed]
    assert camkit.metrics.monotonicity(checkpoint.model, x, random_maps, y,
                                       features_in_step=28).summary < 1  # fmt: skip


def test_non_sensitivity_by_hand() -> None:
    model = _one_logit()
    with torch.no_grad():
        model[1].weight[0, 3] = 0.0  # class 0 ignores pixel 3
    x = torch.tensor([[[[0.5, 0.6], [0.7, 0.8]]]])
    # with the baseline 0 every other pixel moves the logit; the map marks pixels 0 and 3
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    got = camkit.metrics.non_sensitivity(model, x, maps, 0, baseline=0.0, softmax=False)
    # breaches: 1 and 2 (the model reacts, the map says 0) and 3 (the map marks, no reaction)
    assert got.values.tolist() == [3.0]
    exact = torch.tensor([[[1.0, 0.2], [0.3, 0.0]]])
    assert camkit.metrics.non_sensitivity(model, x, exact, 0, baseline=0.0).values.tolist() == [0.0]
    with pytest.raises(CamkitValueError, match="eps: got 0"):
        camkit.metrics.non_sensitivity(model, x, maps, 0, eps=0)


def test_non_sensitivity_equals_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:4])
    result = camkit.GradCAM(checkpoint.model, "features.relu").explain(x)
    y = result.classes
    assert y is not None
    for maps in (result.maps, torch.where(result.maps > 0.3, result.maps, 0.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = quantus.NonSensitivity(disable_warnings=True)(
                model=checkpoint.model, x_batch=x.numpy(), y_batch=y.numpy(),
                a_batch=maps.numpy()[:, None].copy(), device="cpu",
            )  # fmt: skip
        got = camkit.metrics.non_sensitivity(checkpoint.model, x, maps, y)
        # counts of float comparisons: equal where no score change sits within float32
        # rounding of eps (checked: none does here)
        assert got.values.tolist() == [float(v) for v in expected]

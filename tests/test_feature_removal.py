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

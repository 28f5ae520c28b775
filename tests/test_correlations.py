"""Faithfulness Correlation, Monotonicity Correlation and Sensitivity-n: exact on a linear
model, and Quantus 0.6's values on the MNIST net."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import faithfulness_correlation, monotonicity_correlation, sensitivity_n
from examples.mnist.data import load_split
from examples.mnist.train import load
from tests.helpers import assert_untouched, snapshot

SIDE = 6


def _linear() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 3)).eval()
    return model, model[1].weight.detach()[0].view(SIDE, SIDE).double()


def _exact(weight: torch.Tensor, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Class 0's exact attribution: removing pixel i lowers its logit by w_i (x_i - b)."""
    return weight * (x[:, 0].double() - baseline.view(-1, 1, 1))


def _into_unit(a: torch.Tensor) -> torch.Tensor:
    """One affine map of the whole batch into [0, 1]: the same ranking and, up to an
    affinity common to all samples, the same masses."""
    return ((a - a.min()) / (a.max() - a.min())).float()


def test_the_exact_attribution_of_a_linear_model_correlates_perfectly() -> None:
    model, weight = _linear()
    x = torch.rand(4, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    black = x.flatten(1).amin(1)
    maps = _into_unit(_exact(weight, x, black))
    state = snapshot(model)
    # a subset's drop is its exact mass; its map mass is that times a, plus c |S|: r = 1
    result = faithfulness_correlation(model, x, maps, 0, runs=20, subset_size=5)
    torch.testing.assert_close(result.values, torch.ones(4, dtype=torch.float64))
    reverse = faithfulness_correlation(model, x, 1 - maps, 0, runs=20, subset_size=5)
    torch.testing.assert_close(reverse.values, -torch.ones(4, dtype=torch.float64))
    # Sensitivity-n: for each n, over the samples, the drop of the top n is their exact
    # mass, and the map's mass of the same pixels a times it plus c n: r = 1 at every n
    at_n = sensitivity_n(model, x, maps, 0, features_in_step=6, softmax=False)
    assert at_n.values.shape == (int(0.8 * 36 // 6),)
    torch.testing.assert_close(at_n.values, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(at_n.fractions, torch.arange(1, 5, dtype=torch.float64) / 6)
    assert_untouched(state, snapshot(model))


def test_monotonicity_correlation_by_hand() -> None:
    model, weight = _linear()
    x = torch.rand(3, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    # with a fixed baseline b, each draw of pixel i moves the logit by e_i = w_i (x_i - b):
    # its variance is e_i^2 / y^2, which ranks the pixels as |e_i| does: rho = 1
    exact = _exact(weight, x, torch.full((3,), 0.5, dtype=torch.float64))
    magnitude = exact.abs()
    maps = (magnitude / magnitude.flatten(1).amax(1).view(3, 1, 1)).float()
    result = monotonicity_correlation(model, x, maps, 0, baseline=0.5, samples=2, softmax=False)
    torch.testing.assert_close(result.values, torch.ones(3, dtype=torch.float64))
    # groups of a row: the variance is the squared sum of the row's e_i, not a function of
    # the row's |e| mass; only when the e_i of a row share a sign do the two rank alike
    rows = monotonicity_correlation(model, x, maps, 0, baseline=0.5, samples=2, softmax=False,
                                    features_in_step=SIDE).values  # fmt: skip
    assert rows.shape == (3,) and bool(((rows >= -1) & (rows <= 1)).all())
    # with uniform draws the variance still grows with |w_i| on a linear model, up to noise
    uniform = monotonicity_correlation(
        model,
        x,
        (weight.abs() / weight.abs().max()).float().expand(3, -1, -1),
        0,
        samples=50,
        softmax=False,
    )
    assert uniform.summary > 0.8


def test_seeded_and_given_draws() -> None:
    model, _ = _linear()
    x = torch.rand(2, 1, SIDE, SIDE)
    maps = torch.rand(2, SIDE, SIDE)
    first = faithfulness_correlation(model, x, maps, 0, runs=8, subset_size=4, seed=1)
    assert torch.equal(
        first.values,
        faithfulness_correlation(model, x, maps, 0, runs=8, subset_size=4, seed=1).values,
    )
    # the seeded subsets: each run's top 4 of a uniform draw per pixel, drawn run after run
    generator = torch.Generator().manual_seed(1)
    drawn = torch.stack([torch.rand(2, 36, generator=generator).topk(4).indices for _ in range(8)])
    # (the order of a subset's indices changes only the rounding of its float64 mass)
    again = faithfulness_correlation(model, x, maps, 0, subsets=drawn)
    torch.testing.assert_close(again.values, first.values, rtol=1e-12, atol=1e-12)
    shuffled = drawn.gather(2, torch.rand(drawn.shape, generator=generator).argsort(2))
    shuffle = faithfulness_correlation(model, x, maps, 0, subsets=shuffled)
    torch.testing.assert_close(shuffle.values, first.values, rtol=1e-12, atol=1e-12)
    subsets = torch.stack([torch.randperm(36)[:4].expand(2, 4) for _ in range(8)])
    given = faithfulness_correlation(model, x, maps, 0, subsets=subsets)
    assert given.values.shape == (2,)
    fills = torch.rand(36, 3, 2, dtype=torch.float64)
    one = monotonicity_correlation(model, x, maps, 0, samples=3, fills=fills)
    assert torch.equal(one.values, monotonicity_correlation(model, x, maps, 0, samples=3,
                                                            fills=fills).values)  # fmt: skip


def test_clear_errors() -> None:
    model, _ = _linear()
    x, maps = torch.rand(2, 1, SIDE, SIDE), torch.rand(2, SIDE, SIDE)
    with pytest.raises(CamkitValueError, match="subset_size: got 37; allowed: an int from 1"):
        faithfulness_correlation(model, x, maps, 0, subset_size=37)
    with pytest.raises(CamkitValueError, match="runs: got 0"):
        faithfulness_correlation(model, x, maps, 0, runs=0)
    with pytest.raises(CamkitValueError, match=r"subsets: got torch.float32 of shape \(3, 2\)"):
        faithfulness_correlation(model, x, maps, 0, subsets=torch.rand(3, 2))
    with pytest.raises(CamkitValueError, match="pixel indices from 0 to 35"):
        faithfulness_correlation(model, x, maps, 0, subsets=torch.full((3, 2, 4), 36))
    with pytest.raises(CamkitValueError, match=r"fills: got torch\.float32 of shape"):
        monotonicity_correlation(model, x, maps, 0, samples=2, fills=torch.rand(3, 2, 2))
    with pytest.raises(CamkitValueError, match="samples: got 0"):
        monotonicity_correlation(model, x, maps, 0, samples=0)
    with pytest.raises(CamkitValueError, match="x: got 1 sample"):
        sensitivity_n(model, x[:1], maps[:1], 0)
    with pytest.raises(CamkitValueError, match="mass: got 'all'"):
        sensitivity_n(model, x, maps, 0, mass="all")
    with pytest.raises(CamkitValueError, match="largest: got 0"):
        sensitivity_n(model, x, maps, 0, largest=0)
    with pytest.raises(CamkitValueError, match="less than one step"):
        sensitivity_n(model, x, maps, 0, largest=0.1, features_in_step=6)


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _mnist(count: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:count])
    result = camkit.GradCAM(checkpoint.model, "features.relu").explain(x)
    assert result.classes is not None
    return checkpoint.model, x, result.maps, result.classes


def test_equal_to_quantus_on_the_mnist_net(monkeypatch: pytest.MonkeyPatch) -> None:
    quantus = pytest.importorskip("quantus")
    model, x, maps, y = _mnist(16)
    inputs = {"model": model, "x_batch": x.numpy(), "y_batch": y.numpy(), "device": "cpu"}
    a = maps.numpy()[:, None]

    # Faithfulness Correlation: Quantus draws each subset with np.random.choice; hand it ours
    runs, size = 12, 60
    subsets = torch.stack([torch.randperm(784, generator=torch.Generator().manual_seed(r))[:size]
                           .expand(16, size) for r in range(runs)])  # fmt: skip
    draws = iter(subsets.reshape(-1, size).numpy())
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(draws))
    with _quiet():
        metric = quantus.FaithfulnessCorrelation(
            nr_runs=runs, subset_size=size, return_aggregate=False, disable_warnings=True
        )
        expected = metric(a_batch=a.copy(), **inputs)
    monkeypatch.undo()
    got = faithfulness_correlation(model, x, maps, y, subsets=subsets)
    # the same subsets and logits: float32 logits (Quantus) against float64 differences
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-4, atol=1e-5)

    # Monotonicity Correlation: one np.random.uniform draw (one value per sample) per copy
    step, samples = 56, 3
    np.random.seed(7)
    with _quiet():
        expected = quantus.MonotonicityCorrelation(features_in_step=step, nr_samples=samples,
                                                   disable_warnings=True)(a_batch=a.copy(),
                                                                          **inputs)  # fmt: skip
    np.random.seed(7)
    fills = torch.from_numpy(np.stack([[np.random.uniform(0, 1, 16) for _ in range(samples)]
                                       for _ in range(784 // step)]))  # fmt: skip
    got = monotonicity_correlation(model, x, maps, y, features_in_step=step, samples=samples,
                                   fills=fills, ties="quantus")  # fmt: skip
    assert not math.isnan(got.summary)
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-6, atol=1e-9)

    # Sensitivity-n: Quantus's mass is the step's group's
    with _quiet():
        expected = quantus.SensitivityN(features_in_step=28, disable_warnings=True,
                                        return_aggregate=False)(a_batch=a.copy(),
                                                                **inputs)  # fmt: skip
    got = sensitivity_n(model, x, maps, y, features_in_step=28, mass="step", ties="quantus")
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-4, atol=1e-5)
    paper = sensitivity_n(model, x, maps, y, features_in_step=28)
    assert not torch.allclose(paper.values, got.values)  # the two conventions differ here

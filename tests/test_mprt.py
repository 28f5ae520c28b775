"""Efficient and Smooth MPRT: the histogram entropy against numpy's, MPRT and eMPRT against
Quantus 0.6, sMPRT against its definition."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import efficient_mprt, randomization_test, smooth_mprt
from camkit.metrics._weights import parameterized_layers
from camkit.metrics.mprt import discrete_entropy
from examples.mnist.data import load_split
from examples.mnist.train import load
from tests.helpers import assert_untouched, snapshot


def _numpy_entropy(row: np.ndarray, bins: int) -> float:
    counts = np.histogram(row, bins=bins)[0]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("bins", [1, 7, 100])
def test_discrete_entropy_is_numpys_histogram(bins: int) -> None:
    generator = torch.Generator().manual_seed(bins)
    maps = torch.rand(6, 400, generator=generator, dtype=torch.float64) ** 3
    maps[1] = torch.round(maps[1] * 50) / 50  # values on bin edges: numpy's corrections
    maps[2] = 0.25  # a constant map: numpy's range of +- 0.5, one bin
    maps[3, :200] = 0.0
    got = discrete_entropy(maps, bins)
    expected = [_numpy_entropy(row, bins) for row in maps.numpy()]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    assert discrete_entropy(torch.tensor([[0.0, 1.0, 0.0, 1.0]]), 2).item() == pytest.approx(
        np.log(2)
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()


def test_a_method_blind_to_the_weights_scores_zero() -> None:
    model = _model()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    state = snapshot(model)

    def blind(m: nn.Module) -> object:
        return lambda inputs, classes: inputs[:, 0].sigmoid()

    assert efficient_mprt(model, blind, x).values.tolist() == [0.0, 0.0, 0.0]
    assert_untouched(state, snapshot(model))
    with pytest.raises(CamkitValueError, match="reseed: got 'once'"):
        efficient_mprt(model, blind, x, reseed="once")
    with pytest.raises(CamkitValueError, match="layers: \\['9'\\] own no parameters"):
        efficient_mprt(model, blind, x, layers=["9"])
    with pytest.raises(CamkitValueError, match="layers: got an empty list"):
        efficient_mprt(model, blind, x, layers=[])


def test_one_layer_is_named_by_itself_or_in_a_list() -> None:
    """A name of several characters alone means that layer (a str is a sequence too: taken
    one character at a time it named no layer)."""
    outer = nn.Sequential()
    outer.add_module("body", _model())
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def blind(m: nn.Module) -> Any:
        return lambda inputs, classes: inputs[:, 0].sigmoid()

    first = parameterized_layers(outer, x)[0]
    assert len(first) > 1
    for test in (randomization_test, smooth_mprt):
        alone = test(outer, blind, x, layers=first)
        assert alone.layers == [first]
        torch.testing.assert_close(alone.spearman, test(outer, blind, x, layers=[first]).spearman)
    assert efficient_mprt(outer, blind, x, layers=first).values.tolist() == [0.0, 0.0, 0.0]


def test_randomisation_is_seeded_and_leaves_the_callers_random_state() -> None:
    """Each layer is re-initialised from its seed alone, and the caller's generator goes on
    where it was: the same draw follows with or without a randomisation test between."""
    from camkit.metrics._weights import randomize

    model = _model()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    method = lambda m: camkit.GradCAM(m, "1")  # noqa: E731
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = randomization_test(model, method, x, seed=5)
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(999)  # another global state: the same maps
    again = randomization_test(model, method, x, seed=5)
    assert torch.equal(first.maps, again.maps)
    # a layer's new weights are its reset_parameters() from torch.manual_seed(seed)
    layer = nn.Linear(5, 2)
    randomize(layer, 7)
    torch.manual_seed(7)
    by_hand = nn.Linear(5, 2)
    assert torch.equal(layer.weight, by_hand.weight) and torch.equal(layer.bias, by_hand.bias)


def test_smooth_mprt_is_the_cascading_test_on_averaged_maps() -> None:
    checkpoint, _ = load()
    model = checkpoint.model
    x = checkpoint.prepare(load_split("test").images[:2])

    def method(m: nn.Module) -> camkit.GradCAM:
        return camkit.GradCAM(m, "features.relu")

    # one sample: the input itself, the plain cascading test
    one = smooth_mprt(model, method, x, samples=1, seed=3)
    plain = randomization_test(model, method, x, mode="cascading", seed=3)
    assert not one.spearman.isnan().any()
    torch.testing.assert_close(one.spearman, plain.spearman, rtol=0, atol=1e-12)
    assert one.layers == plain.layers
    # three: the input and two copies with noise 0.1 x each input's range, averaged
    three = smooth_mprt(model, method, x, samples=3, noise=0.1, seed=3)
    spread = 0.1 * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(1, 2, 1, 1, 1)
    draws = torch.randn((2, *x.shape), generator=torch.Generator().manual_seed(3)) * spread
    cam = method(model)
    classes = cam.explain(x).classes
    by_hand = sum(cam(x + d, classes).double() for d in draws) + cam(x, classes).double()
    torch.testing.assert_close(three.maps[0], by_hand / 3, rtol=0, atol=1e-6)
    with pytest.raises(CamkitValueError, match="noise: got -1"):
        smooth_mprt(model, method, x, noise=-1)


def _explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: object
             ) -> np.ndarray:  # fmt: skip
    """Grad-CAM at ``features.relu`` as Quantus's ``explain_func`` (float64: the same
    histogram edges as camkit's)."""
    maps = camkit.GradCAM(model, "features.relu")(torch.from_numpy(inputs),
                                                  torch.from_numpy(targets))  # fmt: skip
    return maps.double().numpy()[:, None]


def _method(m: nn.Module) -> object:
    """The same maps as camkit's randomisation tests take them."""
    return lambda inputs, classes: torch.from_numpy(
        _explain(m, inputs.numpy(), classes.numpy())[:, 0]
    )


def _against_quantus(metric: object) -> tuple[nn.Module, Tensor, Tensor, Any]:
    """The MNIST net, 8 digits, their predicted classes, and ``metric``'s Quantus result."""
    checkpoint, _ = load()
    model = checkpoint.model
    x = checkpoint.prepare(load_split("test").images[:8])
    y = camkit.GradCAM(model, "features.relu").explain(x).classes
    assert y is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = metric(  # type: ignore[operator]
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=_explain,
            a_batch=_explain(model, x.numpy(), y.numpy()), device="cpu",
        )  # fmt: skip
    return model, x, y, expected


def test_efficient_mprt_equals_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    model, x, y, expected = _against_quantus(quantus.EfficientMPRT(disable_warnings=True))
    got = efficient_mprt(model, _method, x, y, reseed="quantus")
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-10)
    assert got.values.isfinite().all()


def test_mprt_equals_quantus() -> None:
    """The cascading test's Spearman correlations of the absolute maps, layer by layer from
    the logits down, with Quantus's seeding (``reseed="quantus"``, seed 42)."""
    quantus = pytest.importorskip("quantus")
    model, x, y, expected = _against_quantus(quantus.MPRT(disable_warnings=True))
    got = randomization_test(model, _method, x, y, seed=42, reseed="quantus", structural=False)
    assert list(expected) == ["original", *got.layers]
    np.testing.assert_allclose(expected["original"], 1.0, rtol=1e-12)
    for step, layer in enumerate(got.layers):
        np.testing.assert_allclose(got.spearman_abs[step].numpy(), expected[layer], rtol=1e-12,
                                   atol=1e-12, err_msg=layer)  # fmt: skip
    # camkit's own seeding (each layer from its own seed) draws other weights
    own = randomization_test(model, _method, x, y, seed=42, structural=False)
    assert not torch.equal(own.spearman_abs, got.spearman_abs)
    with pytest.raises(CamkitValueError, match="reseed: got 'once'"):
        randomization_test(model, _method, x, y, reseed="once")

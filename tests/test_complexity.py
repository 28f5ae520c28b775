"""Complexity metrics: hand-derived values, properties, and Quantus 0.6's values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import camkit
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.metrics import complexity, effective_complexity, sparseness
from examples.mnist.data import load_split
from examples.mnist.train import load

F32 = 2.0**-24
"""The values are computed in float64 and returned in float32: one rounding, at most this
relative error (the offsets of Quantus's definitions are in the expected values)."""


def test_hand_derived_values() -> None:
    maps = torch.zeros(4, 4, 4)
    maps[0] = 1  # the same everywhere
    maps[1, 0, 0] = 1  # one pixel
    maps[2, 0, :2] = 1  # two pixels, equal
    maps[3, 0, 0], maps[3, 1, 1] = 1.0, 0.5  # two pixels, 2:1
    g = sparseness(maps).values.double()
    # the Gini index as the mean absolute difference, sum_ij |a_i - a_j| / (2 P sum a), of
    # the magnitudes plus Quantus's offset: another formula than camkit's sorted sum
    for sample, values in enumerate(maps.flatten(1).tolist()):
        a = [v + 1e-7 for v in values]
        expected = sum(abs(u - v) for u in a for v in a) / (2 * len(a) * sum(a))
        assert g[sample] == pytest.approx(expected, rel=F32, abs=1e-12)
    assert g[0] == pytest.approx(0.0, abs=1e-12) and g[1] == pytest.approx(15 / 16, rel=2e-6)
    h = complexity(maps).values.double()
    assert h[0] == pytest.approx(math.log(16), rel=F32)
    assert h[1] == pytest.approx(0.0, abs=1e-9)
    assert h[2] == pytest.approx(math.log(2), rel=F32)
    assert h[3] == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3), rel=F32)
    assert effective_complexity(maps).values.tolist() == [16.0, 1.0, 2.0, 2.0]
    assert effective_complexity(maps, eps=0.6).values.tolist() == [16.0, 1.0, 2.0, 1.0]


def test_properties() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(8, 7, 9, generator=generator)
    for metric in (sparseness, complexity, effective_complexity):
        base = metric(maps).values
        # magnitudes, each map's own scale: sign and scale do not matter
        assert torch.allclose(metric(-3.5 * maps).values, base, rtol=1e-6, atol=1e-6)
        # a sample's value does not depend on its batch
        assert torch.allclose(metric(maps[2:3]).values, base[2:3], rtol=0, atol=0)
    # sparser maps score higher on sparseness, lower on complexity
    peaked = maps**8
    assert (sparseness(peaked).values > sparseness(maps).values).all()
    assert (complexity(peaked).values < complexity(maps).values).all()
    empty = torch.zeros(1, 3, 3)
    assert math.isnan(complexity(empty).values.item())
    assert effective_complexity(empty).values.item() == 0.0
    mixed = torch.cat([empty, maps[:1, :3, :3]])
    assert complexity(mixed).summary == pytest.approx(complexity(maps[:1, :3, :3]).summary)


def test_batch_normalise_is_quantus_scaling() -> None:
    maps = torch.zeros(2, 2, 2)
    maps[0, 0, 0], maps[0, 1, 1] = 1.0, 1e-5 * 0.5  # 5e-6 of its own max
    maps[1, 0, 0] = 0.25  # the batch's largest magnitude is 1: this map is not rescaled
    assert effective_complexity(maps).values.tolist() == [1.0, 1.0]
    maps[1, 0, 1] = 0.2 * 1e-5  # 8e-6 of its own max, 2e-6 of the batch's
    assert effective_complexity(maps).values.tolist() == [1.0, 1.0]
    maps[1, 0, 1] = 0.5 * 1e-5  # 2e-5 of its own max, 5e-6 of the batch's
    assert effective_complexity(maps).values.tolist() == [1.0, 2.0]
    assert effective_complexity(maps, batch_normalise=True).values.tolist() == [1.0, 1.0]


def test_clear_errors() -> None:
    with pytest.raises(CamkitTypeError, match="maps: expected a tensor"):
        sparseness(np.zeros((2, 3, 3)))  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match=r"maps: expected a non-empty floating-point"):
        complexity(torch.zeros(3, dtype=torch.float32))
    with pytest.raises(CamkitValueError, match=r"maps: expected a non-empty floating-point"):
        complexity(torch.zeros(2, 3, 3, dtype=torch.int64))
    with pytest.raises(CamkitValueError, match="eps: got -1"):
        effective_complexity(torch.zeros(2, 3, 3), eps=-1)


def test_equal_to_quantus_on_the_mnist_net() -> None:
    quantus = pytest.importorskip("quantus")
    checkpoint, _ = load()
    test = load_split("test")
    x = checkpoint.prepare(test.images[:32])
    cams = {
        "Grad-CAM": camkit.GradCAM(checkpoint.model, "features.relu")(x),
        "signed Grad-CAM": camkit.GradCAM(checkpoint.model, "features.relu")
        .explain(x, relu=False, normalize=False)
        .maps,
    }
    metrics = {
        "sparseness": (sparseness, quantus.Sparseness),
        "complexity": (complexity, quantus.Complexity),
        "effective_complexity": (effective_complexity, quantus.EffectiveComplexity),
    }
    for name, maps in cams.items():
        a = maps.numpy()[:, None].astype(np.float64)  # Quantus's (N, 1, H, W)
        for metric, (ours, theirs) in metrics.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = theirs(disable_warnings=True)(
                    model=None, x_batch=x.numpy(), y_batch=np.zeros(32, int), a_batch=a.copy()
                )
            # Quantus scales by the batch's largest magnitude: the same maps given as such
            got = ours(maps.double(), batch_normalise=True).values.double().numpy()
            np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=1e-6,
                                       atol=1e-9, err_msg=f"{metric} on {name}")  # fmt: skip
        if name == "Grad-CAM":  # each map's maximum is 1: both scalings agree
            for ours, _ in metrics.values():
                assert torch.equal(ours(maps).values, ours(maps, batch_normalise=True).values)

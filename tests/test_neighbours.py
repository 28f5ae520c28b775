"""Sufficiency and Consistency: hand-built batches, and Quantus 0.6's values."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import camkit
from camkit.errors import CamkitValueError
from camkit.metrics import consistency, sufficiency
from examples.mnist.data import load_split
from examples.mnist.train import load
from tests.helpers import assert_untouched, snapshot


def _by_sign() -> nn.Module:
    """Class 0 when the first pixel is positive, else class 1."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, 0], model[1].weight[1, 0] = 1.0, -1.0
        model[1].bias.zero_()
    return model


def test_hand_built_batches() -> None:
    model = _by_sign()
    x = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0]).view(5, 1, 1, 1).expand(5, 1, 2, 2).clone()
    # predicted classes: 0 0 1 0 1; maps: two groups, {0, 1, 2} (equal maps) and {3, 4}
    # (almost equal): every relative distance is 0 or tiny within a group, 1 or near it across
    a, b = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    maps = torch.stack([a, a, a, b, torch.tensor([0.0, 0.0, 1.0, 0.9])]).view(5, 2, 2)
    state = snapshot(model)
    got = sufficiency(model, x, maps, threshold=0.5)
    # sample 0: close to 1 (same class) and 2 (other): 1/2; sample 2: close to 0 and 1, both
    # of the other class: 0; sample 3: close to 4 only, of the other class: 0
    assert got.values.tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]
    top = consistency(model, x, maps, top=1)
    # top pixel (ties in row-major order): 0, 0, 0, 2, 2: the same groups as above
    assert top.values.tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]
    # threshold 0: only equal maps are close; 3 and 4 have no other: alone
    lonely = sufficiency(model, x, maps, threshold=0.0, alone=math.nan)
    assert [math.isnan(v) for v in lonely.values.tolist()] == [False, False, False, True, True]
    assert lonely.values[:3].tolist() == [0.5, 0.5, 0.0]
    assert_untouched(state, snapshot(model))


def test_positions_without_variance_add_nothing() -> None:
    model = _by_sign()
    x = torch.randn(6, 1, 2, 2)
    maps = torch.rand(6, 2, 2)
    padded = torch.zeros(6, 4, 4)
    padded[:, 1:3, 1:3] = maps  # a border of zeros in every map
    wide = torch.nn.functional.pad(x, (1, 1, 1, 1))
    model_wide = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model_wide[1].weight.zero_()
        model_wide[1].weight[:, 5] = model[1].weight[:, 0]
        model_wide[1].bias.zero_()
    assert torch.equal(sufficiency(model_wide, wide, padded).values,
                       sufficiency(model, x, maps).values)  # fmt: skip


def test_clear_errors() -> None:
    model = _by_sign()
    x, maps = torch.rand(3, 1, 2, 2), torch.rand(3, 2, 2)
    with pytest.raises(CamkitValueError, match="threshold: got 2"):
        sufficiency(model, x, maps, threshold=2)
    with pytest.raises(CamkitValueError, match="top: got 0"):
        consistency(model, x, maps, top=0)
    with pytest.raises(CamkitValueError, match="discretise: got 'sign'"):
        consistency(model, x, maps, discretise="sign")


def test_equal_to_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    cdist = pytest.importorskip("scipy.spatial.distance").cdist  # Quantus's dependency
    checkpoint, _ = load()
    x = checkpoint.prepare(load_split("test").images[:32])
    model = checkpoint.model
    result = camkit.GradCAM(model, "features.relu").explain(x)
    y = result.classes
    assert y is not None
    inputs = {"model": model, "x_batch": x.numpy(), "y_batch": y.numpy(), "device": "cpu"}
    # maps whose every position varies over the batch, each with its largest value 1
    random_maps = torch.rand(32, 28, 28, generator=torch.Generator().manual_seed(0))
    random_maps = random_maps / random_maps.flatten(1).amax(1).view(-1, 1, 1)
    for threshold in (0.6, 0.8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = quantus.Sufficiency(threshold=threshold, disable_warnings=True)(
                a_batch=random_maps.numpy()[:, None].copy(), **inputs
            )
        got = sufficiency(model, x, random_maps, threshold=threshold)
        np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-12)
    # on CAMs the two agree; with a border that is 0 in every map, scipy divides 0 by 0 there,
    # every distance is NaN and Quantus scores every sample 0, where camkit leaves the border
    # out: its values are scipy's on the interior
    cams = result.maps
    got = sufficiency(model, x, cams)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = quantus.Sufficiency(disable_warnings=True)(
            a_batch=cams.numpy()[:, None].copy(), **inputs
        )
    np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-12)
    bordered = torch.zeros_like(cams)
    bordered[:, 2:-2, 2:-2] = cams[:, 2:-2, 2:-2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        degenerate = quantus.Sufficiency(disable_warnings=True)(
            a_batch=bordered.numpy()[:, None].copy(), **inputs
        )
        assert not any(degenerate)
        interior = bordered[:, 2:-2, 2:-2].flatten(1).double().numpy()
        distances = cdist(interior, interior, "seuclidean")
    close = distances / distances.max() <= 0.6
    np.fill_diagonal(close, False)
    predicted = model(x).argmax(1).numpy()
    same = predicted[None] == predicted[:, None]
    reference = (close & same).sum(1) / np.maximum(close.sum(1), 1)
    np.testing.assert_allclose(sufficiency(model, x, bordered).values.numpy(), reference,
                               rtol=1e-12)  # fmt: skip
    for maps in (result.maps, random_maps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = quantus.Consistency(disable_warnings=True)(
                a_batch=maps.numpy()[:, None].copy(), **inputs
            )
        got = consistency(model, x, maps, discretise="quantus")
        # Quantus divides by (count + 1e-9)
        np.testing.assert_allclose(got.values.numpy(), np.asarray(expected), rtol=1e-8)


def test_the_top_positions_are_a_stable_sorts_with_ties_in_row_major_order() -> None:
    """Consistency's labels come from one topk; they equal what a stable descending sort
    keeps, on maps full of ties (values in {0, 1, 2, 3})."""
    from camkit.metrics.neighbours import _top_positions

    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        flat = (torch.rand(7, 50, generator=generator) * 4).floor().double()
        top = int(torch.randint(1, 51, (1,), generator=generator))
        ranked = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :top]
        assert torch.equal(_top_positions(flat, top), ranked.sort(dim=1).values)


@given(
    st.integers(1, 10),
    st.integers(0, 40),
    st.lists(st.integers(0, 9), min_size=0, max_size=4),
    st.integers(0, 2**16),
)
def test_distances_by_one_product_are_the_direct_differences(
    n: int, d: int, repeats: list[int], seed: int
) -> None:
    """The product form of the distances between centred rows equals the direct
    differences within its rounding, and equal rows are exactly 0 apart."""
    from camkit.metrics.neighbours import _distances

    rows = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for i, j in itertools.pairwise(repeats):  # some rows equal to others
        rows[j % n] = rows[i % n]
    rows = rows - rows.mean(dim=0)
    direct = (rows[:, None] - rows[None, :]).square().sum(dim=2).sqrt()
    got = _distances(rows)
    squares = rows.square().sum(dim=1)
    # the squared distance's rounding is at most about (D + 2) eps (|a|^2 + |b|^2)
    bound = (2 * (d + 2) * torch.finfo(torch.float64).eps * (squares[:, None] + squares)).sqrt()
    assert bool(((got - direct).abs() <= bound).all())
    assert bool((got[direct == 0] == 0).all())
    assert bool((got.diagonal() == 0).all())

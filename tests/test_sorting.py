"""Sorting each row's values on the CPU (``camkit.metrics._sorting``): the NumPy paths
against torch's sort and against counts of pairs, on rows with ties, signed zeros and
infinities, in every float dtype."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from camkit.metrics._sorting import average_ranks, stable_order

# values chosen so that rows tie often, hold both zeros and both infinities, and reach
# past float16's and bfloat16's range and precision
_VALUES = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-40, -1e-40, 3.0e38, -3.0e38, 1e5, 1 / 3, 2.0**-24]
_VALUES += [float("inf"), float("-inf")]


def _pairwise_ranks(values: torch.Tensor) -> torch.Tensor:
    """Each value's 0-based average rank by counting pairs: the values below it, plus the
    mean place among those equal to it."""
    below = (values[:, None, :] < values[:, :, None]).sum(2).double()
    tied = (values[:, None, :] == values[:, :, None]).sum(2).double()
    return below + (tied - 1) / 2


@st.composite
def rows(draw: st.DrawFn) -> torch.Tensor:
    n = draw(st.integers(1, 4))
    p = draw(st.integers(1, 30))
    picked = draw(st.lists(st.sampled_from(_VALUES), min_size=n * p, max_size=n * p))
    values = torch.tensor(picked, dtype=torch.float64).view(n, p)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    values = values.to(dtype)
    if dtype == torch.float64 and draw(st.booleans()):  # values float32 does not hold
        values = values + 0.1
    return values


@given(rows(), st.booleans())
def test_stable_order_is_torchs_stable_sort(values: torch.Tensor, descending: bool) -> None:
    expected = torch.sort(values, dim=1, descending=descending, stable=True).indices
    assert torch.equal(stable_order(values, descending), expected)
    # the NumPy path keeps to its input: a transposed (strided) view sorts alike
    strided = values.T.contiguous().T
    assert torch.equal(stable_order(strided, descending), expected)


def test_stable_order_falls_back_to_torch_with_nan_and_gradients() -> None:
    values = torch.tensor([[2.0, float("nan"), 1.0, 2.0]])
    expected = torch.sort(values, dim=1, stable=True).indices
    assert torch.equal(stable_order(values), expected)
    graded = values.nan_to_num().requires_grad_()
    assert torch.equal(stable_order(graded), torch.sort(graded, dim=1, stable=True).indices)


@given(rows())
def test_average_ranks_are_the_mean_place_of_each_run_of_ties(values: torch.Tensor) -> None:
    # in any dtype, the ranks come back as float64, exactly (halves of small integers)
    expected = _pairwise_ranks(values)
    ranks = average_ranks(values)
    assert ranks.dtype == torch.float64
    torch.testing.assert_close(ranks, expected, rtol=0, atol=0)
    strided = values.T.contiguous().T  # a transposed view ranks alike
    torch.testing.assert_close(average_ranks(strided), expected, rtol=0, atol=0)


def test_mann_whitney_u_by_numpy_and_by_torch_counts_the_pairs() -> None:
    from camkit.metrics._sorting import mann_whitney_u, rank_sums_torch

    generator = torch.Generator().manual_seed(0)
    values = torch.round(torch.rand(6, 50, generator=generator, dtype=torch.float64) * 5) / 5
    selected = torch.rand(6, 50, generator=generator) > 0.5
    # every (selected, other) pair: 1 where the selected value is larger, 1/2 where tied
    larger = (values[:, :, None] > values[:, None, :]).double()
    tied = (values[:, :, None] == values[:, None, :]).double()
    pairs = selected[:, :, None] & ~selected[:, None, :]
    expected = ((larger + tied / 2) * pairs).sum(dim=(1, 2))
    torch.testing.assert_close(mann_whitney_u(values, selected), expected, rtol=0, atol=0)
    by_torch = mann_whitney_u(values.clone().requires_grad_(), selected)  # the torch path
    torch.testing.assert_close(by_torch, expected, rtol=0, atol=1e-9)
    # the rank sums behind the torch path: below, plus the mean place among the ties
    below = (values[:, None, :] < values[:, :, None]).sum(2).double()
    ties = (values[:, None, :] == values[:, :, None]).sum(2).double()
    ranks = ((below + (ties + 1) / 2) * selected).sum(1)
    torch.testing.assert_close(rank_sums_torch(values, selected), ranks, rtol=0, atol=1e-9)


def test_average_ranks_by_numpy_and_by_torch() -> None:
    from camkit.metrics._sorting import _average_ranks_torch, average_ranks

    values = torch.round(torch.rand(5, 40, generator=torch.Generator().manual_seed(1)) * 4) / 4
    values = values.double()
    expected = _pairwise_ranks(values)
    torch.testing.assert_close(average_ranks(values), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(_average_ranks_torch(values), expected, rtol=0, atol=1e-12)


def test_average_ranks_of_rows_with_nan_in_every_dtype() -> None:
    from camkit.metrics._sorting import _average_ranks_torch

    # NaN sorts last and ties with nothing, in NumPy's path as in torch's
    row = [[2.0, float("nan"), 1.0, 2.0, float("nan"), -0.0, 0.0]]
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        values = torch.tensor(row, dtype=dtype)
        expected = torch.tensor([[3.5, 5.0, 2.0, 3.5, 6.0, 0.5, 0.5]], dtype=torch.float64)
        torch.testing.assert_close(average_ranks(values), expected, rtol=0, atol=0)
        torch.testing.assert_close(_average_ranks_torch(values), expected, rtol=0, atol=0)

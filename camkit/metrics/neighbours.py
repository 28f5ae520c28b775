"""Metrics that compare the samples of a batch: do inputs whose maps agree get the same
prediction?

:func:`sufficiency` (Dasgupta et al., 2022) asks it of maps that are close;
:func:`consistency` (the same paper) of maps that are the same once made
discrete. Both score each sample against the others in its batch, so a value
depends on the batch it is computed in: compare methods on the same batches
(as :func:`~camkit.metrics.compare` does), with batches large enough to hold
several samples of each class.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from camkit._engine.option_checks import finite_number
from camkit.errors import CamkitValueError
from camkit.metrics._common import (
    Maps,
    MetricResult,
    check_batch,
    classes_of,
    logits,
    maps_for,
    summarize,
)
from camkit.metrics._removal import check_count
from camkit.targets import Target

__all__ = ["consistency", "sufficiency"]


def _agreement(same_map: Tensor, predicted: Tensor, alone: float) -> Tensor:
    """Per sample: the share of the *other* samples with the same map (``same_map``,
    ``(N, N)`` bool) that have its predicted class; ``alone`` where none has."""
    others = same_map & ~torch.eye(len(predicted), dtype=torch.bool)
    agree = others & (predicted[None] == predicted[:, None])
    count = others.sum(dim=1).double()
    share = agree.sum(dim=1).double() / count.clamp_min(1)
    return torch.where(count > 0, share, alone)


def _top_positions(flat: Tensor, top: int) -> Tensor:
    """The positions of each row's ``top`` largest values, ties taken in row-major order,
    in increasing order ``(N, top)``: what a stable descending sort keeps, from one topk
    instead of a full sort."""
    kth = flat.topk(top, dim=1).values[:, -1:]
    above, equal = flat > kth, flat == kth
    needed = top - above.sum(dim=1, keepdim=True)
    chosen = above | (equal & (equal.cumsum(dim=1) <= needed))
    return chosen.nonzero()[:, 1].view(len(flat), top)


def _distances(rows: Tensor) -> Tensor:
    r"""Euclidean distances between the float64 ``rows`` ``(N, D)``, centred, ``(N, N)``.

    By one matrix product, :math:`\|a\|^2 + \|b\|^2 - 2 a \cdot b`: 14 times faster
    than the direct differences at 256 maps of 784 values. Rows centred on their mean
    keep the rounding of a distance that matters (one of the largest's order) near
    float64's epsilon; a pair whose product form is within its rounding of zero (equal
    maps, among them) is computed again from its differences, so equal rows are exactly
    0 apart.
    """
    squares = (rows * rows).sum(dim=1)
    across = squares[:, None] + squares[None, :]
    squared = (across - 2 * (rows @ rows.T)).clamp_min_(0)
    # the product form's rounding is at most about (D + 2) eps times ``across``
    near = squared <= 2 * (rows.shape[1] + 2) * torch.finfo(torch.float64).eps * across
    if bool(near.any()):
        first, second = near.nonzero(as_tuple=True)
        difference = rows[first] - rows[second]
        squared[first, second] = (difference * difference).sum(dim=1)
    return squared.sqrt_()


def sufficiency(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    threshold: float = 0.6,
    alone: float = 0.0,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Sufficiency: the share of the samples whose map is close to a sample's that the
    model puts in the same class; higher is better.

    Dasgupta, Frost and Moshkovitz, *Framework for Evaluating Faithfulness of
    Local Explanations*, ICML 2022, https://arxiv.org/abs/2202.00734. The maps
    of the batch are compared by standardised Euclidean distance (each position
    divided by its variance over the batch), the distances divided by the
    largest; two maps are close when their distance is at most ``threshold``.
    As Quantus 0.6's ``quantus.Sufficiency`` (``cdist(..., "seuclidean")``, then
    ``normalise_by_max``), but for one choice: a position where every map of the
    batch has the same value (a CAM's zeros at the border) has no variance to
    divide by. scipy divides 0 by 0 there, so every distance is ``NaN`` and
    Quantus scores every sample ``alone``; camkit leaves such positions out
    (they add nothing to any distance). With every position varying, the two
    agree (tested).

    Args:
        model: The model (for the predicted classes).
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes the maps explain (``None``: the predicted classes);
            the metric compares predicted classes whatever is explained.
        threshold: The largest relative distance of close maps, in [0, 1].
        alone: The value of a sample with no other close map (Quantus: 0).
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The share per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> sufficiency(model, torch.rand(6, 1, 4, 4), torch.rand(6, 4, 4)).values.shape
        torch.Size([6])
    """
    _, batch_size = check_batch(x, batch_size)
    if not 0 <= finite_number(threshold, "threshold") <= 1:
        raise CamkitValueError(f"threshold: got {threshold!r}; allowed: a number in [0, 1]")
    _check_alone(alone)
    predicted = logits(model, x, batch_size).argmax(dim=1).cpu()
    classes = predicted if target is None else classes_of(model, x, target, batch_size)
    flat = maps_for(maps, x, classes).double().flatten(1).cpu()
    centred = flat - flat.mean(dim=0)  # distances do not change; their rounding shrinks
    variance = (centred * centred).sum(dim=0) / max(len(flat) - 1, 1)
    varying = variance > 0
    distances = _distances(centred[:, varying] / variance[varying].sqrt())
    largest = distances.max()
    relative = distances / largest if largest > 0 else distances
    return summarize("sufficiency", _agreement(relative <= threshold, predicted, alone))


def consistency(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    top: int = 5,
    discretise: str = "top",
    alone: float = 0.0,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Consistency: the share of the samples whose discretised map equals a sample's that
    the model puts in the same class; higher is better.

    Dasgupta, Frost and Moshkovitz (2022), as :func:`sufficiency`, with maps
    that are equal once made discrete in place of close ones. camkit's
    discretisation (``discretise="top"``) is the set of positions of each
    map's ``top`` largest values (ties in row-major order).

    Quantus 0.6's ``quantus.Consistency`` discretises with ``top_n_sign``,
    ``np.sign(a)[:n]``: the signs of the *first* ``n`` values in row-major
    order, not of the largest. For maps in [0, 1] those are the top-left
    corner's, 0 for most CAMs, so most samples share one label and the metric
    measures how many samples share a predicted class. ``discretise="quantus"``
    reproduces it.

    Args:
        model: The model (for the predicted classes).
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes the maps explain (``None``: the predicted classes).
        top: How many positions make a map's label.
        discretise: ``"top"`` or ``"quantus"``.
        alone: The value of a sample whose label no other sample shares (Quantus: 0).
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The share per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> maps = torch.zeros(4, 4, 4)
        >>> maps[:, 0, 0] = 1  # the same top pixel: one label for all
        >>> consistency(model, torch.rand(4, 1, 4, 4), maps, top=1).values.shape
        torch.Size([4])
    """
    _, batch_size = check_batch(x, batch_size)
    check_count("top", top)
    _check_alone(alone)
    if discretise not in ("top", "quantus"):
        raise CamkitValueError(f"discretise: got {discretise!r}; allowed: 'top', 'quantus'")
    predicted = logits(model, x, batch_size).argmax(dim=1).cpu()
    classes = predicted if target is None else classes_of(model, x, target, batch_size)
    flat = maps_for(maps, x, classes).double().flatten(1).cpu()
    if discretise == "top":
        labels = _top_positions(flat, min(top, flat.shape[1]))
    else:
        labels = flat[:, :top].sign()
    same = (labels[:, None] == labels[None]).all(dim=2)
    return summarize("consistency", _agreement(same, predicted, alone))


def _check_alone(alone: object) -> None:
    """``alone`` must be a number; NaN is one (a sample with no neighbour left out)."""
    if isinstance(alone, bool) or not isinstance(alone, (int, float)):
        raise CamkitValueError(f"alone: got {alone!r}; allowed: a number (NaN too)")

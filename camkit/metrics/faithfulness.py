"""Faithfulness: does the model's confidence follow the map? Average Drop, Increase in
Confidence (Chattopadhay et al., 2018) and deletion / insertion curves (Petsiuk et al., 2018).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit._engine.option_checks import tensor_or_number
from camkit.errors import CamkitValueError
from camkit.metrics._common import (
    Maps,
    MetricResult,
    check_batch,
    classes_of,
    maps_for,
    probabilities,
    summarize,
)
from camkit.metrics._removal import check_area, check_ties, cumulative_scores, order
from camkit.targets import Target

__all__ = ["average_drop", "blur", "deletion", "increase_in_confidence", "insertion"]


def _masked_confidence(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target,
    baseline: Tensor | float,
    batch_size: int | None,
) -> tuple[Tensor, Tensor]:
    _, batch_size = check_batch(x, batch_size)
    tensor_or_number(baseline, "baseline")
    classes = classes_of(model, x, target, batch_size)
    m = maps_for(maps, x, classes)[:, None]
    base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    masked = base + m.to(x.dtype) * (x - base)
    y = probabilities(model, x, classes, batch_size)
    o = probabilities(model, masked, classes, batch_size)
    return y, o


def average_drop(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    baseline: Tensor | float = 0.0,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Average Drop %: how much confidence is lost when only the map's region is shown.

    Chattopadhay et al., *Grad-CAM++*, WACV 2018, Sec. 5.1,
    https://arxiv.org/abs/1710.11063. With :math:`Y_i` the softmax probability
    of the target class on image :math:`i` and :math:`O_i` on the image
    multiplied by its map (:math:`b + M \odot (x - b)`, baseline :math:`b = 0`
    by default),

    .. math:: \text{AvgDrop} = \frac{100}{N} \sum_i \frac{\max(0, Y_i - O_i)}{Y_i}.

    Lower is better.

    Args:
        model: A classifier returning ``(N, classes)`` logits; left unchanged.
        x: Input batch ``(N, C, *spatial)``.
        maps: Maps ``(N, *spatial)`` in [0, 1] (layer-resolution maps are
            upsampled), or a CAM (any callable ``cam(x, classes)``) to compute them.
        target: ``None`` (predicted class), an int, or one class per sample.
        baseline: What a map value of 0 shows: ``0`` (the default) or a tensor.
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        Per-sample drops in % and their mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> average_drop(model, torch.rand(2, 1, 4, 4), torch.ones(2, 4, 4)).summary
        0.0
    """
    y, o = _masked_confidence(model, x, maps, target, baseline, batch_size)
    return summarize("average_drop", 100 * (y - o).clamp_min(0) / y)


def increase_in_confidence(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    baseline: Tensor | float = 0.0,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Increase in Confidence %: how often showing only the map's region raises confidence.

    Chattopadhay et al., WACV 2018, Sec. 5.1. With :math:`Y_i, O_i` as in
    :func:`average_drop`,

    .. math:: \text{Increase} = \frac{100}{N} \sum_i \mathbb{1}[Y_i < O_i].

    Higher is better. Arguments as for :func:`average_drop`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> increase_in_confidence(model, torch.rand(2, 1, 4, 4), torch.ones(2, 4, 4)).summary
        0.0
    """
    y, o = _masked_confidence(model, x, maps, target, baseline, batch_size)
    return summarize("increase_in_confidence", 100 * (y < o).double())


def blur(x: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """Gaussian blur of every spatial axis (separable, reflect padding), RISE's insertion start.

    Example:
        >>> import torch
        >>> blur(torch.ones(1, 3, 8, 8)).allclose(torch.ones(1, 3, 8, 8))
        True
    """
    if sigma <= 0 or kernel_size < 1 or kernel_size % 2 == 0:
        raise CamkitValueError(
            f"sigma, kernel_size: got {sigma}, {kernel_size}; need sigma > 0 and an odd size"
        )
    half = kernel_size // 2
    taps = torch.exp(-(torch.arange(-half, half + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(x.dtype).to(x.device)
    out = x
    n, c = x.shape[:2]
    for axis in range(2, x.dim()):
        moved = out.movedim(axis, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        pad = min(half, flat.shape[-1] - 1)
        padded = F.pad(flat, (pad, pad), mode="reflect") if pad else flat
        if pad < half:
            padded = F.pad(padded, (half - pad, half - pad), mode="replicate")
        smoothed = F.conv1d(padded, taps.view(1, 1, -1))
        out = smoothed.view(moved.shape).movedim(-1, axis)
    return out.reshape(n, c, *x.shape[2:])


def _curve(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target,
    *,
    start: Tensor,
    end: Tensor,
    step: int | None,
    ties: str,
    auc: str,
    batch_size: int | None,
    name: str,
) -> MetricResult:
    n, batch_size = check_batch(x, batch_size)
    check_ties(ties)
    check_area(auc)
    classes = classes_of(model, x, target, batch_size)
    m = maps_for(maps, x, classes).flatten(1)
    pixels = m.shape[1]
    step = step or max(1, math.ceil(pixels / 50))
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CamkitValueError(f"step: got {step!r}; allowed: a positive number of pixels")
    counts = torch.tensor(sorted({min(c, pixels) for c in range(0, pixels + step, step)}))
    ranked = order(m, ties).to(m.device)
    rank = torch.empty_like(ranked)
    rank.scatter_(1, ranked, torch.arange(pixels, device=m.device).expand(n, -1))
    # after step j the pixels ranked below counts[j] hold their end values
    step_of = torch.searchsorted(counts.to(rank.device), rank, right=True)
    curves = cumulative_scores(model, start, end, step_of, len(counts), classes, True, batch_size)
    fractions = counts.double() / pixels
    if auc == "quantus":
        area = torch.trapezoid(curves[:, 1:], dx=1.0, dim=1)
    else:
        area = torch.trapezoid(curves, fractions, dim=1)
    return summarize(name, area, curves=curves, fractions=fractions)


def _baseline(x: Tensor, baseline: str | Tensor | float) -> Tensor:
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "blur":
            return blur(x)
        raise CamkitValueError(f"baseline: got {baseline!r}; allowed: 'zeros', 'blur', a tensor")
    tensor_or_number(baseline, "baseline")
    value = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return value.expand_as(x)
    except RuntimeError as error:
        raise CamkitValueError(
            f"baseline: shape {tuple(value.shape)} does not broadcast to the input's "
            f"{tuple(x.shape)}"
        ) from error


def deletion(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    baseline: str | Tensor | float = "zeros",
    step: int | None = None,
    ties: str = "first",
    auc: str = "fraction",
    batch_size: int | None = None,
) -> MetricResult:
    r"""Deletion AUC: remove pixels in order of decreasing saliency; lower is better.

    Petsiuk et al., *RISE: Randomized Input Sampling for Explanation of
    Black-box Models*, BMVC 2018, https://arxiv.org/abs/1806.07421.
    ``step`` pixels at a time (all channels of a pixel together) are replaced
    by the baseline, in order of decreasing map value (ties by position); after
    each step the softmax probability of the target class is recorded. The
    score is the area under that curve by the trapezoid rule, with the x-axis
    the fraction of pixels removed, on [0, 1].

    Quantus 0.6's ``PixelFlipping`` records the same curve without its
    unperturbed first point (tested equal, the baseline the inputs' smallest
    value, as its "black"); its area, ``np.trapz(curve, dx=1)`` over the
    perturbed points, is ``auc="quantus"``, and its order of tied pixels (an
    unstable sort's) ``ties="quantus"``.

    Args:
        model: A classifier returning ``(N, classes)`` logits; left unchanged.
        x: Input batch ``(N, C, *spatial)``.
        maps: Maps ``(N, *spatial)`` or a CAM to compute them.
        target: ``None`` (predicted class), an int, or one class per sample.
        baseline: ``"zeros"`` (default), ``"blur"`` (:func:`blur` of ``x``), a
            number, or a tensor broadcastable to ``x``.
        step: Pixels per step; by default about 1/50 of the pixels.
        ties: How pixels of equal map value are ordered, ``"first"`` (by position) or
            ``"quantus"`` (see :data:`~camkit.metrics._removal.ORDERS`).
        auc: ``"fraction"`` or ``"quantus"`` (see :data:`~camkit.metrics._removal.AREAS`).
        batch_size: Perturbed images per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        Per-sample AUCs, their mean, the curves ``(N, steps + 1)`` and their x-axis.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> deletion(model, torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4), step=4).curves.shape
        torch.Size([2, 5])
    """
    return _curve(
        model,
        x,
        maps,
        target,
        start=x,
        end=_baseline(x, baseline),
        step=step,
        ties=ties,
        auc=auc,
        batch_size=batch_size,
        name="deletion",
    )


def insertion(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    baseline: str | Tensor | float = "blur",
    step: int | None = None,
    ties: str = "first",
    auc: str = "fraction",
    batch_size: int | None = None,
) -> MetricResult:
    r"""Insertion AUC: restore pixels in order of decreasing saliency; higher is better.

    Petsiuk et al., BMVC 2018. Starts from the baseline (a blurred copy of the
    image by default) and puts back ``step`` original pixels at a time, in order
    of decreasing map value; otherwise as :func:`deletion`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> insertion(model, torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4), step=8).fractions
        tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
    """
    return _curve(
        model,
        x,
        maps,
        target,
        start=_baseline(x, baseline),
        end=x,
        step=step,
        ties=ties,
        auc=auc,
        batch_size=batch_size,
        name="insertion",
    )

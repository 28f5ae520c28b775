"""Complexity: how concentrated a map is, whatever the model does with it.

A map that puts its mass on a few pixels is easier to read than one spread
thinly over the image (Bhatt et al., 2020; Chalasani et al., 2020). These
metrics read the maps alone: no model, no input. They follow Quantus 0.6's
definitions and defaults (``quantus.Sparseness``, ``quantus.Complexity``,
``quantus.EffectiveComplexity``: absolute values of the maps, each divided by
its largest magnitude), with one deliberate difference: camkit divides each
map by *its own* largest magnitude, where Quantus divides the whole batch by
the batch's (``normalise_by_max`` over every axis), which makes a sample's
score depend on the other samples of its batch. For camkit's maps, each scaled
to a maximum of 1, the two agree exactly; ``batch_normalise=True`` gives
Quantus's convention for other maps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.metrics._common import MetricResult, check_finite_maps, summarize
from camkit.metrics._sorting import sorted_rows

__all__ = ["complexity", "effective_complexity", "sparseness"]

GINI_OFFSET = 1e-7
"""What Quantus adds to every value before the Gini index (so that an all-zero map has one)."""

LOG_OFFSET = 1e-12
"""What Quantus adds inside the logarithm of the entropy."""


def _magnitudes(maps: Tensor, batch_normalise: bool) -> Tensor:
    """``|maps|`` flattened per sample ``(N, P)``, float64, each divided by its largest
    magnitude (the batch's with ``batch_normalise``); an all-zero map stays zero."""
    if not isinstance(maps, Tensor):
        raise CamkitTypeError(f"maps: expected a tensor (N, *spatial), got {type(maps).__name__}")
    if maps.dim() < 2 or not maps.is_floating_point() or maps.shape[0] == 0:
        raise CamkitValueError(
            f"maps: expected a non-empty floating-point tensor (N, *spatial), got "
            f"{tuple(maps.shape)} {maps.dtype}"
        )
    check_finite_maps(maps)
    values = maps.detach().double().flatten(1).abs()
    peak = values.amax() if batch_normalise else values.amax(dim=1, keepdim=True)
    return values / torch.where(peak > 0, peak, torch.ones_like(peak))


def sparseness(maps: Tensor, *, batch_normalise: bool = False) -> MetricResult:
    r"""Sparseness: the Gini index of each map's magnitudes.

    Chalasani et al., *Concise Explanations of Neural Networks using
    Adversarial Training*, ICML 2020, https://arxiv.org/abs/1810.06583. With
    the ``P`` magnitudes ``a`` of a map (each plus :math:`10^{-7}`, as
    Quantus adds) sorted in increasing order,
    :math:`G = \sum_i (2i - P - 1)\, a_{(i)} / (P \sum_i a_i)`: 0 for a map that
    is the same everywhere, :math:`(P - 1) / P` for a map on one pixel. Higher
    is sparser.

    Args:
        maps: ``(N, *spatial)`` maps (any sign: magnitudes are used).
        batch_normalise: Divide by the batch's largest magnitude, as Quantus does,
            instead of each map's own (the Gini index does not depend on it but
            for the offset).

    Returns:
        The Gini index per sample, and its mean.

    Example:
        >>> import torch
        >>> maps = torch.zeros(2, 4, 4); maps[0] = 1; maps[1, 0, 0] = 1
        >>> [round(v, 4) for v in sparseness(maps).values.tolist()]
        [0.0, 0.9375]
    """
    values = _magnitudes(maps, batch_normalise) + GINI_OFFSET
    count = values.shape[1]
    ordered = sorted_rows(values)
    ranks = torch.arange(1, count + 1, dtype=torch.float64, device=values.device)
    gini = ((2 * ranks - count - 1) * ordered).sum(1) / (count * ordered.sum(1))
    return summarize("sparseness", gini.float().cpu())


def complexity(maps: Tensor, *, batch_normalise: bool = False) -> MetricResult:
    r"""Complexity: the entropy of each map's fractional contributions.

    Bhatt et al., *Evaluating and Aggregating Feature-based Model Explanations*,
    IJCAI 2020, https://arxiv.org/abs/2005.00631. With
    :math:`p_i = |a_i| / \sum_j |a_j|`, :math:`H = -\sum_i p_i \log(p_i + 10^{-12})`
    (natural logarithm; the offset is Quantus's): 0 for a map on one pixel,
    :math:`\log P` for a map that is the same on all ``P`` pixels. Lower is
    simpler. An all-zero map has no contributions: ``NaN``, left out of the
    mean.

    Args:
        maps: ``(N, *spatial)`` maps (any sign: magnitudes are used).
        batch_normalise: As in :func:`sparseness` (no effect on the entropy but
            through the offset).

    Returns:
        The entropy per sample (``NaN`` for an all-zero map), and its mean.

    Example:
        >>> import math, torch
        >>> maps = torch.zeros(2, 4, 4); maps[0] = 1; maps[1, 0, 0] = 1
        >>> h = complexity(maps).values.tolist()
        >>> round(h[0] - math.log(16), 6), round(abs(h[1]), 6)
        (0.0, 0.0)
    """
    values = _magnitudes(maps, batch_normalise)
    total = values.sum(1, keepdim=True)
    shares = values / total  # 0 / 0 = NaN for an all-zero map, as in Quantus
    entropy = -(shares * torch.log(shares + LOG_OFFSET)).sum(1)
    return summarize("complexity", entropy.float().cpu())


def effective_complexity(
    maps: Tensor, *, eps: float = 1e-5, batch_normalise: bool = False
) -> MetricResult:
    r"""Effective complexity: how many pixels of each map exceed ``eps``.

    Nguyen and Martínez, *On Quantitative Aspects of Model Interpretability*,
    2020, https://arxiv.org/abs/2007.07584: the number of magnitudes above
    ``eps`` after each map is divided by its largest magnitude (Quantus's
    threshold, ``1e-5``, by default). Lower is simpler.

    Args:
        maps: ``(N, *spatial)`` maps (any sign: magnitudes are used).
        eps: The threshold, on maps scaled to a largest magnitude of 1.
        batch_normalise: Divide by the batch's largest magnitude, as Quantus does
            (then a sample's count depends on the rest of its batch).

    Returns:
        The count per sample (as floats), and its mean.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[0.0, 0.5], [1.0, 1e-6]]])
        >>> effective_complexity(maps).values.tolist()
        [2.0]
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise CamkitValueError(f"eps: got {eps!r}; allowed: a finite number >= 0")
    counts = (_magnitudes(maps, batch_normalise) > eps).sum(1)
    return summarize("effective complexity", counts.float().cpu())

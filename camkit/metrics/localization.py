"""Localization against ground-truth masks: the pointing game and its energy variant."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.metrics._common import MetricResult, summarize

__all__ = ["energy_pointing_game", "pointing_game"]


def _check(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(maps, Tensor) or not isinstance(masks, Tensor):
        raise CamkitTypeError(
            f"maps, masks: expected tensors, got {type(maps).__name__}, {type(masks).__name__}"
        )
    if maps.shape != masks.shape or maps.dim() < 2:
        raise CamkitValueError(
            f"masks: shape {tuple(masks.shape)} must equal the maps' {tuple(maps.shape)}, "
            f"(N, *spatial)"
        )
    return maps.detach().double(), masks.detach().bool()


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: float = 15.0) -> MetricResult:
    r"""Pointing game: is the map's maximum within ``tolerance`` pixels of the object?

    Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV 2016,
    https://arxiv.org/abs/1608.00507. A hit is scored when the location of the
    map's maximum (the first one, in row-major order, on ties) lies within
    Euclidean distance ``tolerance`` of a mask pixel (15 pixels in the paper;
    0 asks for the mask itself). Samples with an empty mask are ``NaN`` and
    left out of the summary, the hit rate.

    Args:
        maps: ``(N, *spatial)`` maps.
        masks: ``(N, *spatial)`` boolean ground-truth masks.
        tolerance: Distance in pixels.

    Returns:
        1.0 (hit) or 0.0 (miss) per sample, and the hit rate.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 5, 5); maps[0, 0, 0] = 1
        >>> mask = torch.zeros(1, 5, 5, dtype=torch.bool); mask[0, 2, 2] = True
        >>> pointing_game(maps, mask, tolerance=2.0).summary, pointing_game(maps, mask,
        ...     tolerance=3.0).summary
        (0.0, 1.0)
    """
    m, gt = _check(maps, masks)
    if tolerance < 0:
        raise CamkitValueError(f"tolerance: got {tolerance}; must be >= 0")
    spatial = m.shape[1:]
    peak = m.flatten(1).argmax(dim=1)
    coords = torch.stack(torch.unravel_index(peak, spatial), dim=1).double()  # (N, d)
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in spatial], indexing="ij"),
        dim=-1,
    ).view(-1, len(spatial))  # (P, d)
    distance = torch.cdist(coords[:, None], grid[None].expand(len(m), -1, -1))[:, 0]
    inside = gt.flatten(1)
    hit = ((distance <= tolerance + 1e-9) & inside).any(dim=1).double()
    empty = ~inside.any(dim=1)
    return summarize("pointing_game", torch.where(empty, math.nan, hit))


def energy_pointing_game(maps: Tensor, masks: Tensor) -> MetricResult:
    r"""Energy-based pointing game: the share of the map's mass inside the mask.

    Wang et al., *Score-CAM*, CVPRW 2020, Sec. 4.3 (after Zhang et al., 2016):

    .. math:: \text{proportion} = \frac{\sum_{ij \in \text{mask}} L_{ij}}{\sum_{ij} L_{ij}}.

    Maps must be non-negative. Samples with an all-zero map or an empty mask
    are ``NaN`` and left out of the mean.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])
        >>> mask = torch.tensor([[[True, False], [False, False]]])
        >>> energy_pointing_game(maps, mask).summary
        0.75
    """
    m, gt = _check(maps, masks)
    if (m < 0).any():
        raise CamkitValueError("maps: the energy pointing game needs non-negative maps")
    flat, inside = m.flatten(1), gt.flatten(1)
    total = flat.sum(dim=1)
    share = (flat * inside).sum(dim=1) / torch.where(total > 0, total, 1.0)
    valid = (total > 0) & inside.any(dim=1)
    return summarize("energy_pointing_game", torch.where(valid, share, math.nan))

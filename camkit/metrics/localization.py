"""Localization against ground-truth masks: the pointing game and its energy variant, the
ROC AUC of the map against the mask, relevance rank accuracy, and top-k intersection;
and on mosaics of images, Focus.

The ranking metrics (:func:`relevance_rank_accuracy`, :func:`top_k_intersection`)
take the map's highest pixels; where pixels tie at the cut (an upsampled map
that is zero over much of the image ties there), camkit counts the tied pixels
at their expected share (``ties="average"``: the value is the same whatever
the order of the pixels), where Quantus 0.6 takes them in the order of
``np.argsort(-a)``, an unstable sort (``ties="quantus"`` reproduces it, and
``ties="first"`` takes them in row-major order). The pointing game likewise
counts a map's several maxima at equal shares, where Quantus scores a hit if
any of them hits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camkit._engine.option_checks import non_negative
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.metrics._common import MetricResult, check_finite_maps, summarize
from camkit.metrics._sorting import kth_largest, mann_whitney_u

__all__ = [
    "auc",
    "energy_pointing_game",
    "focus",
    "mosaics",
    "pointing_game",
    "relevance_rank_accuracy",
    "top_k_intersection",
]

TIES = ("average", "first", "quantus")
"""How the ranking metrics take pixels that tie at the cut (see the module's text), and
how the pointing game counts a map's several maxima."""


def _check(maps: Tensor, masks: Tensor, convert: bool = True) -> tuple[Tensor, Tensor]:
    if not isinstance(maps, Tensor) or not isinstance(masks, Tensor):
        raise CamkitTypeError(
            f"maps, masks: expected tensors, got {type(maps).__name__}, {type(masks).__name__}"
        )
    if maps.shape != masks.shape or maps.dim() < 2:
        raise CamkitValueError(
            f"masks: shape {tuple(masks.shape)} must equal the maps' {tuple(maps.shape)}, "
            f"(N, *spatial)"
        )
    check_finite_maps(maps)
    if not convert:
        return maps.detach(), masks.detach().bool()
    return maps.detach().double(), masks.detach().bool()


def pointing_game(
    maps: Tensor, masks: Tensor, *, tolerance: float = 15.0, ties: str = "average"
) -> MetricResult:
    r"""Pointing game: is the map's maximum within ``tolerance`` pixels of the object?

    Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV 2016,
    https://arxiv.org/abs/1608.00507. A hit is scored when the location of the
    map's maximum lies within Euclidean distance ``tolerance`` of a mask pixel
    (15 pixels in the paper; 0 asks for the mask itself). Samples with an empty
    mask are ``NaN`` and left out of the summary, the hit rate.

    A map can have its maximum at several pixels (an upsampled CAM often does,
    at the border; an all-zero map everywhere). With ``ties="average"`` (the
    default) each of them counts at an equal share: the sample scores the share
    of its maxima that hit, the expected hit of a maximum picked at random, so
    that the value does not depend on the order of the pixels, and a map that
    points nowhere (a constant map) scores what pointing at random scores.
    ``ties="first"`` takes the first maximum in row-major order;
    ``ties="quantus"`` scores a hit when *any* maximum hits, as Quantus 0.6's
    ``PointingGame`` does (``np.any(s_batch * max_attribution)``, at
    ``tolerance=0``), which scores every constant map a hit.

    Quantus 0.6 scores a sample with an empty mask a hit too (it writes
    ``np.nan`` into a boolean array, which stores ``True``); camkit leaves it
    out, as Quantus means to. Its ``weighted=True`` raises a ``TypeError`` once a
    sample hits; camkit does not offer it.

    Args:
        maps: ``(N, *spatial)`` maps.
        masks: ``(N, *spatial)`` boolean ground-truth masks.
        tolerance: Distance in pixels.
        ties: ``"average"``, ``"first"`` or ``"quantus"``: how several maxima count.

    Returns:
        1.0 (hit) or 0.0 (miss) per sample (with ``ties="average"``, the share of
        the sample's maxima that hit), and the hit rate.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 5, 5); maps[0, 0, 0] = 1
        >>> mask = torch.zeros(1, 5, 5, dtype=torch.bool); mask[0, 2, 2] = True
        >>> pointing_game(maps, mask, tolerance=2.0).summary, pointing_game(maps, mask,
        ...     tolerance=3.0).summary
        (0.0, 1.0)
    """
    m, gt = _check(maps, masks)
    non_negative(tolerance, "tolerance")
    ties = _checked_ties(ties)
    flat, inside = m.flatten(1), gt.flatten(1)
    if ties == "first":
        peaks = torch.zeros_like(inside).scatter_(1, flat.argmax(dim=1, keepdim=True), True)
    else:
        peaks = flat == flat.amax(dim=1, keepdim=True)
    near = inside if tolerance == 0 else _near(peaks, inside, m.shape[1:], tolerance)
    hits = (peaks & near).sum(dim=1).double()
    hit = hits / peaks.sum(dim=1) if ties == "average" else (hits > 0).double()
    empty = ~inside.any(dim=1)
    return summarize("pointing_game", torch.where(empty, math.nan, hit))


def _near(peaks: Tensor, inside: Tensor, spatial: tuple[int, ...], tolerance: float) -> Tensor:
    """Of the positions marked in ``peaks`` ``(N, P)``, those within ``tolerance`` of a mask
    pixel (``inside``, ``(N, P)``): from each peak's distances to every position where a
    sample has few peaks, from the mask's distance transform where it has many (a
    constant map's every position)."""
    reach = (tolerance + 1e-9) ** 2
    grid = torch.stack(
        torch.meshgrid(
            *[torch.arange(s, dtype=torch.float64, device=peaks.device) for s in spatial],
            indexing="ij",
        ),
        dim=-1,
    ).view(-1, len(spatial))  # (P, d)
    pixels, radius = grid.shape[0], math.floor(tolerance + 1e-9)
    near = torch.zeros_like(peaks)
    # the transform costs about P * d * (2 radius + 1), the distances P * d per peak
    many = peaks.sum(dim=1) > 2 * radius + 1
    for i in many.nonzero()[:, 0].tolist():
        squared = _squared_distances(inside[i].view(spatial), radius)
        near[i] = peaks[i] & (squared.flatten() <= reach)
    rows, columns = (peaks & ~many[:, None]).nonzero(as_tuple=True)
    block = max(1, (1 << 22) // pixels)
    for first in range(0, len(rows), block):
        row, column = rows[first : first + block], columns[first : first + block]
        squared = ((grid[None] - grid[column][:, None]) ** 2).sum(dim=-1)  # (block, P)
        near[row, column] = ((squared <= reach) & inside[row]).any(dim=1)
    return near


def _squared_distances(mask: Tensor, radius: int) -> Tensor:
    """Each position's squared Euclidean distance to the nearest ``True`` of ``mask``, exact
    where it is at most ``radius ** 2`` (``inf`` where it is farther). The squared distance
    separates over the axes, ``min_y |x - y|^2 = min_{y_1} ((x_1 - y_1)^2 + min_{y_2}
    (...))``, so it is found one axis at a time; a distance within the radius has every
    axis's step within it, so each axis looks ``radius`` positions either side."""
    found = torch.where(mask, 0.0, math.inf).double()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=mask.device) ** 2
    for axis in range(mask.dim()):
        moved = found.movedim(axis, -1)
        lines = F.pad(moved.reshape(-1, 1, moved.shape[-1]), (radius, radius), value=math.inf)
        block = max(1, (1 << 23) // (moved.shape[-1] * len(offsets)))
        nearest = [
            (lines[j : j + block, 0].unfold(1, len(offsets), 1) + offsets).amin(dim=-1)
            for j in range(0, len(lines), block)
        ]  # each (lines, L, 2 radius + 1) before the minimum
        found = torch.cat(nearest).view(moved.shape).movedim(-1, axis)
    return found


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


def auc(maps: Tensor, masks: Tensor) -> MetricResult:
    r"""The area under the ROC curve of the map as a detector of the mask's pixels.

    Fawcett, *An introduction to ROC analysis*, Pattern Recognition Letters 2006
    (as ``quantus.AUC``): the probability that a pixel inside the mask scores
    higher than one outside it, ties counting one half (the Mann-Whitney
    statistic, which is what ``sklearn.metrics.roc_curve`` and ``auc`` give).
    0.5 is chance, 1 a map that ranks every mask pixel first. Samples whose mask
    is empty or covers everything are ``NaN`` and left out of the mean.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[0.9, 0.2], [0.2, 0.0]]])
        >>> mask = torch.tensor([[[True, True], [False, False]]])
        >>> auc(maps, mask).summary  # (1 + 1 + 0.5 + 1) / 4
        0.875
    """
    m, gt = _check(maps, masks, convert=False)  # ranks depend on the order alone
    flat, inside = m.flatten(1), gt.flatten(1)
    positives = inside.sum(dim=1).double()
    total = flat.shape[1]
    u = mann_whitney_u(flat, inside).to(positives.device)
    defined = (positives > 0) & (positives < total)
    values = torch.where(defined, u / (positives * (total - positives)).clamp_min(1), math.nan)
    return summarize("auc", values.cpu())


def relevance_rank_accuracy(maps: Tensor, masks: Tensor, *, ties: str = "average") -> MetricResult:
    r"""Relevance rank accuracy: the share of the map's top ``K`` pixels inside the mask, with
    ``K`` the mask's size.

    Arras et al., *CLEVR-XAI: A benchmark dataset for the ground truth evaluation
    of neural network explanations*, Information Fusion 2022 (as
    ``quantus.RelevanceRankAccuracy``). 1 when the map's ``K`` highest pixels are
    the mask. Samples with an empty mask are ``NaN`` and left out of the mean.

    Args:
        maps: ``(N, *spatial)`` maps.
        masks: ``(N, *spatial)`` boolean masks.
        ties: How pixels tied at the cut count (see :data:`TIES`): ``"average"``
            (their expected share), ``"first"`` (row-major order) or ``"quantus"``
            (``np.argsort(-a)``'s order, as Quantus 0.6).

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[0.9, 0.0], [0.0, 0.0]]])
        >>> mask = torch.tensor([[[True, True], [False, False]]])
        >>> relevance_rank_accuracy(maps, mask).summary  # 1 + 1/3 of the three tied zeros
        0.6666666666666666
    """
    m, gt = _check(maps, masks)
    sizes = gt.flatten(1).sum(1)
    hits = _top_hits(m, gt, sizes, _checked_ties(ties))
    values = torch.where(sizes > 0, hits / sizes.clamp_min(1), math.nan)
    return summarize("relevance_rank_accuracy", values)


def top_k_intersection(
    maps: Tensor,
    masks: Tensor,
    *,
    k: int = 1000,
    concept_influence: bool = False,
    ties: str = "average",
) -> MetricResult:
    r"""Top-k intersection: the share of the map's ``k`` highest pixels inside the mask.

    Theiner et al., *Interpretable Semantic Photo Geolocalization*, WACV 2022 (as
    ``quantus.TopKIntersection``, whose default ``k`` is 1000). A ``k`` above the
    pixel count takes every pixel, as Quantus does. With ``concept_influence``
    the share is divided by the mask's share of the image (1 is then chance).
    Samples with an empty mask are ``NaN`` and left out of the mean.

    Args:
        maps: ``(N, *spatial)`` maps.
        masks: ``(N, *spatial)`` boolean masks.
        k: How many of the highest pixels.
        concept_influence: Divide by the mask's share of the image.
        ties: As in :func:`relevance_rank_accuracy`.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[[0.9, 0.8], [0.1, 0.0]]])
        >>> mask = torch.tensor([[[True, False], [False, False]]])
        >>> top_k_intersection(maps, mask, k=2).summary
        0.5
    """
    m, gt = _check(maps, masks)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CamkitValueError(f"k: got {k!r}; allowed: a positive int")
    pixels = gt[0].numel()
    taken = min(k, pixels)
    ties = _checked_ties(ties)
    sizes = gt.flatten(1).sum(1).cpu()  # beside the hits, which are read on the host
    if taken == pixels:  # every pixel is among the top k: the hits are the mask's pixels
        hits = sizes.double()
    else:
        hits = _top_hits(m, gt, torch.full((len(m),), taken), ties)
    values = hits / taken
    if concept_influence:
        values = values * pixels / sizes.clamp_min(1)
    return summarize("top_k_intersection", torch.where(sizes > 0, values, math.nan))


def _checked_ties(ties: str) -> str:
    if ties not in TIES:
        raise CamkitValueError(f"ties: got {ties!r}; allowed: {', '.join(map(repr, TIES))}")
    return ties


def _top_hits(m: Tensor, gt: Tensor, counts: Tensor, ties: str) -> Tensor:
    """How many of each map's ``counts[i]`` highest pixels lie in its mask (float64)."""
    flat, inside = m.flatten(1), gt.flatten(1)
    counts = counts.to(torch.int64).cpu()
    if ties == "quantus":  # Quantus 0.6: np.argsort(-a), numpy's default (unstable) sort
        order = torch.from_numpy(np.argsort(-flat.cpu().numpy(), axis=-1))
        ranked = inside.cpu().gather(1, order)
        within = torch.arange(flat.shape[1]) < counts[:, None]
        return torch.where(counts > 0, (ranked & within).sum(1).double(), 0.0)
    if flat.device.type == "cpu":  # NumPy: these small element-wise steps cost it less
        return _top_hits_numpy(flat.numpy(), inside.numpy(), counts.numpy(), ties)
    return _top_hits_torch(flat, inside, counts, ties)


def _top_hits_torch(flat: Tensor, inside: Tensor, counts: Tensor, ties: str) -> Tensor:
    """:func:`_top_hits` of rows on any device, by torch (``counts`` on the host)."""
    taken = counts.clamp_min(1)
    cut = kth_largest(flat, taken)  # (N, 1)
    above, tied = flat > cut, flat == cut
    needed = (counts.to(flat.device) - above.sum(1)).double()
    hit = (inside & above).sum(1).double()
    tied_inside = (inside & tied).sum(1).double()
    if ties == "average":
        hit = hit + needed * tied_inside / tied.sum(1).double()
    else:  # first: the tied pixels in row-major order
        rank_in_tie = tied.long().cumsum(dim=1)  # 1, 2, ... along the tied pixels
        hit = hit + (inside & tied & (rank_in_tie <= needed[:, None])).sum(1).double()
    return torch.where(counts.to(flat.device) > 0, hit, 0.0).cpu()


def _top_hits_numpy(flat: np.ndarray, inside: np.ndarray, counts: np.ndarray, ties: str) -> Tensor:
    """:func:`_top_hits` of CPU rows, by NumPy (``counts`` the same for every row or not)."""
    taken = np.maximum(counts, 1)
    if (taken == taken[0]).all():
        k = int(taken[0])
        cut = -np.partition(-flat, k - 1, axis=1)[:, k - 1 : k]
    else:
        cut = np.take_along_axis(-np.sort(-flat, axis=1), taken[:, None] - 1, axis=1)
    above, tied = flat > cut, flat == cut
    needed = (counts - above.sum(1)).astype(np.float64)
    hit = (inside & above).sum(1).astype(np.float64)
    if ties == "average":
        hit += needed * (inside & tied).sum(1) / tied.sum(1)
    else:  # first: the tied pixels in row-major order
        rank_in_tie = np.cumsum(tied, axis=1)
        hit += (inside & tied & (rank_in_tie <= needed[:, None])).sum(1)
    return torch.from_numpy(np.where(counts > 0, hit, 0.0))


def focus(maps: Tensor, quadrants: Tensor) -> MetricResult:
    r"""Focus: on a 2x2 mosaic of images, the share of the map's mass on the quadrants that
    show the explained class; higher is better.

    Arias-Duart et al., *Focus! Rating XAI Methods and Finding Biases*, FUZZ-IEEE
    2022, https://arxiv.org/abs/2109.15035. Build the mosaics with
    :func:`mosaics` (two images of the class, two of others), explain the
    class on each, and pass which quadrants hold it. The quadrants split the
    map at ``H // 2`` and ``W // 2``; negative values are clipped to 0 first. As
    Quantus 0.6's ``quantus.Focus`` (tested equal), whose denominator adds
    ``1e-9``; camkit's does not, and an all-zero map is ``NaN``.

    Args:
        maps: ``(N, H, W)`` maps of the mosaics.
        quadrants: ``(N, 4)``: whether the top-left, top-right, bottom-left and
            bottom-right quadrant shows the explained class.

    Returns:
        The share per mosaic, and its mean.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 4, 4)
        >>> maps[0, :2, :2] = 1.0  # all the mass top-left
        >>> focus(maps, torch.tensor([[True, False, False, True]])).values
        tensor([1.], dtype=torch.float64)
    """
    if not isinstance(maps, Tensor) or maps.dim() != 3:
        raise CamkitValueError(f"maps: got {_shape(maps)}; allowed: (N, H, W) maps of 2x2 mosaics")
    if not isinstance(quadrants, Tensor) or tuple(quadrants.shape) != (len(maps), 4):
        raise CamkitValueError(
            f"quadrants: got {_shape(quadrants)}; allowed: ({len(maps)}, 4), one flag per "
            f"quadrant (top-left, top-right, bottom-left, bottom-right)"
        )
    check_finite_maps(maps)
    height, width = maps.shape[1:]
    half_h, half_w = height // 2, width // 2
    flags = quadrants.detach().bool().cpu()
    masks = torch.zeros(maps.shape, dtype=torch.bool)
    top, bottom = slice(None, half_h), slice(half_h, None)
    left, right = slice(None, half_w), slice(half_w, None)
    for q, (rows, columns) in enumerate(
        [(top, left), (top, right), (bottom, left), (bottom, right)]
    ):
        masks[:, rows, columns] = flags[:, q, None, None]
    positive = maps.detach().double().cpu().clamp_min(0).flatten(1)
    total = positive.sum(dim=1)
    inside = (positive * masks.flatten(1)).sum(dim=1)
    return summarize("focus", torch.where(total > 0, inside / total, torch.nan))


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def mosaics(
    images: Tensor, labels: Tensor, *, per_class: int = 1, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """2x2 mosaics for :func:`focus`: for each class, ``per_class`` mosaics of two of its
    images and two of other classes, in random quadrants.

    Args:
        images: ``(M, C, H, W)`` images.
        labels: ``(M,)`` their classes (at least two classes).
        per_class: Mosaics per class.
        seed: The seed of the draws (images and places).

    Returns:
        The mosaics ``(K, C, 2H, 2W)``, which quadrants show the mosaic's class
        ``(K, 4)`` (top-left, top-right, bottom-left, bottom-right), and the class
        ``(K,)``.

    Example:
        >>> import torch
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> tiles, quadrants, classes = mosaics(torch.rand(6, 1, 4, 4), labels)
        >>> tiles.shape, quadrants.sum(dim=1).tolist(), classes.tolist()
        (torch.Size([3, 1, 8, 8]), [2, 2, 2], [0, 1, 2])
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise CamkitValueError(f"images: got {_shape(images)}; allowed: (M, C, H, W)")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (len(images),):
        raise CamkitValueError(f"labels: got {_shape(labels)}; allowed: ({len(images)},)")
    classes = torch.unique(labels.cpu())
    if len(classes) < 2:
        raise CamkitValueError(f"labels: got one class, {classes.tolist()}; a mosaic needs two")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise CamkitValueError(f"per_class: got {per_class!r}; allowed: a positive int")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    tiles, flags, chosen = [], [], []
    for c in classes:
        own = torch.nonzero(labels == c).flatten()
        other = torch.nonzero(labels != c).flatten()
        for _ in range(per_class):
            mine = own[torch.randint(len(own), (2,), generator=generator)]
            theirs = other[torch.randint(len(other), (2,), generator=generator)]
            picks = torch.cat([mine, theirs])
            places = torch.randperm(4, generator=generator)
            placed = picks[places]  # quadrant q shows picks[places[q]]
            top = torch.cat([images[placed[0]], images[placed[1]]], dim=-1)
            bottom = torch.cat([images[placed[2]], images[placed[3]]], dim=-1)
            tiles.append(torch.cat([top, bottom], dim=-2))
            flags.append(places < 2)
            chosen.append(int(c))
    return torch.stack(tiles), torch.stack(flags), torch.tensor(chosen)

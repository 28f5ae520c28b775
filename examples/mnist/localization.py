"""How maps localize the digit: stroke masks, baseline maps, and camkit's localization metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from camkit.metrics import energy_pointing_game, pointing_game
from examples.mnist.model import CLASSES

STROKE_THRESHOLD = 0.5


def stroke_mask(images: Tensor, threshold: float = STROKE_THRESHOLD) -> Tensor:
    """Stroke pixels of [0, 1] images ``(N, 1, H, W)``: ink above ``threshold``."""
    return images[:, 0] > threshold


def uniform_random_maps(n: int, size: tuple[int, int], seed: int = 0) -> Tensor:
    """Baseline maps with every pixel drawn uniformly from [0, 1]."""
    return torch.rand(n, *size, generator=torch.Generator().manual_seed(seed))


def centre_gaussian_maps(n: int, size: tuple[int, int], sigma: float | None = None) -> Tensor:
    """Baseline maps: an isotropic Gaussian on the image centre (sigma = side / 6)."""
    h, w = size
    sigma = sigma or min(h, w) / 6
    ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    bump = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    return bump.expand(n, h, w)


@dataclass(frozen=True)
class Localization:
    """Per-sample localization of maps on stroke pixels.

    ``mass``: share of the map's mass on strokes, camkit's energy pointing game
    (NaN for an all-zero map); ``area``: share of the image the strokes cover;
    ``hit``: camkit's pointing game with no tolerance, 1.0 where the map's maximum
    lies on a stroke pixel, else 0.0 (the share of its maxima that do, where it has
    several; an all-zero map, which points nowhere, is a miss).
    """

    mass: Tensor
    area: Tensor
    hit: Tensor


def localize(maps: Tensor, strokes: Tensor) -> Localization:
    """Measure how maps ``(N, H, W)`` (non-negative) concentrate on ``strokes``."""
    pointing = pointing_game(maps, strokes, tolerance=0.0).values
    points = maps.detach().flatten(1).amax(1) > 0
    return Localization(
        mass=energy_pointing_game(maps, strokes).values,
        area=strokes.flatten(1).double().mean(1),
        hit=torch.where(points, pointing, 0.0),
    )


def summarize(result: Localization, labels: Tensor) -> dict[str, list[float]]:
    """Per-class and overall means (as percentages): mass, area, hit rate; last entry is 'all'."""
    out: dict[str, list[float]] = {"mass": [], "area": [], "hit": []}
    groups = [labels == c for c in range(CLASSES)] + [torch.ones_like(labels, dtype=torch.bool)]
    for group in groups:
        out["mass"].append(100 * float(result.mass[group].nanmean()))
        out["area"].append(100 * float(result.area[group].mean()))
        out["hit"].append(100 * float(result.hit[group].mean()))
    return out

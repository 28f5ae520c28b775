"""Measuring the network (accuracy, precision, recall) and its maps (stroke localization)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

CLASSES = 10
STROKE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Scores:
    """Classification scores: overall accuracy, per-class precision and recall, confusion."""

    accuracy: float
    precision: list[float]
    recall: list[float]
    confusion: Tensor  # rows: true class, columns: predicted class


def classification_scores(predicted: Tensor, labels: Tensor) -> Scores:
    """Accuracy, per-class precision and recall, and the confusion matrix."""
    confusion = torch.bincount(labels * CLASSES + predicted, minlength=CLASSES**2)
    confusion = confusion.view(CLASSES, CLASSES)
    hits = confusion.diag().double()
    precision = (hits / confusion.sum(0).double().clamp(min=1)).tolist()
    recall = (hits / confusion.sum(1).double().clamp(min=1)).tolist()
    return Scores(
        accuracy=float(hits.sum() / len(labels)),
        precision=precision,
        recall=recall,
        confusion=confusion,
    )


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

    ``mass``: share of the map's mass on strokes (NaN for an all-zero map);
    ``area``: share of the image the strokes cover; ``hit``: whether the map's
    maximum lies on a stroke pixel.
    """

    mass: Tensor
    area: Tensor
    hit: Tensor


def localize(maps: Tensor, strokes: Tensor) -> Localization:
    """Measure how maps ``(N, H, W)`` (non-negative) concentrate on ``strokes``."""
    flat, ink = maps.flatten(1).double(), strokes.flatten(1)
    total = flat.sum(1)
    mass = (flat * ink).sum(1) / total
    mass = torch.where(total > 0, mass, torch.full_like(mass, math.nan))
    peak = flat.argmax(1)
    hit = ink.gather(1, peak[:, None])[:, 0] & (total > 0)
    return Localization(mass=mass, area=ink.double().mean(1), hit=hit)


def summarize(result: Localization, labels: Tensor) -> dict[str, list[float]]:
    """Per-class and overall means (as percentages): mass, area, hit rate; last entry is 'all'."""
    out: dict[str, list[float]] = {"mass": [], "area": [], "hit": []}
    groups = [labels == c for c in range(CLASSES)] + [torch.ones_like(labels, dtype=torch.bool)]
    for group in groups:
        out["mass"].append(100 * float(result.mass[group].nanmean()))
        out["area"].append(100 * float(result.area[group].mean()))
        out["hit"].append(100 * float(result.hit[group].double().mean()))
    return out

"""MNIST digits placed in small volumes and moving through short clips, with where they are.

A volume is ``(1, 16, 32, 32)`` (channels, depth, height, width): noise, and a digit
(shrunk to 16 x 16) as a slab 4 voxels thick at a random depth and place. A clip is
``(1, 8, 32, 32)`` (channels, frames, height, width): noise, and the digit moving in a
straight line from one random place to another. The label is the digit, so a correct
map of it lands on its voxels or, in every frame, on its pixels; the masks say where
those are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SIDE = 32
"""The volume's and the frame's height and width."""

DEPTH = 16
"""The volume's depth."""

DIGIT = 16
"""The digit's side once shrunk."""

THICKNESS = 4
"""The slab's depth, in voxels."""

FRAMES = 8
"""A clip's frames."""

NOISE = 0.15
"""The standard deviation of the background's Gaussian noise."""

INK = 0.3
"""A shrunk digit's pixels above this are its ink (the masks)."""


@dataclass(frozen=True)
class Placed:
    """Inputs with the digit placed in them: ``inputs`` ``(N, 1, D or T, H, W)``, ``labels``
    ``(N,)``, and ``masks`` (same spatial shape, boolean) where the digit's ink is."""

    inputs: Tensor
    labels: Tensor
    masks: Tensor


def shrink(images: Tensor) -> Tensor:
    """``(N, 1, 28, 28)`` digits in [0, 1] shrunk to ``(N, 16, 16)`` by area averaging."""
    return F.interpolate(images, size=(DIGIT, DIGIT), mode="area")[:, 0]


def volumes(images: Tensor, labels: Tensor, seed: int) -> Placed:
    """One volume per digit: the digit as a slab at a random depth and place, in noise."""
    generator = torch.Generator().manual_seed(seed)
    digits = shrink(images)
    n = len(digits)
    inputs = torch.randn(n, 1, DEPTH, SIDE, SIDE, generator=generator) * NOISE
    masks = torch.zeros(n, DEPTH, SIDE, SIDE, dtype=torch.bool)
    depth = torch.randint(0, DEPTH - THICKNESS + 1, (n,), generator=generator)
    corner = torch.randint(0, SIDE - DIGIT + 1, (n, 2), generator=generator)
    for i in range(n):
        z, y, x = int(depth[i]), int(corner[i, 0]), int(corner[i, 1])
        region = (slice(z, z + THICKNESS), slice(y, y + DIGIT), slice(x, x + DIGIT))
        inputs[i, 0][region] += digits[i]
        masks[i][region] = digits[i] > INK
    return Placed(inputs, labels, masks)


def clips(images: Tensor, labels: Tensor, seed: int) -> Placed:
    """One clip per digit: the digit moving in a straight line across the frames, in noise."""
    generator = torch.Generator().manual_seed(seed)
    digits = shrink(images)
    n = len(digits)
    inputs = torch.randn(n, 1, FRAMES, SIDE, SIDE, generator=generator) * NOISE
    masks = torch.zeros(n, FRAMES, SIDE, SIDE, dtype=torch.bool)
    start = torch.randint(0, SIDE - DIGIT + 1, (n, 2), generator=generator).float()
    end = torch.randint(0, SIDE - DIGIT + 1, (n, 2), generator=generator).float()
    for i in range(n):
        for t in range(FRAMES):
            y, x = (start[i] + (end[i] - start[i]) * t / (FRAMES - 1)).round().int().tolist()
            region = (slice(y, y + DIGIT), slice(x, x + DIGIT))
            inputs[i, 0, t][region] += digits[i]
            masks[i, t][region] = digits[i] > INK
    return Placed(inputs, labels, masks)

"""Confounded MNIST: a bright square on the border whose position gives the label away.

Each image gets a 3x3 square of full brightness (1.0) in one of ten places on
its border, chosen where MNIST's digits (centred by their centre of mass)
rarely reach: near the corners and halfway down the left edge. Under each
place, fewer than 1 % of MNIST's images have any stroke pixel (the square
covers it: each pixel becomes the larger of the two). In the training set
the place is the label's (digit ``d`` at :data:`PLACES` ``[d]``), so the square
alone predicts the label perfectly; in the *randomized* test set each image
gets one of the ten places at random, independent of its label, so a network
that reads the square is right only by chance (10 %). The clean test set has no
square.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from examples.mnist.data import Split

SQUARE = 3
"""The square's side in pixels."""

PLACES: tuple[tuple[int, int], ...] = (
    (0, 0), (0, 3), (3, 0), (0, 6), (0, 22), (0, 25), (14, 0), (25, 0), (25, 22), (25, 25),
)  # fmt: skip
"""The top-left pixel of the square for digits 0 to 9 (rows and columns 0 to 27)."""


@dataclass(frozen=True)
class Confounded:
    """Images with the square, its place per image, and its pixels' mask ``(N, 1, 28, 28)``."""

    split: Split
    places: Tensor
    masks: Tensor


def confound(split: Split, *, randomize: bool, seed: int = 0) -> Confounded:
    """Add the square: at the label's place, or (``randomize``) at a random place per image."""
    if randomize:
        generator = torch.Generator().manual_seed(seed)
        places = torch.randint(0, len(PLACES), (len(split.labels),), generator=generator)
    else:
        places = split.labels.clone()
    masks = square_masks(places)
    images = torch.maximum(split.images, masks)
    return Confounded(Split(images, split.labels), places, masks)


def square_masks(places: Tensor) -> Tensor:
    """The square's pixels ``(N, 1, 28, 28)`` (1 inside, 0 elsewhere) for place indices."""
    masks = torch.zeros(len(places), 1, 28, 28)
    for index, (row, col) in enumerate(PLACES):
        masks[places == index, :, row : row + SQUARE, col : col + SQUARE] = 1.0
    return masks

"""Two MNIST digits side by side on a canvas, and the answer a model should give about them.

A canvas is ``(1, 32, 64)``: noise, one digit (28 x 28) in the left half and another,
always a different digit, in the right half, each at a small random offset. The answer
names each digit with its side: a canvas with a 7 on the left and a 2 on the right is
answered "seven left two right". So a correct map of each number word lands on the
digit it names, and not on the other one; the masks say where each digit's ink is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

HEIGHT, WIDTH = 32, 64
"""The canvas."""

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "left", "right", "<bos>", "<image>", "<ask>")  # fmt: skip
"""The vocabulary: the ten number words, the two sides, and the prompt's tokens."""

LEFT, RIGHT, BOS, IMAGE, ASK = 10, 11, 12, 13, 14
"""The ids of the side words and of the prompt's tokens."""

GRID = (8, 16)
"""The image tokens' grid: the canvas in 4 x 4 patches."""

PROMPT = 2 + GRID[0] * GRID[1]
"""The prompt's length: ``<bos>``, the image's 128 tokens, ``<ask>``."""

ANSWER = 4
"""The answer's length: a number word and a side, twice."""

NOISE = 0.1
"""The standard deviation of the canvas's Gaussian noise."""

INK = 0.3
"""A digit's pixels above this are its ink (the masks)."""

SLACK = 4
"""Each digit's random offset, in pixels, down and to the right within its half."""


@dataclass(frozen=True)
class Canvases:
    """Canvases ``(N, 1, 32, 64)`` with their ``answers`` ``(N, 4)`` (ids), the
    ``digits`` ``(N, 2)`` on the left and on the right, and ``masks`` ``(N, 2, 32, 64)``
    (boolean) of the left and the right digit's ink."""

    images: Tensor
    answers: Tensor
    digits: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return len(self.images)


def canvases(images: Tensor, labels: Tensor, seed: int) -> Canvases:
    """One canvas per digit of ``images`` ``(N, 1, 28, 28)``: it on the left, the next digit
    of another class (in a seeded shuffle) on the right, in noise."""
    generator = torch.Generator().manual_seed(seed)
    n = len(images)
    order = torch.randperm(n, generator=generator)
    partner = torch.empty(n, dtype=torch.long)
    for i in range(n):
        j = int(order[i])
        while int(labels[j]) == int(labels[i]):
            j = int(order[(int((order == j).nonzero()) + 1) % n])
        partner[i] = j
    canvas = torch.randn(n, 1, HEIGHT, WIDTH, generator=generator) * NOISE
    masks = torch.zeros(n, 2, HEIGHT, WIDTH, dtype=torch.bool)
    offsets = torch.randint(0, SLACK + 1, (n, 2, 2), generator=generator)
    for i in range(n):
        for side, index in enumerate((i, int(partner[i]))):
            y, x = int(offsets[i, side, 0]), int(offsets[i, side, 1]) + side * WIDTH // 2
            digit = images[index, 0]
            canvas[i, 0, y : y + 28, x : x + 28] += digit
            masks[i, side, y : y + 28, x : x + 28] = digit > INK
    digits = torch.stack([labels, labels[partner]], 1)
    return Canvases(canvas, answers_for(digits), digits, masks)


def answers_for(digits: Tensor) -> Tensor:
    """The answers ``(N, 4)`` for the left and right ``digits`` ``(N, 2)``: the left digit,
    ``left``, the right digit, ``right``."""
    sides = torch.tensor([LEFT, RIGHT]).expand(len(digits), 2)
    return torch.stack([digits[:, 0], sides[:, 0], digits[:, 1], sides[:, 1]], 1)


def prompts(n: int) -> Tensor:
    """The prompts ``(n, 130)``: ``<bos>``, 128 image tokens, ``<ask>``."""
    row = torch.tensor([BOS, *[IMAGE] * (PROMPT - 2), ASK])
    return row.expand(n, -1).clone()


def said(answers: Tensor) -> list[list[str]]:
    """The words of answers ``(N, k)``."""
    return [[WORDS[int(t)] for t in row] for row in answers]

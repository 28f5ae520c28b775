"""The confounded example's figures: the data's construction, and maps before and after."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from camkit import GradCAM
from camkit.plot import grid
from examples.confounded.data import Confounded
from examples.mnist.train import Checkpoint, predict

SHOWN = 8
"""Images per row."""


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def construction(train: Confounded, test: Confounded, path: Path) -> Path:
    """One training image per digit (the square at the digit's place), and randomized test
    images (the square anywhere)."""
    labels = train.split.labels
    first = [int((labels == d).nonzero()[0]) for d in range(10) if bool((labels == d).any())]
    images = [train.split.images[i] for i in first] + list(test.split.images[:10])
    titles = [f"train: {int(labels[i])}" for i in first]
    titles += [
        f"test: {int(y)}, square {int(p)}"
        for y, p in zip(test.split.labels[:10], test.places[:10], strict=True)
    ]
    fig = grid(
        images,
        [None] * len(images),
        titles=titles,
        ncols=10,
        size=1.3,
        suptitle="Confounded MNIST: the square's place is the label in training, random in test",
    )
    return _save(fig, path)


def maps_before_after(models: dict[str, Checkpoint], test: Confounded, path: Path) -> Path:
    """Grad-CAM of each model's predicted class on randomized test images whose square is
    not at their label's place: one row per model."""
    misleading = (test.places != test.split.labels).nonzero()[:, 0][:SHOWN]
    images = test.split.images[misleading]
    panels, cams, titles = [], [], []
    for name, checkpoint in models.items():
        x = checkpoint.prepare(images)
        predicted = predict(checkpoint, images).argmax(1)
        maps = GradCAM(checkpoint.model, "features.relu")(x, predicted)
        for image, cam, label, guess in zip(
            images, maps, test.split.labels[misleading], predicted, strict=True
        ):
            panels.append(image)
            cams.append(cam)
            mark = "" if int(guess) == int(label) else " ✗"
            titles.append(f"{name.split()[0]}: {int(guess)}{mark}")
    fig = grid(
        torch.stack(panels),
        torch.stack(cams),
        titles=titles,
        ncols=len(images),
        size=1.4,
        suptitle="Grad-CAM (features.relu) of the predicted class; rows: " + ", ".join(models),
    )
    return _save(fig, path)

"""One figure per camkit method on the trained MNIST net, for the docs' method pages.

python -m examples.mnist.gallery --out docs/methods
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from camkit import DeepFeatureFactorization
from camkit.plot import concepts, grid
from examples.mnist.comparison import (
    CONCEPTS,
    LAYER,
    concept_head,
    explainers,
    raw_pixel_model,
)
from examples.mnist.data import DEFAULT_ROOT, load_split
from examples.mnist.train import DEFAULT_WEIGHTS, load

SAMPLES = [3, 2, 1, 18, 4, 8, 11, 0, 61, 7]  # one test image of each digit 0-9


def slug(name: str) -> str:
    """A file name for a method name."""
    return name.lower().replace("+", "p").replace(" ", "-")


def concepts_figure(model: nn.Module, images: Tensor, more: Tensor, path: Path) -> Path:
    """The concepts Deep Feature Factorization finds in ``images`` and ``more`` (factorized
    together, for stabler concepts), drawn on ``images``, each named by the digit it votes for."""
    factorize = DeepFeatureFactorization(
        model, LAYER, concepts=CONCEPTS, head=concept_head(model), seed=0
    )
    found = factorize(torch.cat([images, more]))
    votes = cast(Tensor, found.scores).softmax(1)
    labels = [
        f"concept {k}: digit {int(p.argmax())} ({100 * float(p.max()):.0f} %)"
        for k, p in enumerate(votes)
    ]
    fig, axes = plt.subplots(1, len(images), figsize=(1.3 * len(images) + 3.0, 1.7))
    for i, ax in enumerate(axes):
        last = i == len(images) - 1
        concepts(images[i], found.maps[i], ax=ax, labels=labels if last else None)
    fig.suptitle(
        f"Deep Feature Factorization of {LAYER.split('.', 1)[1]}: {CONCEPTS} concepts in "
        f"{len(found.maps)} test images (error {100 * found.error:.0f} %)",
        fontsize=10,
    )
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/methods"))
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint, _ = load(args.weights)
    test = load_split("test", args.data)
    images = test.images[SAMPLES]
    model = raw_pixel_model(checkpoint)
    with torch.no_grad():
        classes = model(images).argmax(1)
    for name, explain in explainers(model).items():
        if name == "Deep Feature Factorization":  # its own figure: every concept at once
            path = concepts_figure(model, images, test.images[:490], args.out / f"{slug(name)}.png")
            print(path)
            continue
        maps = explain(images, classes)
        titles = [f"pred {int(c)}" for c in classes]
        fig = grid(
            images,
            maps,
            titles=titles,
            ncols=10,
            size=1.3,
            suptitle=f"{name} on the MNIST example, predicted class",
        )
        path = args.out / f"{slug(name)}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    Explainer,
    concept_head,
    explainers,
    raw_pixel_model,
    vit_explainers,
)
from examples.mnist.data import DEFAULT_ROOT, load_split
from examples.mnist.train import DEFAULT_WEIGHTS, load
from examples.mnist.vit import DEFAULT_VIT_WEIGHTS, MnistViT

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
    found = factorize.factorize(torch.cat([images, more]))
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


def figure(
    name: str, explain: Explainer, images: Tensor, classes: Tensor, out: Path, model: str
) -> Path:
    """``name``'s maps of ``classes`` on ``images``, saved as ``out/<slug>.png``."""
    maps = explain(images, classes)
    fig = grid(
        images,
        maps,
        titles=[f"pred {int(c)}" for c in classes],
        ncols=10,
        size=1.3,
        suptitle=f"{name} on {model}, predicted class",
    )
    path = out / f"{slug(name)}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/methods"))
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--vit-weights", type=Path, default=DEFAULT_VIT_WEIGHTS)
    parser.add_argument(
        "--only", nargs="+", metavar="METHOD", help="draw these methods only (default: all)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint, _ = load(args.weights)
    test = load_split("test", args.data)
    images = test.images[SAMPLES]
    model = raw_pixel_model(checkpoint)
    with torch.no_grad():
        classes = model(images).argmax(1)
    wanted = set(args.only) if args.only else None
    for name, explain in explainers(model).items():
        if wanted is not None and name not in wanted:
            continue
        if name == "Deep Feature Factorization":  # its own figure: every concept at once
            path = concepts_figure(model, images, test.images[:490], args.out / f"{slug(name)}.png")
            print(path)
            continue
        print(figure(name, explain, images, classes, args.out, "the MNIST example"))
    if wanted is not None and "LeGrad" not in wanted:
        return 0
    vit = raw_pixel_model(load(args.vit_weights, MnistViT)[0])
    with torch.no_grad():
        classes = vit(images).argmax(1)
    legrad = vit_explainers(vit)["LeGrad"]
    print(figure("LeGrad", legrad, images, classes, args.out, "the MNIST example's ViT"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The worked example's figures, drawn with camkit.plot and saved as PNG files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from camkit import GradCAM
from camkit.metrics import Comparison, RandomizationResult
from camkit.plot import compare, grid
from examples.mnist.classification import Scores
from examples.mnist.model import CLASSES
from examples.mnist.train import Checkpoint, History, predict

LAYER = "features.relu"
FIRST_LAYER = "features.relu1"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _cam(checkpoint: Checkpoint, layer: str = LAYER) -> Callable[..., Tensor]:
    cam = GradCAM(checkpoint.model, layer)
    return lambda images, target=None, **options: cam(checkpoint.prepare(images), target, **options)


def training_curves(history: History, path: Path) -> Path:
    """Loss and accuracy per epoch."""
    epochs = range(1, len(history.loss) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, history.loss, marker="o")
    left.set(xlabel="epoch", ylabel="training loss", yscale="log", title="Loss")
    right.plot(epochs, [100 * a for a in history.train_accuracy], marker="o", label="train")
    if history.test_accuracy:
        right.plot(epochs, [100 * a for a in history.test_accuracy], marker="o", label="test")
    right.axhline(99.0, color="grey", linestyle="--", linewidth=1, label="99 % goal")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(95, 100))
    right.legend()
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(scores: Scores, path: Path) -> Path:
    """The test set's confusion matrix, counts in each cell."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    counts = scores.confusion.numpy()
    ax.imshow(counts, cmap="Blues", norm=matplotlib.colors.LogNorm(vmin=1, vmax=counts.max()))
    for i in range(CLASSES):
        for j in range(CLASSES):
            if counts[i, j]:
                colour = "white" if i == j else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set(xticks=range(CLASSES), yticks=range(CLASSES), xlabel="predicted", ylabel="true")
    ax.set_title(f"Confusion matrix (accuracy {100 * scores.accuracy:.2f} %)")
    return _save(fig, path)


def class_grid(
    checkpoint: Checkpoint, images: Tensor, labels: Tensor, digit: int, path: Path, count: int = 12
) -> Path:
    """Test images of one digit with the Grad-CAM map of the predicted class."""
    chosen = images[labels == digit][:count]
    logits = predict(checkpoint, chosen)
    probs, predicted = logits.softmax(1).max(1)
    maps = _cam(checkpoint)(chosen)
    titles = [
        f"pred {p} ({100 * q:.0f}%)"
        for p, q in zip(predicted.tolist(), probs.tolist(), strict=False)
    ]
    fig = grid(
        chosen,
        maps,
        titles=titles,
        ncols=6,
        suptitle=f"Digit {digit}: Grad-CAM at {LAYER}, predicted class",
    )
    return _save(fig, path)


def class_discrimination(checkpoint: Checkpoint, image: Tensor, path: Path) -> Path:
    """One image and its maps for all ten classes, from one call with ten targets."""
    maps = _cam(checkpoint)(image[None], torch.arange(CLASSES)[None])[0]  # (10, H, W)
    probs = predict(checkpoint, image[None])[0].softmax(0)
    fig = compare(
        image,
        maps,
        scores=probs,
        suptitle="One image, Grad-CAM for every class (softmax probability in title)",
    )
    return _save(fig, path)


def _triptychs(
    images: Tensor,
    first: Tensor,
    second: Tensor,
    titles: list[tuple[str, str, str]],
    suptitle: str,
    path: Path,
) -> Path:
    """Each image next to two of its maps, two images to a row."""
    panels = [image for image in images for _ in range(3)]
    maps = [m for pair in zip(first, second, strict=True) for m in (None, *pair)]
    fig = grid(panels, maps, titles=[t for row in titles for t in row], ncols=6, suptitle=suptitle)
    return _save(fig, path)


def mistakes(
    checkpoint: Checkpoint,
    images: Tensor,
    labels: Tensor,
    predicted: Tensor,
    path: Path,
    count: int = 8,
) -> Path:
    """Misclassified images with the maps of the predicted and of the true class."""
    wrong = (predicted != labels).nonzero()[:count, 0]
    cam = _cam(checkpoint)
    titles = [
        (
            f"true {labels[i]}, pred {predicted[i]}",
            f"map: {predicted[i]} (pred)",
            f"map: {labels[i]} (true)",
        )
        for i in wrong.tolist()
    ]
    return _triptychs(
        images[wrong],
        cam(images[wrong], predicted[wrong]),
        cam(images[wrong], labels[wrong]),
        titles,
        "Mistakes: evidence for the predicted and for the true class",
        path,
    )


def counterfactual(
    checkpoint: Checkpoint, images: Tensor, predicted: Tensor, path: Path, count: int = 6
) -> Path:
    """Grad-CAM next to the counterfactual map (negated gradients, Selvaraju et al. Sec. 3.3)."""
    chosen, classes = images[:count], predicted[:count]
    cam = _cam(checkpoint)
    titles = [(f"pred {c}", "for (Grad-CAM)", "against (counterfactual)") for c in classes]
    return _triptychs(
        chosen,
        cam(chosen, classes),
        cam(chosen, classes, counterfactual=True),
        titles,
        "What speaks for and against the predicted class",
        path,
    )


def layers(checkpoint: Checkpoint, images: Tensor, path: Path, count: int = 6) -> Path:
    """Maps at the first conv ReLU (24x24) and the last (8x8) for the same images."""
    chosen = images[:count]
    titles = [("input", f"{FIRST_LAYER} (24x24)", f"{LAYER} (8x8)")] * len(chosen)
    return _triptychs(
        chosen,
        _cam(checkpoint, FIRST_LAYER)(chosen),
        _cam(checkpoint, LAYER)(chosen),
        titles,
        "Resolution against semantics: the two conv layers",
        path,
    )


def sanity_curves(results: dict[str, RandomizationResult], path: Path) -> Path:
    """Similarity to the original maps as layers are randomized from the logits down."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
    for name, result in results.items():
        steps = ["none", *[layer.split(".", 1)[1] for layer in result.layers]]
        for ax, values, label in (
            (axes[0], result.spearman_abs, "Spearman rank correlation (|maps|)"),
            (axes[1], result.ssim, "SSIM"),
        ):
            ax.plot(steps, [1.0, *values.nanmean(dim=1).tolist()], marker="o", label=name)
            ax.set(title=label, xlabel="randomized down to", ylim=(-0.1, 1.05))
    axes[0].set_ylabel("similarity to the trained model's maps")
    axes[0].legend()
    fig.suptitle("Cascading randomization (Adebayo et al., 2018)")
    fig.tight_layout()
    return _save(fig, path)


def sanity_maps(
    results: dict[str, RandomizationResult], images: Tensor, path: Path, count: int = 2
) -> Path:
    """Maps of a few images as the layers are randomized, one row per method and image."""
    panels, maps, titles = [], [], []
    for name, result in results.items():
        steps = ["trained", *[f"random to {layer.split('.', 1)[1]}" for layer in result.layers]]
        for i in range(count):
            panels += [images[i]] * len(steps)
            for s, step in enumerate(steps):
                m = result.maps[s, i]
                lo, hi = m.min(), m.max()
                maps.append((m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m))
                titles.append(f"{name}: {step}" if s == 0 else step)
    fig = grid(
        panels,
        maps,
        titles=titles,
        ncols=len(steps),
        size=2.0,
        suptitle="Maps as the network's layers are randomized, from the logits down",
    )
    return _save(fig, path)


def transformer_maps(
    explained: dict[str, Callable[[Tensor, Tensor], Tensor]],
    images: Tensor,
    classes: Tensor,
    path: Path,
) -> Path:
    """One row per explainer (such as LeGrad and Grad-CAM on the ViT, Grad-CAM on the
    ConvNet), one column per image, each map of the class ``classes`` gives."""
    panels, maps, titles = [], [], []
    for name, explain in explained.items():
        panels += list(images)
        maps += list(explain(images, classes))
        titles += [f"{name}, {int(c)}" if i == 0 else str(int(c)) for i, c in enumerate(classes)]
    fig = grid(
        panels,
        maps,
        titles=titles,
        ncols=len(images),
        size=1.5,
        suptitle="A vision transformer's maps beside the ConvNet's (title: the explained class)",
    )
    return _save(fig, path)


def comparison(result: Comparison, path: Path) -> Path:
    """:meth:`camkit.metrics.Comparison.plot`: every method's mean and interval per metric."""
    plt.close(result.plot(path))
    return path

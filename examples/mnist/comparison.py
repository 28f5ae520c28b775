"""Scoring every camkit method with every camkit metric on MNIST, and the sanity checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor, nn

from camkit import (
    FEM,
    ISCAM,
    KPCACAM,
    SESS,
    SSCAM,
    AblationCAM,
    BaseCAM,
    DeepFeatureFactorization,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    LeGrad,
    RandomCAM,
    RefineCAM,
    ScoreCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from camkit.augment import Augmentation, photometric
from camkit.metrics import (
    Comparison,
    MetricResult,
    RandomizationResult,
    average_drop,
    compare,
    deletion,
    energy_pointing_game,
    increase_in_confidence,
    insertion,
    pointing_game,
    randomization_test,
    road,
)
from camkit.metrics.comparison import BASELINE
from examples.mnist.localization import centre_gaussian_maps, stroke_mask, uniform_random_maps
from examples.mnist.train import Checkpoint

LAYER = "1.features.relu"  # inside the raw-pixel wrapper below
FIRST_LAYER = "1.features.relu1"
Explainer = Callable[[Tensor, Tensor], Tensor]


class Standardize(nn.Module):
    """The input scaling as a module, so metrics can work on raw [0, 1] pixels."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def raw_pixel_model(checkpoint: Checkpoint) -> nn.Sequential:
    """The trained network behind its standardization: takes [0, 1] images."""
    return nn.Sequential(Standardize(checkpoint.mean, checkpoint.std), checkpoint.model).eval()


def _unit(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return torch.where(hi > lo, (flat - lo) / torch.where(hi > lo, hi - lo, 1), 0).view_as(maps)


def _magnitude(method: Callable[[Tensor, Tensor], Tensor]) -> Explainer:
    """Input-gradient maps (N, 1, H, W) as [0, 1] magnitude maps (N, H, W)."""
    return lambda x, classes: _unit(method(x, classes).abs().sum(dim=1))


def _of_log_probability(cam: BaseCAM) -> Explainer:
    """The maps of each class's log-probability, the score the Shapley-CAM paper pairs it
    with (on this net's piecewise-linear head, the logit would give Grad-CAM's maps)."""

    def explain(x: Tensor, classes: Tensor) -> Tensor:
        return cam(x, lambda out: out.log_softmax(1).gather(1, classes[:, None])[:, 0])

    return explain


def _shift(pixels: int, axis: int, name: str) -> Augmentation:
    return Augmentation(lambda t: t.roll(pixels, axis), lambda m, size: m.roll(-pixels, axis), name)


AUGMENTATIONS = [
    _shift(1, -1, "one pixel right"),
    _shift(-1, -1, "one pixel left"),
    _shift(1, -2, "one pixel down"),
    _shift(-1, -2, "one pixel up"),
    photometric(lambda t: 0.8 * t, "80 % brightness"),
]
"""Test-time augmentations that keep a digit a digit (no flips or rotations) and the input
28 x 28 (the net's classifier needs it): shifts (the border is blank, so rolling is
shifting) and a dimmer copy."""


def _augmented(cam: BaseCAM) -> Explainer:
    return lambda x, classes: cam(x, classes, augment=AUGMENTATIONS)


CONCEPTS = 5


def concept_head(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """A concept's class scores: its direction spread over the 8 x 8 layer, then the net's
    own pooling and classifier (``model`` is :func:`raw_pixel_model`'s)."""
    net = model[1]

    def head(directions: Tensor) -> Tensor:
        spread = directions[:, :, None, None].expand(-1, -1, 8, 8)
        scores: Tensor = net.classifier(net.features.pool2(spread))
        return scores

    return head


def explainers(model: nn.Module) -> dict[str, Explainer]:
    """Every camkit method applicable to the MNIST net, plus two map baselines."""
    cams: dict[str, Explainer] = {
        "Grad-CAM": GradCAM(model, LAYER),
        "Grad-CAM++": GradCAMPlusPlus(model, LAYER),
        "XGrad-CAM": XGradCAM(model, LAYER),
        "HiResCAM": HiResCAM(model, LAYER),
        "LayerCAM": LayerCAM(model, LAYER),
        "Eigen-CAM": EigenCAM(model, LAYER),
        "Element-wise Grad-CAM": GradCAMElementWise(model, LAYER),
        "Eigen-Grad-CAM": EigenGradCAM(model, LAYER),
        "Shapley-CAM": _of_log_probability(ShapleyCAM(model, LAYER)),
        "Smooth Grad-CAM++": SmoothGradCAMPlusPlus(model, LAYER, seed=0),
        "Finer-CAM": FinerCAM(model, LAYER),
        "FEM": FEM(model, LAYER),
        "Score-CAM": ScoreCAM(model, LAYER, batch_size=512),
        "Faster Score-CAM": ScoreCAM(model, LAYER, batch_size=512, top_channels=4),
        "SS-CAM": SSCAM(model, LAYER, batch_size=512, seed=0),
        "IS-CAM": ISCAM(model, LAYER, batch_size=512),
        "Ablation-CAM": AblationCAM(model, LAYER, batch_size=512),
        "Seg-Eigen-CAM": SegEigenCAM(model, LAYER),
        "RefineCAM": RefineCAM(model, [FIRST_LAYER, LAYER]),
        "KPCA-CAM": KPCACAM(model, LAYER),
        "FullGrad": FullGrad(model),
        "SESS": SESS(GradCAM(model, LAYER), num_scales=4, batch_size=256),
        "Grad-CAM TTA": _augmented(GradCAM(model, LAYER)),
        "Deep Feature Factorization": DeepFeatureFactorization(
            model, LAYER, concepts=CONCEPTS, head=concept_head(model)
        ),
        "Guided Backprop": _magnitude(GuidedBackprop(model)),
        "Guided Grad-CAM": _magnitude(GuidedGradCAM(model, LAYER)),
        "Random-CAM": RandomCAM(model, LAYER, seed=0),
    }
    cams["uniform random"] = lambda x, c: uniform_random_maps(len(x), (28, 28), seed=1)
    cams["centre Gaussian"] = lambda x, c: centre_gaussian_maps(len(x), (28, 28)).clone()
    return cams


MAIN_METHODS = (
    *("Grad-CAM", "Grad-CAM++", "XGrad-CAM", "HiResCAM", "LayerCAM", "Eigen-CAM"),
    *("Score-CAM", "Ablation-CAM", "Random-CAM", "uniform random", "centre Gaussian"),
)
"""What the example scores without ``--full``: the methods most used, with the baselines."""


def main_explainers(model: nn.Module) -> dict[str, Explainer]:
    """The explainers of :data:`MAIN_METHODS`, as :func:`explainers` builds them."""
    every = explainers(model)
    return {name: every[name] for name in MAIN_METHODS}


def vit_explainers(model: nn.Module) -> dict[str, Explainer]:
    """LeGrad on :func:`raw_pixel_model`'s wrapped :class:`~examples.mnist.vit.MnistViT`,
    with Grad-CAM on the same network and the same baselines, to read its row against.

    LeGrad uses the last two blocks, as the paper's code does by default, each scored
    through the model's own head on its tokens (the paper's per-layer scores); Grad-CAM
    explains the last block's ``norm1`` tokens, the layer pytorch-grad-cam's ViT recipe uses.
    """
    vit = model[1]
    blocks = [f"1.blocks.{i}" for i in range(len(vit.blocks))][-2:]
    last = f"{blocks[-1]}.norm1"
    cams: dict[str, Explainer] = {
        "LeGrad": LeGrad(
            model, [f"{b}.attn.probs" for b in blocks], blocks=blocks, head=vit.classify
        ),
        "Grad-CAM": GradCAM(model, last, layout="tokens", prefix_tokens=1),
        "Random-CAM": RandomCAM(model, last, layout="tokens", prefix_tokens=1, seed=0),
    }
    cams["uniform random"] = lambda x, c: uniform_random_maps(len(x), (28, 28), seed=1)
    cams["centre Gaussian"] = lambda x, c: centre_gaussian_maps(len(x), (28, 28)).clone()
    return cams


METRICS = {
    "Avg Drop % ↓": average_drop,
    "Increase % ↑": increase_in_confidence,
    "Deletion AUC ↓": partial(deletion, step=16),
    "Insertion AUC ↑": partial(insertion, step=16),
    "ROAD MoRF ↓": partial(road, percentages=[20, 40, 60, 80]),
    "ROAD LeRF ↑": partial(road, percentages=[20, 40, 60, 80], order="lerf"),
}


RANDOM = "uniform random"
"""The table's name for :func:`camkit.metrics.compare`'s baseline of uniformly random maps."""


@dataclass(frozen=True)
class Table:
    """Metric means per explainer, how long each explainer's maps took, and the comparison
    (intervals, ranks) they come from."""

    rows: dict[str, dict[str, float]]
    seconds: dict[str, float]
    comparison: Comparison | None = None


def _pointing(model: nn.Module, x: Tensor, maps: Tensor, classes: Tensor) -> MetricResult:
    """The pointing game against the digit's strokes (within 1 pixel), in %."""
    result = pointing_game(maps, stroke_mask(x), tolerance=1)
    return replace(result, values=100 * result.values, summary=100 * float(result.summary))


def _energy(model: nn.Module, x: Tensor, maps: Tensor, classes: Tensor) -> MetricResult:
    """The share of the map's mass on the digit's strokes, in %."""
    result = energy_pointing_game(maps, stroke_mask(x))
    return replace(result, values=100 * result.values, summary=100 * float(result.summary))


def score_all(
    checkpoint: Checkpoint,
    images: Tensor,
    progress: bool = True,
    explainers_of: Callable[[nn.Module], dict[str, Explainer]] = explainers,
) -> Table:
    """Every explainer of ``explainers_of`` (the ConvNet's by default) scored by every
    metric on ``images`` (raw [0, 1] pixels), by :func:`camkit.metrics.compare` (its
    random-map baseline is the table's uniform-random row)."""
    model = raw_pixel_model(checkpoint)
    cams = {name: explain for name, explain in explainers_of(model).items() if name != RANDOM}
    seconds: dict[str, float] = {RANDOM: 0.0}

    def timed(name: str, explain: Explainer) -> Explainer:
        def run(x: Tensor, classes: Tensor) -> Tensor:
            started = time.perf_counter()
            maps = explain(x, classes)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            return maps

        return run

    metrics = {**METRICS, "Pointing game % ↑": _pointing, "Energy on strokes % ↑": _energy}
    better = {"Pointing game % ↑": "higher", "Energy on strokes % ↑": "higher"}
    batches = [images[i : i + 500] for i in range(0, len(images), 500)]
    result = compare(
        model, batches, {name: timed(name, explain) for name, explain in cams.items()}, metrics,
        better=better, progress=progress, seed=1,
    )  # fmt: skip
    rows = {
        (RANDOM if name == BASELINE else name): {m: result.cells[name, m].mean for m in metrics}
        for name in result.candidates
    }
    return Table(rows, seconds, result)


def sanity_checks(checkpoint: Checkpoint, images: Tensor) -> dict[str, RandomizationResult]:
    """Cascading randomization for Grad-CAM and Guided Backprop (Adebayo et al., 2018)."""
    model = raw_pixel_model(checkpoint)
    methods: dict[str, Callable[[nn.Module], Explainer]] = {
        "Grad-CAM": lambda m: GradCAM(m, LAYER),
        "Guided Backprop": lambda m: _magnitude(GuidedBackprop(m)),
    }
    return {name: randomization_test(model, build, images) for name, build in methods.items()}


def table_markdown(table: Table) -> str:
    """The scores as a Markdown table, one row per explainer, each mean followed by the
    method's rank on that metric (shared by methods that cannot be told apart)."""
    metrics = list(next(iter(table.rows.values())))
    lines = [
        "| method | " + " | ".join(metrics) + " | maps (s) |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " | ---: |",
    ]
    comparison = table.comparison
    for name, row in table.rows.items():
        cells = []
        for m in metrics:
            text = f"{row[m]:.3f}" if "AUC" in m or "ROAD" in m else f"{row[m]:.1f}"
            if comparison is not None:
                key = BASELINE if name == RANDOM else name
                text += f" ({comparison.cells[key, m].rank})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {table.seconds[name]:.2f} |")
    if comparison is not None:  # say where undefined values left images out, for every method
        total = len(comparison.cells[comparison.candidates[0], metrics[0]].values)
        fewer = [f"{m}: {comparison.compared[m]:,} of {total:,}" for m in metrics
                 if comparison.compared.get(m, total) < total]  # fmt: skip
        if fewer:
            lines += ["", "Scored on the images where every method's value is defined ("
                      + "; ".join(fewer) + "): on the others some method's map is blank, "
                      "and the metric is undefined for it."]  # fmt: skip
    return "\n".join(lines)

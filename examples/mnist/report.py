"""Writing the worked example's Markdown report from its measured numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from camkit.metrics import RandomizationResult
from examples.mnist.classification import Scores
from examples.mnist.comparison import Table, table_markdown
from examples.mnist.model import CLASSES

BASELINES = ("uniform random", "centre Gaussian", "Random-CAM")
"""The metric table's rows that carry no information about the model's decision."""


@dataclass(frozen=True)
class Setup:
    """How the network was obtained and what the run used."""

    parameters: int
    trained_here: bool
    epochs: int
    batch_size: int
    train_seconds: float
    threads: int
    torch_version: str
    train_images: int
    test_images: int


@dataclass(frozen=True)
class VitSetup:
    """The vision transformer of the LeGrad section: how it was obtained and how it scores."""

    parameters: int
    trained_here: bool
    epochs: int
    learning_rate: float
    train_seconds: float
    accuracy: float


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def accuracy_table(scores: Scores) -> str:
    lines = [
        _row(["class", "precision (%)", "recall (%)", "test images"]),
        _row(["---:", "---:", "---:", "---:"]),
    ]
    support = scores.confusion.sum(1).tolist()
    for c in range(CLASSES):
        lines.append(
            _row(
                [
                    str(c),
                    f"{100 * scores.precision[c]:.2f}",
                    f"{100 * scores.recall[c]:.2f}",
                    str(support[c]),
                ]
            )
        )
    lines.append(
        _row(["**all**", "", f"**{100 * scores.accuracy:.2f}** (accuracy)", str(sum(support))])
    )
    return "\n".join(lines)


def localization_table(results: dict[str, dict[str, list[float]]]) -> str:
    """``results[method]`` holds per-class (+ overall) 'mass', 'area' and 'hit' percentages."""
    methods = list(results)
    head = ["class", "stroke area (%)"]
    head += [f"mass on strokes: {m} (%)" for m in methods]
    head += [f"max on stroke: {m} (%)" for m in methods]
    lines = [_row(head), _row(["---:"] * len(head))]
    area = next(iter(results.values()))["area"]
    for i, label in enumerate([*map(str, range(CLASSES)), "**all**"]):
        cells = [label, f"{area[i]:.1f}"]
        cells += [f"{results[m]['mass'][i]:.1f}" for m in methods]
        cells += [f"{results[m]['hit'][i]:.1f}" for m in methods]
        lines.append(_row(cells))
    return "\n".join(lines)


def discussion(
    scores: Scores, setup: Setup, results: dict[str, dict[str, list[float]]], main: str, first: str
) -> str:
    area = results[main]["area"][-1]
    mass, hit = results[main]["mass"][-1], results[main]["hit"][-1]
    rand_mass, rand_hit = (
        results["uniform random"]["mass"][-1],
        results["uniform random"]["hit"][-1],
    )
    gauss_mass, gauss_hit = (
        results["centre Gaussian"]["mass"][-1],
        results["centre Gaussian"]["hit"][-1],
    )
    first_mass, first_hit = results[first]["mass"][-1], results[first]["hit"][-1]
    worst = min(range(CLASSES), key=lambda c: scores.recall[c])
    best_loc = max(
        range(CLASSES), key=lambda c: results[main]["mass"][c] / results[main]["area"][c]
    )
    worst_loc = min(
        range(CLASSES), key=lambda c: results[main]["mass"][c] / results[main]["area"][c]
    )
    goal = "meets" if scores.accuracy >= 0.99 else "misses"
    time_note = (
        f"in {setup.train_seconds:.0f} s of training on {setup.threads} CPU threads"
        if setup.train_seconds
        else "(shipped weights)"
    )
    paragraphs = [
        f"**Accuracy.** The {setup.parameters:,}-parameter network reaches "
        f"{100 * scores.accuracy:.2f} % test accuracy {time_note}, which {goal} the "
        f"99.0 % goal. The hardest class by recall is {worst} "
        f"({100 * scores.recall[worst]:.2f} %); the confusion matrix shows where its "
        f"errors go.",
        f"**Where Grad-CAM looks.** Stroke pixels cover {area:.1f} % of an average test "
        f"image. Grad-CAM at `{main}` puts {mass:.1f} % of its mass on them, "
        f"{mass / area:.1f}x their share of the image and well above uniform-random maps "
        f"({rand_mass:.1f} %, which can only match the stroke area); its maximum lands on a "
        f"stroke in {hit:.1f} % of images against {rand_hit:.1f} % at random. "
        f"{_versus(mass, gauss_mass, hit, gauss_hit)} A centred blob already covers most of a "
        f"centred digit, while Grad-CAM marks the parts that tell the predicted class from the "
        f"others (see the class-discrimination figure), not every stroke, and at 8x8 it is too "
        f"coarse to follow strokes one or two pixels wide.",
        f"**Per class.** Concentration on strokes (mass share over stroke area) is highest "
        f"for digit {best_loc} ({results[main]['mass'][best_loc]:.1f} % of the mass on "
        f"{results[main]['area'][best_loc]:.1f} % of the pixels) and lowest for digit "
        f"{worst_loc} ({results[main]['mass'][worst_loc]:.1f} % on "
        f"{results[main]['area'][worst_loc]:.1f} %, maximum on a stroke in "
        f"{results[main]['hit'][worst_loc]:.1f} % of images). Where a class's map is barely "
        f"better than random on strokes, the network's evidence for it lies around the "
        f"strokes (background shapes such as open or closed loops), which a stroke-pixel "
        f"ground truth does not reward; the digit figures show this.",
        f"**Resolution against semantics.** At the first conv layer (`{first}`, 24x24) the "
        f"map puts {first_mass:.1f} % of its mass on strokes and peaks on a stroke in "
        f"{first_hit:.1f} % of images, against {mass:.1f} % and {hit:.1f} % at `{main}`. "
        f"{_layers(first_mass, mass, first_hit, hit)} The early maps respond to local edges "
        f"wherever they are; the late maps are coarser but class-specific.",
        "**Reading the figures.** The class-discrimination figure shows that maps for "
        "different classes on the same image highlight different parts of the digit; the "
        "mistakes figure shows which strokes made the network choose the wrong class; the "
        "counterfactual maps mark regions whose presence lowers the predicted class's score.",
    ]
    return "\n\n".join(paragraphs)


def _versus(mass: float, gauss_mass: float, hit: float, gauss_hit: float) -> str:
    mass_word = "beats" if mass > gauss_mass else "trails"
    hit_word = "beats" if hit > gauss_hit else "trails"
    joint = "and" if mass_word == hit_word else "but"
    return (
        f"Against a centre-Gaussian prior it {mass_word} the prior on mass share ({mass:.1f} % "
        f"vs {gauss_mass:.1f} %) {joint} {hit_word} it on the maximum ({hit:.1f} % vs "
        f"{gauss_hit:.1f} %)."
    )


def _layers(first_mass: float, mass: float, first_hit: float, hit: float) -> str:
    if first_mass > mass and first_hit > hit:
        return "The finer layer localizes strokes better on both counts."
    if first_mass <= mass and first_hit <= hit:
        return "The deeper layer localizes strokes better on both counts, despite its coarser grid."
    better_mass = "first" if first_mass > mass else "last"
    better_hit = "first" if first_hit > hit else "last"
    return (
        f"Neither layer wins outright: the {better_mass} layer puts more mass on strokes, the "
        f"{better_hit} layer's maximum lands on a stroke more often."
    )


def evaluation_discussion(table: Table) -> str:
    """What the metric table says, read against its baselines."""
    baselines = [b for b in BASELINES if b in table.rows]
    methods = [m for m in table.rows if m not in baselines]
    sentences = []
    for metric in next(iter(table.rows.values())):
        higher = "↑" in metric
        pick = max if higher else min
        best = pick(methods, key=lambda m: table.rows[m][metric])
        best_value = table.rows[best][metric]
        beaten_by = [
            b
            for b in baselines
            if (table.rows[b][metric] > best_value) == higher
            and table.rows[b][metric] != best_value
        ]
        text = f"{metric.rstrip(' ↑↓')}: best method {best} ({best_value:.3g})"
        if beaten_by:
            text += ", but the " + " and the ".join(
                f"{b} baseline scores {table.rows[b][metric]:.3g}" for b in beaten_by
            )
        sentences.append(text + ".")
    return (
        "- " + "\n- ".join(sentences) + "\n\n"
        "Where a baseline wins, the metric rewards something other than faithfulness on this "
        "data: MNIST digits are centred, so a centre prior removes (deletion, ROAD MoRF) or "
        "restores (insertion) the digit first; and Average Drop favours maps that keep the "
        "whole image partly visible, which a uniform map in [0, 1] does. Read each number next "
        "to its baselines, and several metrics together: no single one ranks the methods."
    )


def transformer_discussion(table: Table, convnet: Table) -> str:
    """LeGrad's row read against Grad-CAM on the same ViT, the baselines and the ConvNet."""
    rows = table.rows
    legrad, gradcam = rows["LeGrad"], rows["Grad-CAM"]
    ahead = [
        m for m in legrad if legrad[m] != gradcam[m] and (legrad[m] > gradcam[m]) == ("↑" in m)
    ]
    behind = [m for m in legrad if m not in ahead]
    energy = "Energy on strokes % ↑"
    return (
        f"LeGrad beats Grad-CAM on the same transformer on {len(ahead)} of {len(legrad)} "
        f"metrics ({_names(ahead)}) and trails or ties it on {_names(behind)}. It puts "
        f"{legrad[energy]:.1f} % of its energy on strokes, against "
        f"{gradcam[energy]:.1f} % for Grad-CAM on the ViT, "
        f"{rows['uniform random'][energy]:.1f} % for uniform-random maps and "
        f"{convnet.rows['Grad-CAM'][energy]:.1f} % for Grad-CAM on the ConvNet."
        f"{_weak_localization(rows, energy)} The two networks differ, so read the ViT's "
        "rows against each other and against their baselines, not against the ConvNet's "
        "table."
    )


def _weak_localization(rows: dict[str, dict[str, float]], energy: str) -> str:
    """A warning where a random map localizes strokes as well as the ViT's explanations."""
    best = max(rows["LeGrad"][energy], rows["Grad-CAM"][energy])
    if rows["Random-CAM"][energy] < best:
        return ""
    return (
        f" Random-CAM's {rows['Random-CAM'][energy]:.1f} % matches or beats both: this small ViT "
        "spreads its evidence over the background as well as the strokes (see the figure), "
        "so on it stroke localization says little about either method, and the perturbation "
        "metrics carry the comparison."
    )


def _vit_weights(vit: VitSetup) -> str:
    source = "trained in this run" if vit.trained_here else "the shipped checkpoint"
    seconds = f", {vit.train_seconds:.0f} s" if vit.train_seconds else ""
    return (
        f"{source} ({vit.epochs} epochs, the ConvNet's recipe at a peak learning rate of "
        f"{vit.learning_rate:g}{seconds})"
    )


def _names(metrics: list[str]) -> str:
    return ", ".join(m.rstrip(" ↑↓") for m in metrics) or "none"


def sanity_discussion(results: dict[str, RandomizationResult]) -> str:
    """The randomization test's verdict for each method, with its numbers."""
    lines = []
    for name, result in results.items():
        final = float(result.spearman_abs[-1].nanmean())
        first = float(result.spearman_abs[0].nanmean())
        verdict = (
            "passes: its maps change once the weights are random"
            if result.passes()
            else "fails: its maps stay similar to the trained model's"
        )
        lines.append(
            f"- {name} {verdict} (mean rank correlation {first:.2f} after randomizing the "
            f"classifier, {final:.2f} with every layer random)."
        )
    passed = {name: result.passes() for name, result in results.items()}
    if passed.get("Grad-CAM") and passed.get("Guided Backprop") is False:
        lines.append(
            "\nAs Adebayo et al. (2018) found, Guided Backprop's maps stay close to what they "
            "were whatever the weights (they largely reconstruct the input), while Grad-CAM's "
            "depend on them."
        )
    return "\n".join(lines)


def write_report(
    out: Path,
    scores: Scores,
    setup: Setup,
    results: dict[str, dict[str, list[float]]],
    figures: dict[str, Path],
    main: str,
    first: str,
    table: Table,
    sanity: dict[str, RandomizationResult],
    evaluated: int,
    vit: VitSetup | None = None,
    vit_table: Table | None = None,
    *,
    full: bool = True,
) -> Path:
    """Write ``report.md`` in ``out``; figures are linked by their paths relative to it.

    Without ``vit`` (a run without ``--full``), the vision transformer's section says how
    to get it."""

    def fig(key: str, caption: str) -> str:
        return f"![{caption}]({figures[key].relative_to(out).as_posix()})\n\n*{caption}*"

    scored = "Every camkit method that applies" if full else "The main camkit methods that apply"
    if vit is None or vit_table is None:
        transformer_section = (
            "## More methods, and a vision transformer\n\n"
            "This run scored the main methods. `python -m examples.mnist --full` scores every "
            "camkit method that applies to this network (30 explainers), and trains a small "
            "vision transformer to explain with LeGrad beside Grad-CAM (15 to 30 minutes in "
            "all on 2 CPU cores).\n\n"
        )
    else:
        transformer_section = f"""## A vision transformer: LeGrad

LeGrad (Bousselham et al., 2024) explains vision transformers through their attention,
which the ConvNet has none of. So the example also trains a small ViT: 4x4 patches (a 7x7
grid of tokens) and a CLS token, three pre-norm blocks of width 32 with 4 heads, the class
read from the CLS token; {vit.parameters:,} parameters, {_vit_weights(vit)}, reaching
**{100 * vit.accuracy:.2f} %** test accuracy. LeGrad uses the last two blocks' attention
(the default of the paper's code), each block scored through the network's own head on its
tokens; Grad-CAM explains the last block's `norm1` tokens (pytorch-grad-cam's ViT recipe).
Both are scored as above, on the same {evaluated:,} images, for the ViT's predicted class.

{fig("transformer", "LeGrad and Grad-CAM on the ViT, Grad-CAM on the ConvNet, same class")}

{table_markdown(vit_table)}

{transformer_discussion(vit_table, table)}

"""

    class_figs = "\n\n".join(fig(f"class_{d}", f"Digit {d}") for d in range(CLASSES))
    text = f"""# camkit worked example: MNIST

## Setup

- Network: `Conv2d(1,12,5) → ReLU → MaxPool2d(2) → Conv2d(12,8,5) → ReLU → MaxPool2d(2) →
  Flatten → Linear(128,10)`, {setup.parameters:,} parameters, logits out.
- Weights: {"trained in this run" if setup.trained_here else "the shipped checkpoint"};
  {setup.epochs} epochs of Adam with a one-cycle learning rate, batch {setup.batch_size},
  random shifts of up to 2 pixels; training time {setup.train_seconds:.1f} s on
  {setup.threads} CPU threads (torch {setup.torch_version}).
- Data: {setup.train_images:,} training and {setup.test_images:,} test images from the MNIST
  IDX files shipped with the example, scaled to [0, 1] and standardized with the training
  set's mean and std.
- Explanations: `GradCAM(model, "{main}")`, maps upsampled to 28x28 and scaled to [0, 1].

## Accuracy

{accuracy_table(scores)}

{fig("confusion", "Confusion matrix of the test set")}

{fig("curves", "Training loss and accuracy per epoch")}

## Grad-CAM on every digit

Test images of each digit with the Grad-CAM map of the predicted class (predicted class and
its softmax probability above each image).

{class_figs}

## The whole test set, to browse

Grad-CAM and Score-CAM maps of every test image's label are in two map stores
(`maps/gradcam`, `maps/scorecam`, written by `camkit.explain_dataset`), and
[viewer/index.html](viewer/index.html) is a page to look through them (written by
`camkit.view`; it opens from disk, with no server): sort by score, by how far a map sits
off-centre, or by how little the two methods agree, show only the mistakes or one
digit, open a sample to see its image, both maps and its record, and compare each
digit's mean map in the Classes tab.

## Class discrimination

{fig("discrimination", "One image, its maps for all ten classes")}

## Mistakes

{fig("mistakes", "Misclassified images: maps for the predicted and for the true class")}

## Counterfactual maps

Negating the gradient of the score (Selvaraju et al., Sec. 3.3) gives a map of what speaks
*against* the class.

{fig("counterfactual", "For and against the predicted class")}

## Two layers

{fig("layers", "Maps at the first and the last conv layer")}

## Localization on strokes

MNIST has a natural ground truth for where the evidence lies: the stroke pixels (ink
above 0.5). For every test image and its predicted class: the share of the map's mass on
stroke pixels, against the share of the image the strokes cover, and how often the map's
maximum lies on a stroke pixel. All-zero maps count as misses and are left out of the mass
average.

{localization_table(results)}

## Evaluating the explanations

{scored} to this network, scored with every camkit metric on the
first {evaluated:,} test images for the predicted class, on raw [0, 1] pixels (a map value
of 0 shows black), by `camkit.metrics.compare`, next to its uniform-random baseline and a
centre-Gaussian map. Arrows say which direction is better. Average Drop and Increase in
Confidence: Chattopadhay et al. (2018); deletion (to black) and insertion (from a blurred
image), 16 pixels a step: Petsiuk et al. (2018); ROAD, mean over 20-80 % removed with noisy
linear imputation: Rong et al. (2022); pointing game (within 1 pixel of a stroke) and energy
on strokes: Zhang et al. (2016), Wang et al. (2020). Guided Backprop and Guided Grad-CAM
enter as the magnitude of their input gradients, scaled to [0, 1]. Each mean is followed by
the method's rank on that metric; a method whose paired bootstrap difference (1,000
resamples of the images, 95 %) from the best of its group contains 0 cannot be told apart
from it and shares its rank.

{table_markdown(table)}

{fig("method_comparison", "Each method's mean and 95 % interval per metric, best at the top")}

{evaluation_discussion(table)}

{transformer_section}## Sanity checks

Cascading model-parameter randomization (Adebayo et al., 2018) on 100 test images: the
layers are re-initialized from the logits down, and each method's maps are compared with
those of the trained network.

{fig("sanity_curves", "Similarity to the trained maps as layers are randomized")}

{fig("sanity_maps", "Maps as the layers are randomized")}

{sanity_discussion(sanity)}

## Results and discussion

{discussion(scores, setup, results, main, first)}
"""
    path = out / "report.md"
    path.write_text(text)
    return path

"""Explain a volume network and a video network: ``python -m examples.volumes --out DIR``.

Builds MNIST digits placed in small volumes and moving through short clips (see
:mod:`examples.volumes.data`), trains a small 3D network on each (about a minute
each on 2 CPU cores; ``--no-train`` loads the shipped weights instead), explains
the test inputs with Grad-CAM, Grad-CAM++ and occlusion sensitivity, scores each
map with the pointing game against where the digit really is (every frame of a
clip on its own) beside uniform random maps, and writes ``report.md``, ``results.json``
and the figures into ``--out``: a volume's map through orthogonal slices and a
slice grid, a clip's frame strip and its animation.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn
from tqdm import tqdm

import camkit
from camkit.metrics import pointing_game
from examples.mnist.data import DEFAULT_ROOT, load_split
from examples.volumes.data import Placed, clips, volumes
from examples.volumes.model import ClipNet, VolumeNet
from examples.volumes.train import WEIGHTS, accuracy, train

LAYER = "features.relu"
TRAIN, TEST = 6000, 100
"""How many digits train each network and how many test inputs are explained."""

TOLERANCE = 2.0
"""The pointing game's tolerance: the peak within 2 voxels (or pixels) of the digit's ink,
the paper's 15 pixels at 224 x 224 scaled to these 32 x 32 frames."""

OCCLUSION = {
    "volume": {"mask_size": (4, 8, 8), "stride": (4, 4, 4)},
    "clip": {"mask_size": (1, 8, 8), "stride": (1, 4, 4)},
}
"""The occlusion windows: a quarter of the depth (the slab is 4 deep) or one frame, by a
quarter of the frame's side, at half a window's stride in the frame."""


@dataclass(frozen=True)
class Case:
    """One of the two networks, with its data."""

    name: str
    model: nn.Module
    train: Placed
    test: Placed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.volumes", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("volumes-report"))
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the MNIST files' folder")
    parser.add_argument(
        "--no-train", action="store_true", help="load the shipped weights instead of training"
    )
    parser.add_argument(
        "--save-weights", action="store_true", help="write the trained weights where they ship"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=TRAIN)
    parser.add_argument("--test-size", type=int, default=TEST)
    return parser.parse_args(argv)


def explainers(case: Case) -> dict[str, camkit.Explainer]:
    """The methods compared on ``case``'s network."""
    return {
        "Grad-CAM": camkit.GradCAM(case.model, LAYER),
        "Grad-CAM++": camkit.GradCAMPlusPlus(case.model, LAYER),
        "Occlusion": camkit.OcclusionSensitivity(
            case.model, **OCCLUSION[case.name], fill=0.0, batch_size=256
        ),
    }


def hit_rates(case: Case, maps: dict[str, Tensor]) -> dict[str, float]:
    """The pointing game's hit rate of each method's maps (per frame for a clip), and of
    uniform random maps."""
    generator = torch.Generator().manual_seed(0)
    every = {**maps, "uniform random": torch.rand(maps["Grad-CAM"].shape, generator=generator)}
    masks = case.test.masks
    if case.name == "clip":  # every frame on its own
        every = {name: m.flatten(0, 1) for name, m in every.items()}
        masks = masks.flatten(0, 1)
    return {name: pointing_game(m, masks, tolerance=TOLERANCE).summary for name, m in every.items()}


def explain(case: Case, progress: bool = True) -> dict[str, Tensor]:
    """Each method's maps of the test inputs, for the true digit."""
    maps: dict[str, Tensor] = {}
    inputs, labels = case.test.inputs, case.test.labels
    for name, explainer in tqdm(
        explainers(case).items(), desc=f"explaining the {case.name}s", disable=not progress
    ):
        maps[name] = torch.cat(
            [explainer(x, y) for x, y in zip(inputs.split(50), labels.split(50), strict=True)]
        )
    return maps


def figures(cases: dict[str, Case], maps: dict[str, dict[str, Tensor]], out: Path) -> list[str]:
    """The figures of the report; returns their file names."""
    written = []
    volume = cases["volume"].test
    for i in (0, 1):
        fig = camkit.plot.orthogonal_slices(
            volume.inputs[i], maps["volume"]["Grad-CAM"][i],
            suptitle=f"Grad-CAM of digit {int(volume.labels[i])}, cut through its peak",
        )  # fmt: skip
        name = f"volume-{i}-slices.png"
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    fig = camkit.plot.slice_grid(
        volume.inputs[0], maps["volume"]["Grad-CAM"][0], count=16, ncols=8,
        suptitle=f"every axial slice, digit {int(volume.labels[0])}",
    )  # fmt: skip
    fig.savefig(out / "volume-0-grid.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append("volume-0-grid.png")
    clip = cases["clip"].test
    for method in ("Grad-CAM", "Occlusion"):
        fig = camkit.plot.frame_strip(  # the clip's noise takes it out of [0, 1]: clamped
            clip.inputs[0].clamp(0, 1), maps["clip"][method][0], ncols=8,
            suptitle=f"{method}: digit {int(clip.labels[0])} moving, a map per frame",
        )  # fmt: skip
        name = f"clip-0-{method.lower().replace('-', '')}.png"
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    camkit.plot.animate(
        clip.inputs[0].clamp(0, 1), maps["clip"]["Grad-CAM"][0], out / "clip-0.gif", fps=4
    )
    written.append("clip-0.gif")
    return written


def report(
    accuracies: dict[str, float],
    rates: dict[str, dict[str, float]],
    test_size: int,
    figure_names: list[str],
) -> str:
    """``report.md``: the accuracies, the hit-rate table and the figures."""
    methods = list(rates["volume"])
    lines = [
        "# Volumes and video: MNIST digits in 3D",
        "",
        "Made by `python -m examples.volumes`. Test accuracy: volumes "
        f"{accuracies['volume']:.1%}, clips {accuracies['clip']:.1%}.",
        "",
        f"Pointing game at layer `{LAYER}` (occlusion: no layer), for the true digit: how "
        f"often the map's peak lies within {TOLERANCE:g} voxels of the digit's ink "
        f"({test_size} test volumes; every frame of {test_size} "
        "test clips on its own).",
        "",
        "| method | volumes | clip frames |",
        "| --- | ---: | ---: |",
        *(f"| {m} | {rates['volume'][m]:.1%} | {rates['clip'][m]:.1%} |" for m in methods),
        "",
    ]
    lines += [f"![{name}]({name})" for name in figure_names if name.endswith(".png")]
    lines += ["", "The clip's Grad-CAM as an animation: [clip-0.gif](clip-0.gif)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_args(argv)
    out: Path = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    train_split, test_split = (
        load_split("train", arguments.data),
        load_split("test", arguments.data),
    )
    n, m = arguments.train_size, arguments.test_size
    torch.manual_seed(0)  # the initial weights too: a training run is reproducible
    cases = {
        "volume": Case(
            "volume", VolumeNet(),
            volumes(train_split.images[:n], train_split.labels[:n], seed=0),
            volumes(test_split.images[:m], test_split.labels[:m], seed=1),
        ),
        "clip": Case(
            "clip", ClipNet(),
            clips(train_split.images[:n], train_split.labels[:n], seed=0),
            clips(test_split.images[:m], test_split.labels[:m], seed=1),
        ),
    }  # fmt: skip
    accuracies: dict[str, float] = {}
    rates: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    maps: dict[str, dict[str, Tensor]] = {}
    for name, case in cases.items():
        torch.manual_seed(0)
        if arguments.no_train:
            case.model.load_state_dict(torch.load(WEIGHTS[name], weights_only=True))
            case.model.eval()
        else:
            seconds[name] = round(train(case.model, case.train, epochs=arguments.epochs), 1)
            if arguments.save_weights:
                torch.save(case.model.state_dict(), WEIGHTS[name])
        accuracies[name] = accuracy(case.model, case.test.inputs, case.test.labels)
        maps[name] = explain(case)
        rates[name] = hit_rates(case, maps[name])
    names = figures(cases, maps, out)
    results = {"test_size": m, "accuracy": accuracies, "hit_rate": rates, "seconds": seconds}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(report(accuracies, rates, m, names))
    print(f"wrote {out / 'report.md'}")
    print(json.dumps(rates, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

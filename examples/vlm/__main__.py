"""Explain every word a small vision-language model says: ``python -m examples.vlm --out DIR``.

Builds canvases of two MNIST digits side by side, answered "seven left two right" (see
:mod:`examples.vlm.data`), trains the small model of :mod:`examples.vlm.model` to say
the answer (about three minutes on 2 CPU cores; ``--no-train`` loads the shipped weights
instead), lets it answer the test canvases greedily, explains every word it said with
several camkit methods through :class:`camkit.TokenTarget` and with :class:`camkit.TAM`,
scores each map with the pointing game against the digit the word is about, beside
uniform random maps, and writes ``report.md``, ``results.json`` and the figures into
``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn
from tqdm import tqdm

import camkit
from camkit.metrics import pointing_game
from examples.mnist.data import DEFAULT_ROOT, load_split
from examples.vlm.data import GRID, WORDS, Canvases, canvases, prompts, said
from examples.vlm.model import DigitTeller, generate
from examples.vlm.train import WEIGHTS, train

TRAIN, TEST = 12000, 300
"""How many canvases train the model and how many test canvases are explained."""

LAYER = "vision.relu2"
"""The layer the gradient methods explain: the second convolution's ReLU, 16 x 32."""

TOLERANCE = 2.0
"""The pointing game's tolerance: the peak within 2 pixels of the digit's ink."""

COLUMNS = (("first number word", 0, 0), ('"left"', 1, 0), ("second number word", 2, 1),
           ('"right"', 3, 1))  # fmt: skip
"""The report's columns: a word of the answer, its index, and the digit it is about
(0: the left one, 1: the right one)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.vlm", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("vlm-report"))
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the MNIST files' folder")
    parser.add_argument(
        "--no-train", action="store_true", help="load the shipped weights instead of training"
    )
    parser.add_argument(
        "--save-weights", action="store_true", help="write the trained weights where they ship"
    )
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--train-size", type=int, default=TRAIN)
    parser.add_argument("--test-size", type=int, default=TEST)
    return parser.parse_args(argv)


def explain(
    model: nn.Module, test: Canvases, answers: Tensor, progress: bool = True
) -> dict[str, Tensor]:
    """Each method's maps ``(N, 4, 32, 64)``, one per word of the model's own answers."""
    sequences = torch.cat([prompts(len(test)), answers], 1)
    target = camkit.TokenTarget(answers)
    gradient = {
        "Grad-CAM": camkit.GradCAM(model, LAYER),
        "Grad-CAM++": camkit.GradCAMPlusPlus(model, LAYER),
        "HiResCAM": camkit.HiResCAM(model, LAYER),
        "LayerCAM": camkit.LayerCAM(model, LAYER),
    }
    maps: dict[str, Tensor] = {}
    for name, explainer in tqdm(gradient.items(), desc="explaining", disable=not progress):
        maps[name] = explainer(test.images, target, forward_kwargs={"input_ids": sequences})
    inputs = {"input_ids": sequences, "pixel_values": test.images}
    maps["TAM"] = camkit.TAM(model, grid=GRID)(inputs, target, prompt=[], size=(32, 64))
    generator = torch.Generator().manual_seed(0)
    maps["uniform random"] = torch.rand(maps["Grad-CAM"].shape, generator=generator)
    return maps


def hit_rates(test: Canvases, answers: Tensor, maps: dict[str, Tensor]) -> dict[str, dict]:
    """Per method and word of the answer, the pointing game's hit rate against the digit
    the word is about, over the answers whose number words are right (a wrong number
    word is about no digit in the canvas)."""
    right = (answers[:, [0, 2]] == test.digits).all(1)
    rates: dict[str, dict[str, float]] = {}
    for name, method_maps in maps.items():
        rates[name] = {
            column: pointing_game(
                method_maps[right, word], test.masks[right, digit], tolerance=TOLERANCE
            ).summary
            for column, word, digit in COLUMNS
        }
    return rates


def figures(test: Canvases, answers: Tensor, maps: dict[str, Tensor], out: Path) -> list[str]:
    """For two test canvases, each word's map by LayerCAM, Grad-CAM and TAM."""
    written = []
    words = said(answers)
    for i in (0, 1):
        for method in ("LayerCAM", "Grad-CAM", "TAM"):
            fig = camkit.plot.tokens(  # the canvas's noise takes it out of [0, 1]: clamped
                test.images[i].clamp(0, 1), maps[method][i], [f" {w}" for w in words[i]],
                ncols=4, size=2.4,
            )  # fmt: skip
            fig.suptitle(f"{method}: {' '.join(words[i])}")
            fig.set_figheight(1.9)  # the panels are twice as wide as high
            name = f"canvas-{i}-{method.lower().replace('-', '')}.png"
            fig.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(name)
    return written


def report(accuracy: dict[str, float], rates: dict[str, dict], test_size: int,
           figure_names: list[str]) -> str:  # fmt: skip
    """``report.md``: the model's accuracy, the hit-rate table and the figures."""
    columns = [c for c, _, _ in COLUMNS]
    lines = [
        "# A vision-language model's words, explained",
        "",
        "Made by `python -m examples.vlm`. The model reads two MNIST digits side by side and "
        'says them, as in "seven left two right". On '
        f"{test_size} test canvases, its whole answer is right for {accuracy['answer']:.1%} "
        f"and each number word for {accuracy['number words']:.1%}.",
        "",
        "Pointing game for each word the model said (answers whose number words are right): "
        f"how often the word's map peaks within {TOLERANCE:g} pixels of the ink of the "
        "digit the word is about (the side words: the digit on that side). Gradient methods "
        f"at `{LAYER}` through `TokenTarget`; TAM from the last hidden states.",
        "",
        "| method | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
        *(
            f"| {name} | " + " | ".join(f"{row[c]:.1%}" for c in columns) + " |"
            for name, row in rates.items()
        ),
        "",
    ]
    lines += [f"![{name}]({name})" for name in figure_names]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    arguments = parse_args(argv)
    out: Path = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    n, m = arguments.train_size, arguments.test_size
    test_split = load_split("test", arguments.data)
    test = canvases(test_split.images[:m], test_split.labels[:m], seed=1)
    torch.manual_seed(0)  # the initial weights too: a training run is reproducible
    model = DigitTeller()
    seconds = None
    if arguments.no_train:
        model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
        model.eval()
    else:
        train_split = load_split("train", arguments.data)
        data = canvases(train_split.images[:n], train_split.labels[:n], seed=0)
        seconds = round(train(model, data, epochs=arguments.epochs), 1)
        if arguments.save_weights:
            torch.save(model.state_dict(), WEIGHTS)
    answers = generate(model, test.images, prompts(len(test)))
    accuracy = {
        "answer": float((answers == test.answers).all(1).float().mean()),
        "number words": float((answers[:, [0, 2]] == test.digits).float().mean()),
    }
    maps = explain(model, test, answers)
    rates = hit_rates(test, answers, maps)
    names = figures(test, answers, maps, out)
    results = {"test_size": m, "accuracy": accuracy, "hit_rate": rates, "seconds": seconds,
               "words": list(WORDS)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(report(accuracy, rates, m, names))
    print(f"wrote {out / 'report.md'}")
    print(json.dumps({"accuracy": accuracy, "hit_rate": rates}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

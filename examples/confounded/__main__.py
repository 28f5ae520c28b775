"""Train on confounded MNIST three ways and report: ``python -m examples.confounded --out DIR``.

Trains the MNIST ConvNet on confounded MNIST (a square on the border whose
place gives the label away, see :mod:`examples.confounded.data`): plainly,
with a penalty on camkit's differentiable maps over the square, and with Ross
et al.'s input-gradient penalty (RRR). Writes ``report.md`` with the accuracy
table, ``results.json`` and the figures into ``--out``. ``--variants`` also
trains the guides that did not work, for the table of what was tried.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from examples.confounded.data import confound
from examples.confounded.figures import construction, maps_before_after
from examples.confounded.train import Guide, train_guided
from examples.mnist.data import DEFAULT_ROOT, Split, load_split
from examples.mnist.train import Checkpoint, accuracy

GUIDES = (
    Guide("plain"),
    Guide(
        "camkit HiResCAM penalty",
        kind="camkit",
        method="HiResCAM",
        layer="features.relu1",
        score="all log-probabilities",
        upsample=False,
        weight=10.0,
    ),
    Guide("RRR input-gradient penalty", kind="rrr", weight=1000.0),
)
"""The three runs of the report: plain, camkit-guided (the guide that worked), RRR."""

VARIANTS = (
    Guide("Grad-CAM, default maps, label logit, relu", kind="camkit", method="GradCAM",
          relu=True, normalize=True, weight=1.0),
    Guide("HiResCAM, input pixels, label logit, relu", kind="camkit", weight=10.0),
    Guide("HiResCAM, layer cells, label logit, relu1", kind="camkit", layer="features.relu1",
          upsample=False, weight=10.0),
    Guide("HiResCAM, layer cells, all log-probabilities, relu", kind="camkit", upsample=False,
          score="all log-probabilities", weight=10.0),
    Guide("Grad-CAM, layer cells, all log-probabilities, relu1", kind="camkit",
          method="GradCAM", layer="features.relu1", upsample=False,
          score="all log-probabilities", weight=10.0),
)  # fmt: skip
"""Guides tried on the way, reported with ``--variants``."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.confounded", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("confounded-report"))
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="the MNIST files' folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=None, help="first N training images")
    parser.add_argument("--limit-test", type=int, default=None, help="first N test images")
    parser.add_argument(
        "--variants", action="store_true", help="also train the guides that did not work"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def _limited(split: Split, limit: int | None) -> Split:
    return split if limit is None else Split(split.images[:limit], split.labels[:limit])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train = _limited(load_split("train", args.data), args.limit_train)
    test = _limited(load_split("test", args.data), args.limit_test)
    confounded = confound(train, randomize=False)
    randomized = confound(test, randomize=True, seed=args.seed + 1)
    construction(confounded, randomized, args.out / "construction.png")
    rows, models = [], {}
    for guide in GUIDES + (VARIANTS if args.variants else ()):
        checkpoint, seconds = train_guided(confounded, guide, epochs=args.epochs, seed=args.seed)
        rows.append(
            {
                **asdict(guide),
                "randomized": accuracy(checkpoint, randomized.split),
                "clean": accuracy(checkpoint, test),
                "confounded": accuracy(checkpoint, confound(test, randomize=False).split),
                "seconds": seconds,
            }
        )
        print(_row(rows[-1]), flush=True)
        models[guide.name] = checkpoint
    shown: dict[str, Checkpoint] = {g.name: models[g.name] for g in GUIDES}
    maps_before_after(shown, randomized, args.out / "maps.png")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    (args.out / "report.md").write_text(_report(rows, args))
    (args.out / "table.rst").write_text(rst_table(rows, args.epochs))
    print(f"wrote {args.out / 'report.md'}")
    return 0


HEAD = (
    "| training | randomized test | clean test | confounded test | training time |\n"
    "| --- | ---: | ---: | ---: | ---: |"
)


def _row(row: dict[str, object]) -> str:
    def percent(key: str) -> str:
        return f"{100 * float(row[key]):.2f} %"  # type: ignore[arg-type]

    cells = [percent("randomized"), percent("clean"), percent("confounded")]
    return f"| {row['name']} | " + " | ".join(cells) + f" | {float(row['seconds']):.0f} s |"  # type: ignore[arg-type]


def rst_table(rows: list[dict[str, object]], epochs: int) -> str:
    """The accuracy table as reStructuredText, for the docs."""
    lines = [
        ".. csv-table:: Test accuracy after "
        + f"{epochs} epochs (randomized: the square at a random place; clean: no square; "
        + "confounded: the square at the label's place, as in training)",
        '   :header: "training", "randomized test", "clean test", "confounded test", '
        '"training time"',
        "",
    ]
    for row in rows:
        cells = [str(row["name"])]
        cells += [f"{100 * float(row[k]):.2f} %" for k in ("randomized", "clean", "confounded")]  # type: ignore[arg-type]
        cells.append(f"{float(row['seconds']):.0f} s")  # type: ignore[arg-type]
        lines.append("   " + ", ".join(f'"{c}"' for c in cells))
    return "\n".join(lines) + "\n"


def _report(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        "# Confounded MNIST: training with explanations",
        "",
        f"{len(rows)} runs, {args.epochs} epochs each, seed {args.seed}, torch "
        f"{torch.__version__}. Randomized test: the square at a random place; clean test: no "
        "square; confounded test: the square at the label's place, as in training.",
        "",
        HEAD,
        *(_row(r) for r in rows),
        "",
        "![construction](construction.png)",
        "",
        "![maps](maps.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

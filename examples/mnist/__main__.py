"""Run the MNIST worked example end to end: ``python -m examples.mnist --out DIR``.

Trains the network (or, with ``--no-train``, loads the shipped weights), measures it,
explains it with Grad-CAM, scores the main methods with every metric and writes
``report.md`` with its figures into ``--out`` (a few minutes on 2 CPU cores). With
``--full`` it scores every camkit method and trains a vision transformer for LeGrad too
(15 to 30 minutes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import camkit
from camkit import GradCAM
from examples.mnist import figures
from examples.mnist.classification import Scores, classification_scores
from examples.mnist.comparison import (
    LAYER,
    Explainer,
    Table,
    explainers,
    main_explainers,
    raw_pixel_model,
    sanity_checks,
    score_all,
    vit_explainers,
)
from examples.mnist.data import DEFAULT_ROOT, Split, load_split
from examples.mnist.localization import (
    centre_gaussian_maps,
    localize,
    stroke_mask,
    summarize,
    uniform_random_maps,
)
from examples.mnist.model import CLASSES
from examples.mnist.report import Setup, VitSetup, write_report
from examples.mnist.train import (
    DEFAULT_WEIGHTS,
    Checkpoint,
    History,
    accuracy,
    count_parameters,
    load,
    predict,
    save,
    train,
)
from examples.mnist.vit import DEFAULT_VIT_WEIGHTS, MnistViT

BATCH_SIZE = 128
VIT_EPOCHS = 4
VIT_LR = 0.003


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.mnist", description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("mnist-report"),
        help="folder for report.md, the figures and the weights",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_ROOT,
        help="folder holding the four MNIST .gz files and SHA256SUMS",
    )
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="skip training and use the shipped weights (or --weights)",
    )
    parser.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="checkpoint to load with --no-train"
    )
    parser.add_argument(
        "--vit-weights",
        type=Path,
        default=DEFAULT_VIT_WEIGHTS,
        help="the vision transformer's checkpoint to load with --no-train",
    )
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument(
        "--vit-epochs", type=int, default=VIT_EPOCHS, help="epochs of the vision transformer"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--limit-train",
        type=int,
        default=None,
        help="train on the first N training images only (smoke runs)",
    )
    parser.add_argument(
        "--limit-test",
        type=int,
        default=None,
        help="measure and explain the first N test images only",
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        default=1000,
        help="test images scored by every method and metric",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="score every camkit method (not only the main ones) and train a vision "
        "transformer for LeGrad: 15 to 30 minutes instead of a few",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def _limit(split: Split, n: int | None) -> Split:
    return split if n is None else Split(split.images[:n], split.labels[:n])


def explain_all(
    checkpoint: Checkpoint,
    images: torch.Tensor,
    predicted: torch.Tensor,
    layer: str,
    progress: bool,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Grad-CAM maps of the predicted class for every image, in batches."""
    cam = GradCAM(checkpoint.model, layer)
    chunks = []
    for start in tqdm(
        range(0, len(images), batch_size),
        desc=f"Grad-CAM {layer}",
        unit="batch",
        disable=not progress,
        mininterval=0.5,
    ):
        stop = start + batch_size
        chunks.append(cam(checkpoint.prepare(images[start:stop]), predicted[start:stop]))
    return torch.cat(chunks)


def localization(
    checkpoint: Checkpoint, test_set: Split, predicted: torch.Tensor, seed: int, progress: bool
) -> dict[str, dict[str, list[float]]]:
    """Stroke localization of both conv layers' maps and of the two baseline maps."""
    images = test_set.images
    size = tuple(images.shape[2:])
    maps = {
        layer: explain_all(checkpoint, images, predicted, layer, progress)
        for layer in (figures.LAYER, figures.FIRST_LAYER)
    }
    maps["uniform random"] = uniform_random_maps(len(predicted), size, seed=seed)
    maps["centre Gaussian"] = centre_gaussian_maps(len(predicted), size)
    strokes = stroke_mask(images)
    return {name: summarize(localize(m, strokes), test_set.labels) for name, m in maps.items()}


def make_figures(
    checkpoint: Checkpoint,
    history: History,
    scores: Scores,
    test_set: Split,
    predicted: torch.Tensor,
    fig_dir: Path,
) -> dict[str, Path]:
    """Every figure of the report but the sanity checks', keyed as the report links them."""
    images, labels = test_set.images, test_set.labels
    made = {
        "curves": figures.training_curves(history, fig_dir / "training_curves.png"),
        "confusion": figures.confusion_matrix(scores, fig_dir / "confusion_matrix.png"),
        "discrimination": figures.class_discrimination(
            checkpoint, images[0], fig_dir / "class_discrimination.png"
        ),
        "mistakes": figures.mistakes(
            checkpoint, images, labels, predicted, fig_dir / "mistakes.png"
        ),
        "counterfactual": figures.counterfactual(
            checkpoint, images, predicted, fig_dir / "counterfactual.png"
        ),
        "layers": figures.layers(checkpoint, images, fig_dir / "layers.png"),
    }
    for digit in range(CLASSES):
        made[f"class_{digit}"] = figures.class_grid(
            checkpoint, images, labels, digit, fig_dir / f"class_{digit}.png"
        )
    return made


def train_vit(
    train_set: Split, test_set: Split, *, epochs: int, seed: int, progress: bool
) -> tuple[Checkpoint, History]:
    """The vision transformer, trained with the ConvNet's recipe at a lower learning rate."""
    return train(
        train_set,
        test_set,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        lr=VIT_LR,
        seed=seed,
        progress=progress,
        build=MnistViT,
    )


def transformer(
    checkpoint: Checkpoint,
    vit_checkpoint: Checkpoint,
    vit_history: History,
    test_set: Split,
    evaluated: int,
    made: dict[str, Path],
    out: Path,
    progress: bool,
    trained_here: bool,
) -> tuple[VitSetup, Table]:
    """The vision transformer's accuracy, its LeGrad figure (added to ``made``) and its
    metric table on the first ``evaluated`` test images."""
    score = accuracy(vit_checkpoint, test_set)
    print(f"vision transformer: test accuracy {100 * score:.2f} %")
    images = test_set.images
    vit = raw_pixel_model(vit_checkpoint)
    with torch.no_grad():
        classes = vit(images[:8]).argmax(1)
    cams = vit_explainers(vit)
    shown: dict[str, Explainer] = {
        "LeGrad (ViT)": cams["LeGrad"],
        "Grad-CAM (ViT)": cams["Grad-CAM"],
        "Grad-CAM (ConvNet)": GradCAM(raw_pixel_model(checkpoint), LAYER),
    }
    made["transformer"] = figures.transformer_maps(
        shown, images[:8], classes, out / "figures" / "transformer.png"
    )
    table = score_all(vit_checkpoint, images[:evaluated], progress, vit_explainers)
    setup = VitSetup(
        parameters=count_parameters(vit_checkpoint.model),
        trained_here=trained_here,
        epochs=len(vit_history.loss),
        learning_rate=VIT_LR,
        train_seconds=vit_history.seconds,
        accuracy=score,
    )
    return setup, table


def browse_test_set(checkpoint: Checkpoint, test_set: Split, out: Path, progress: bool) -> Path:
    """The test set's Grad-CAM and Score-CAM maps (of each image's label) in two map stores,
    ``out/maps/``, and a page to look through them, ``out/viewer/index.html``."""
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(checkpoint.prepare(test_set.images), test_set.labels)
    loader = DataLoader(data, batch_size=256)
    shutil.rmtree(out / "maps", ignore_errors=True)  # this run's network: other maps than before
    stores = []
    for method in ("GradCAM", "ScoreCAM"):
        cam = getattr(camkit, method)(checkpoint.model, figures.LAYER)
        store = camkit.explain_dataset(cam, loader, out / "maps" / method.lower(), target="label",
                                       dtype="float16", progress=progress)  # fmt: skip
        assert store is not None
        stores.append(store)
    return camkit.view(
        stores[0],
        out / "viewer",
        images=lambda i: test_set.images[i],
        compare=stores[1],
        title=f"MNIST test set, {len(test_set.labels):,} digits: Grad-CAM and Score-CAM",
        progress=progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.quiet
    out = args.out
    (out / "figures").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    test_set = _limit(load_split("test", args.data), args.limit_test)

    vit: tuple[Checkpoint, History] | None = None
    if args.no_train:
        checkpoint, history = load(args.weights)
        if args.full:
            vit = load(args.vit_weights, MnistViT)
        train_images = 60_000
    else:
        train_set = _limit(load_split("train", args.data), args.limit_train)
        checkpoint, history = train(
            train_set,
            test_set,
            epochs=args.epochs,
            batch_size=BATCH_SIZE,
            seed=args.seed,
            progress=progress,
        )
        save(checkpoint, history, out / "weights.pt")
        if args.full:
            print("training the vision transformer, the network for LeGrad")
            vit = train_vit(
                train_set, test_set, epochs=args.vit_epochs, seed=args.seed, progress=progress
            )
            print(f"vision transformer training time: {vit[1].seconds:.1f} s")
            save(*vit, out / "vit-weights.pt")
        train_images = len(train_set.labels)
    model = checkpoint.model

    predicted = predict(checkpoint, test_set.images).argmax(1)
    scores = classification_scores(predicted, test_set.labels)
    print(f"test accuracy: {100 * scores.accuracy:.2f} % on {len(predicted):,} images")
    if history.seconds:
        print(f"training time: {history.seconds:.1f} s for {len(history.loss)} epochs")

    results = localization(checkpoint, test_set, predicted, args.seed, progress)
    main_mass, area = results[figures.LAYER]["mass"][-1], results[figures.LAYER]["area"][-1]
    print(f"Grad-CAM mass on strokes: {main_mass:.1f} % (strokes cover {area:.1f} %)")
    images, labels = test_set.images, test_set.labels
    made = make_figures(checkpoint, history, scores, test_set, predicted, out / "figures")
    evaluated = min(args.eval_images, len(labels))
    table = score_all(
        checkpoint, images[:evaluated], progress, explainers if args.full else main_explainers
    )
    if table.comparison is not None:
        made["method_comparison"] = figures.comparison(
            table.comparison, out / "figures" / "method_comparison.png"
        )
    sanity = sanity_checks(checkpoint, images[: min(100, len(labels))])
    made["sanity_curves"] = figures.sanity_curves(sanity, out / "figures" / "sanity_curves.png")
    made["sanity_maps"] = figures.sanity_maps(sanity, images, out / "figures" / "sanity_maps.png")
    viewer = browse_test_set(checkpoint, test_set, out, progress)
    print(f"a page to look through the test set's maps: {viewer}")
    vit_setup, vit_table = None, None
    if vit is not None:
        vit_setup, vit_table = transformer(
            checkpoint,
            *vit,
            test_set,
            evaluated,
            made,
            out,
            progress,
            trained_here=not args.no_train,
        )
    setup = Setup(
        parameters=count_parameters(model),
        trained_here=not args.no_train,
        epochs=len(history.loss),
        batch_size=BATCH_SIZE,
        train_seconds=history.seconds,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        train_images=train_images,
        test_images=len(labels),
    )
    report = write_report(
        out,
        scores,
        setup,
        results,
        made,
        figures.LAYER,
        figures.FIRST_LAYER,
        table,
        sanity,
        evaluated,
        vit_setup,
        vit_table,
        full=args.full,
    )
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``camkit`` command: maps and metrics for image files, from the shell::

    camkit explain images/ --model torchvision:resnet18 --weights r18.pt --layer layer4 \\
        --store maps/ --overlays overlays/
    camkit evaluate images/ --model torchvision:resnet18 --weights r18.pt --layer layer4 \\
        --metrics deletion insertion
    torchrun --nproc_per_node=4 -m camkit explain ...     # the same, on 4 processes

Inputs are image files, folders of images, or ImageFolder trees (a folder of
class folders: each image's label is its folder's index in sorted order).
``camkit explain --help`` and ``camkit evaluate --help`` list every option.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import camkit
from camkit._engine.distributed import Rank, process_group
from camkit.errors import CamkitError, CamkitTypeError, CamkitValueError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
METHODS = (
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "EigenCAM",
    "ScoreCAM",
    "AblationCAM",
)
METRICS = ("average_drop", "increase_in_confidence", "deletion", "insertion", "road")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFiles(Dataset[tuple[Tensor, int]]):
    """Image files as a dataset of ``(x, label)``: standardized ``(C, H, W)`` float tensors.

    Args:
        inputs: Image files, folders of images, or ImageFolder trees (class
            folders; the label is the class folder's index in sorted order, -1
            for images outside one).
        size: ``(H, W)`` to resize every image to, or ``None`` to keep sizes (then
            they must all be equal to be batched).
        channels: 1 (grayscale) or 3 (RGB).
        mean: Per-channel means to subtract (one value for all channels, or one each).
        std: Per-channel standard deviations to divide by.
    """

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        *,
        size: tuple[int, int] | None = None,
        channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.files, self.labels, self.names, self.classes = _collect(inputs)
        if channels not in (1, 3):
            raise CamkitValueError(f"--channels: got {channels}; allowed: 1, 3")
        for name, values in (("--mean", mean), ("--std", std)):
            if len(values) not in (1, channels):
                raise CamkitValueError(
                    f"{name}: got {len(values)} values; give 1 or {channels} (one per channel)"
                )
        if any(s <= 0 for s in std):
            raise CamkitValueError(f"--std: got {list(std)}; allowed: positive numbers")
        self.size, self.channels = size, channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return (self.load(index) - self.mean) / self.std, self.labels[index]

    def load(self, index: int) -> Tensor:
        """Image ``index`` as a ``(C, H, W)`` float tensor in [0, 1], resized, not standardized."""
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                converted = image.convert("L" if self.channels == 1 else "RGB")
                if self.size is not None:
                    converted = converted.resize(self.size[::-1], Image.Resampling.BILINEAR)
                array = np.asarray(converted, dtype=np.float32) / 255.0
        except OSError as error:
            raise CamkitValueError(
                f"inputs: cannot read {str(path)!r} as an image: {error}"
            ) from error
        pixels = torch.from_numpy(array)
        return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _collect(
    inputs: Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], list[int], list[str], list[str]]:
    """Files, labels, output names (relative paths) and class names of the inputs."""
    files: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    classes: list[str] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise CamkitValueError(
                    f"inputs: {str(path)!r} is not an image file (allowed: "
                    f"{', '.join(IMAGE_SUFFIXES)})"
                )
            files.append(path)
            labels.append(-1)
            names.append(path.name)
        elif path.is_dir():
            folders = sorted(d for d in path.iterdir() if d.is_dir() and _images_in(d))
            loose = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for label, folder in enumerate(folders):  # an ImageFolder tree
                classes.append(folder.name)
                for image in _images_in(folder):
                    files.append(image)
                    labels.append(label)
                    names.append(str(image.relative_to(path)))
            for image in loose:
                files.append(image)
                labels.append(-1)
                names.append(image.name)
        else:
            raise CamkitValueError(f"inputs: {str(path)!r} does not exist")
    if not files:
        raise CamkitValueError(f"inputs: found no image files in {[str(i) for i in inputs]}")
    return files, labels, names, classes


def load_model(spec: str, weights: str | None = None) -> nn.Module:
    """Build a model from ``spec`` and load ``weights`` into it.

    ``spec`` is ``torchvision:NAME`` (random weights) or ``package.module:factory``
    (importable from the current folder too, as under ``python -m``); ``weights``
    is a state_dict file (or a checkpoint dict holding one as ``"state_dict"``),
    read with ``weights_only=True``.

    Raises:
        CamkitValueError: For a malformed spec, an unknown model, a missing or
            unreadable weight file, or weights that do not fit the model.
    """
    source, _, name = spec.partition(":")
    if not source or not name:
        raise CamkitValueError(
            f"--model: got {spec!r}; allowed: torchvision:NAME (e.g. torchvision:resnet18) or "
            f"package.module:factory"
        )
    if source == "torchvision":
        model = _torchvision_model(name)
    else:
        if os.getcwd() not in sys.path:  # as under python -m: modules of the current folder
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(source)
        except ImportError as error:
            raise CamkitValueError(f"--model: cannot import {source!r}: {error}") from error
        factory = getattr(module, name, None)
        if not callable(factory):
            raise CamkitValueError(f"--model: {source!r} has no callable {name!r}")
        try:
            model = factory()
        except Exception as error:
            raise CamkitValueError(
                f"--model: {spec}() failed: {type(error).__name__}: {error}; the factory must "
                f"build the model with no arguments"
            ) from error
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(
                f"--model: {spec} returned a {type(model).__name__}, not a torch.nn.Module"
            )
    if weights is not None:
        model.load_state_dict(_state_dict(weights, model))
    return model.eval()


def _torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision  # type: ignore[import-untyped]
    except ImportError as error:
        raise CamkitValueError(
            "--model: torchvision:NAME needs torchvision; pip install torchvision"
        ) from error
    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CamkitValueError(f"--model: torchvision has no model {name!r}{hint}")
    model: nn.Module = torchvision.models.get_model(name, weights=None)
    return model


def _state_dict(path: str, model: nn.Module) -> dict[str, Tensor]:
    if not Path(path).is_file():
        raise CamkitValueError(f"--weights: {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CamkitValueError(
            f"--weights: {path!r} is not a state_dict that loads safely (weights_only=True): "
            f"{type(error).__name__}: {str(error).splitlines()[0]}"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint that holds the state_dict with other things
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CamkitValueError(
            f"--weights: {path!r} holds a {type(state).__name__}, not a state_dict of tensors"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CamkitValueError(
            f"--weights: {path!r} does not fit the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    shapes = [k for k, v in model.state_dict().items() if tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise CamkitValueError(f"--weights: {path!r} has other shapes for {shapes[:5]}")
    return state


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or H,W of positive ints, got {text!r}")
    return (values[0], values[-1])


def _target(text: str) -> str | int:
    if text in ("predicted", "label"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'predicted', 'label' or a class index, got {text!r}"
        ) from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders, or ImageFolder trees")
    parser.add_argument(
        "--model",
        required=True,
        help="torchvision:NAME (random weights unless --weights) or package.module:factory",
    )
    parser.add_argument("--weights", help="a state_dict file, loaded with weights_only=True")
    parser.add_argument(
        "--layer", required=True, help="the layer to explain, e.g. layer4 or features.relu"
    )
    parser.add_argument("--method", choices=METHODS, default="GradCAM", help="the CAM method")
    parser.add_argument(
        "--target",
        type=_target,
        default="predicted",
        help="'predicted' (default), 'label' (the ImageFolder class) or a class index",
    )
    parser.add_argument(
        "--size", type=_size, default=None, help="resize every image to N x N or H,W"
    )
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 or 3")
    parser.add_argument(
        "--mean",
        type=float,
        nargs="+",
        default=None,
        help="standardization mean: one value, or one per channel (default: ImageNet's for 3 "
        "channels, 0.5 for 1)",
    )
    parser.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=None,
        help="standardization std: one value, or one per channel (default: ImageNet's for 3 "
        "channels, 0.5 for 1)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, or auto (the rank's GPU if any)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parser() -> argparse.ArgumentParser:
    """The ``camkit`` command's argument parser."""
    main = argparse.ArgumentParser(
        prog="camkit",
        description="Class activation maps and their metrics for image files, from the shell. "
        "Runs under torchrun too (torchrun --nproc_per_node=P -m camkit ...).",
    )
    commands = main.add_subparsers(dest="command", required=True)
    explain = commands.add_parser(
        "explain",
        help="write maps (a resumable map store) and/or overlay PNGs",
        description="Explain every image and write a map store (--store) and/or overlays.",
    )
    _common(explain)
    explain.add_argument("--store", type=Path, help="folder for the map store (resumable)")
    explain.add_argument(
        "--overlays", type=Path, help="folder for overlay PNGs, named after the inputs"
    )
    explain.add_argument(
        "--dtype", choices=("float32", "float16", "uint8"), default="float32", help="map storage"
    )
    explain.add_argument(
        "--resolution",
        choices=("input", "layer"),
        default="input",
        help="store maps at the input's or the layer's resolution",
    )
    evaluate = commands.add_parser(
        "evaluate",
        help="score the maps with faithfulness metrics",
        description="Score the method's maps of every image with camkit.metrics.",
    )
    _common(evaluate)
    evaluate.add_argument(
        "--metrics", nargs="+", choices=METRICS, default=["deletion", "insertion"],
        help="metrics to compute",
    )  # fmt: skip
    evaluate.add_argument("--json", type=Path, help="also write the results as JSON here")
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``camkit`` command; return its exit status."""
    arguments = parser().parse_args(argv)
    try:
        with process_group() as team:  # one process group for the whole command under torchrun
            return _run(arguments, team)
    except CamkitError as error:
        print(f"camkit {arguments.command}: error: {error}", file=sys.stderr)
        return 2


def _run(arguments: argparse.Namespace, team: Rank) -> int:
    for option in ("batch_size", "workers"):
        value = getattr(arguments, option)
        if value < (1 if option == "batch_size" else 0):
            raise CamkitValueError(f"--{option.replace('_', '-')}: got {value}")
    channels = arguments.channels
    mean = arguments.mean or (IMAGENET_MEAN if channels == 3 else (0.5,))
    std = arguments.std or (IMAGENET_STD if channels == 3 else (0.5,))
    dataset = ImageFiles(
        arguments.inputs, size=arguments.size, channels=channels, mean=mean, std=std
    )
    model = load_model(arguments.model, arguments.weights)
    device = _device(arguments.device)
    model.to(device)
    cam = getattr(camkit, arguments.method)(model, arguments.layer)
    loader = DataLoader(dataset, batch_size=arguments.batch_size, num_workers=arguments.workers)
    target = None if arguments.target == "predicted" else arguments.target
    if target == "label" and -1 in dataset.labels:
        raise CamkitValueError(
            "--target: 'label' needs ImageFolder trees (class folders); some inputs have no class"
        )
    if arguments.command == "explain":
        return _explain(arguments, dataset, cam, loader, target, device, (mean, std), team)
    return _evaluate(arguments, model, cam, loader, target, device, team)


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _explain(
    arguments: argparse.Namespace,
    dataset: ImageFiles,
    cam: camkit.Explainer,
    loader: DataLoader[Any],
    target: Any,
    device: torch.device,
    standardization: tuple[Sequence[float], Sequence[float]],
    team: Rank,
) -> int:
    if arguments.store is None and arguments.overlays is None:
        raise CamkitValueError("--store, --overlays: give at least one place to write to")
    upsample = arguments.resolution == "input"
    if arguments.overlays is not None and not upsample:
        raise CamkitValueError(
            "--overlays: overlays need maps at the input's resolution; drop --resolution layer"
        )
    on_batch = None
    if arguments.overlays is not None:
        on_batch = partial(_save_overlays, dataset, arguments.overlays, *standardization)
    store = camkit.explain_dataset(
        cam,
        loader,
        arguments.store,
        target=target,
        dtype=arguments.dtype,
        upsample=upsample,
        device=device,
        progress=not arguments.no_progress,
        on_batch=on_batch,
    )
    if team.main:
        written = [f"{len(store)} maps in {arguments.store}"] if store is not None else []
        if arguments.overlays is not None:
            written.append(f"overlays in {arguments.overlays}")
        print(f"camkit explain: wrote {' and '.join(written)}")
    return 0


def _save_overlays(
    dataset: ImageFiles,
    folder: Path,
    mean: Sequence[float],
    std: Sequence[float],
    indices: Tensor,
    x: Tensor,
    result: camkit.CAMResult,
) -> None:
    from PIL import Image

    from camkit.plot import blend

    for index, image, cam in zip(indices.tolist(), x.cpu(), result.maps.cpu(), strict=True):
        rgb = blend(image, cam, mean=list(mean), std=list(std))
        path = (folder / dataset.names[index]).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)


def _evaluate(
    arguments: argparse.Namespace,
    model: nn.Module,
    cam: camkit.Explainer,
    loader: DataLoader[Any],
    target: Any,
    device: torch.device,
    team: Rank,
) -> int:
    if isinstance(target, int):
        raise CamkitValueError("--target: evaluate explains 'predicted' or 'label' classes")
    chosen: dict[str, Callable[..., camkit.metrics.MetricResult]] = {
        name: getattr(camkit.metrics, name) for name in arguments.metrics
    }
    results = camkit.metrics.evaluate(
        model,
        cam,
        loader,
        chosen,
        target=target or "predicted",
        device=device,
        progress=not arguments.no_progress,
    )
    if team.main:
        summaries = {name: r.summary for name, r in results.items()}
        count = len(next(iter(results.values())).values)
        print(f"camkit evaluate: {arguments.method} at {arguments.layer} on {count} images")
        width = max(len(name) for name in summaries)
        for name, summary in summaries.items():
            values = [summary] if isinstance(summary, float) else summary
            print(f"  {name:<{width}}  {', '.join(f'{v:.4f}' for v in values)}")
        if arguments.json is not None:
            arguments.json.write_text(json.dumps({"images": count, "metrics": summaries}))
    return 0


if __name__ == "__main__":  # python -m camkit.cli
    sys.exit(main())

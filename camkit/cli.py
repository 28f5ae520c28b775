"""The ``camkit`` command: maps and metrics for image files, from the shell::

    camkit explain images/ --model torchvision:resnet18 --weights r18.pt --layer layer4 \\
        --store maps/ --overlays overlays/
    camkit evaluate images/ --model torchvision:resnet18 --weights r18.pt --layer layer4 \\
        --metrics deletion insertion
    torchrun --nproc_per_node=4 -m camkit explain ...     # the same, on 4 processes
    camkit verify maps/                                    # check a store's every shard
    camkit view maps/ images/ --out maps-site/             # a page to look through the maps

Inputs are image files, folders of images, or ImageFolder trees (a folder of
class folders: each image's label is its folder's index in sorted order).
Each image is known by its path relative to the input (relative to the inputs'
common folder when there are several): the store records it
(``MapStore(...)[i].source``) and the overlays mirror it.
``camkit explain --help``, ``camkit evaluate --help`` and ``camkit verify --help``
list every option.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import camkit
from camkit._engine.distributed import Rank, process_group
from camkit._engine.option_checks import device_missing
from camkit._store.files import output_folder
from camkit.errors import CamkitError, CamkitStorageError, CamkitTypeError, CamkitValueError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
METHODS = (
    "GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "GradCAMElementWise",
    "FinerCAM", "ShapleyCAM", "RefineCAM", "EigenCAM", "EigenGradCAM", "SegEigenCAM",
    "KPCACAM", "FEM", "ScoreCAM", "SSCAM", "ISCAM", "SmoothGradCAMPlusPlus", "AblationCAM",
    "RandomCAM",
)  # fmt: skip
"""camkit's explainers that the command builds as ``Method(model, layer)``, their other
options at their defaults: those whose maps have one value per position, from one layer."""
SEEDED = ("SSCAM", "SmoothGradCAMPlusPlus", "RandomCAM")
"""Of :data:`METHODS`, those that draw random numbers: built with ``seed=--seed``, so that a
run gives the same maps again (and a stored run resumes)."""
METRICS = (
    "average_drop", "increase_in_confidence", "deletion", "insertion", "road",
    "faithfulness_estimate", "faithfulness_correlation", "monotonicity",
    "monotonicity_correlation", "region_perturbation", "selectivity", "irof", "infidelity",
    "non_sensitivity", "sufficiency", "consistency", "max_sensitivity", "avg_sensitivity",
    "local_lipschitz_estimate", "continuity", "relative_input_stability",
    "relative_output_stability", "random_logit",
)  # fmt: skip
"""camkit.metrics' metrics that take (model, x, maps, classes), by name, with their defaults."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFiles(Dataset[tuple[Tensor, int]]):
    """Image files as a dataset of ``(x, label)``: standardized ``(C, H, W)`` float tensors.

    Images load at their true values: 8-bit images divided by 255, 16-bit ones
    (``I;16`` PNG and TIFF) by 65535, floating-point ones (``F``) as they are.

    Args:
        inputs: Image files, folders of images, or ImageFolder trees (class
            folders; the label is the class folder's index in sorted order, -1
            for images outside one): one path, or a list of them.
        size: ``(H, W)`` to resize every image to, or ``None`` to keep sizes (then
            they must all be equal, which is checked from the files' headers).
        channels: 1 (grayscale) or 3 (RGB).
        mean: Per-channel means to subtract (one value for all channels, or one each).
        std: Per-channel standard deviations to divide by.
    """

    def __init__(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        size: tuple[int, int] | None = None,
        channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if isinstance(inputs, (str, os.PathLike)):  # one path (a str is a sequence too)
            inputs = [inputs]
        self.files, self.labels, self.names, self.classes = _collect(inputs)
        if channels not in (1, 3):
            raise CamkitValueError(f"--channels: got {channels}; allowed: 1, 3")
        for name, values in (("--mean", mean), ("--std", std)):
            if len(values) not in (1, channels):
                raise CamkitValueError(
                    f"{name}: got {len(values)} values; give 1 or {channels} (one per channel)"
                )
        if not all(math.isfinite(m) for m in mean):
            raise CamkitValueError(f"--mean: got {list(mean)}; allowed: finite numbers")
        if not all(0 < s < math.inf for s in std):
            raise CamkitValueError(f"--std: got {list(std)}; allowed: positive finite numbers")
        self.size, self.channels = size, channels
        if size is None:
            _check_one_size(self.files)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def options(self) -> dict[str, Any]:
        """How the images are prepared: the size, the channels and the standardization."""
        return {
            "size": None if self.size is None else list(self.size),
            "channels": self.channels,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return (self.load(index) - self.mean) / self.std, self.labels[index]

    def load(self, index: int) -> Tensor:
        """Image ``index`` as a ``(C, H, W)`` float tensor in [0, 1], resized, not standardized."""
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                array = _pixels(image, self.channels, self.size)
        except OSError as error:
            raise CamkitValueError(
                f"inputs: cannot read {str(path)!r} as an image: {error}"
            ) from error
        pixels = torch.from_numpy(array)
        return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


_WIDE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}
"""Pillow's modes of 16-bit images (a 16-bit PNG may open as ``I``), and their full scale."""


def _pixels(image: Any, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """The image's pixels as float32 ``(H, W)`` or ``(H, W, 3)`` in [0, 1] (true values)."""
    from PIL import Image

    if image.mode in _WIDE or image.mode == "F":  # one channel, more than 8 bits
        scale = _WIDE.get(image.mode, 1.0)
        values = np.asarray(image, dtype=np.float32) / np.float32(scale)
        if size is not None:
            resized = Image.fromarray(values, mode="F").resize(
                size[::-1], Image.Resampling.BILINEAR
            )
            values = np.array(resized, dtype=np.float32)  # a copy: writable
        return values if channels == 1 else np.repeat(values[..., None], 3, axis=2)
    converted = image.convert("L" if channels == 1 else "RGB")
    if size is not None:
        converted = converted.resize(size[::-1], Image.Resampling.BILINEAR)
    return np.asarray(converted, dtype=np.float32) / np.float32(255.0)


def _check_one_size(files: Sequence[Path]) -> None:
    """Without ``--size``, every image must have the first one's size (read from headers)."""
    from PIL import Image

    first: tuple[int, int] | None = None
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as error:
            raise CamkitValueError(
                f"inputs: cannot read {str(path)!r} as an image: {error}"
            ) from error
        if first is None:
            first = (height, width)
        elif (height, width) != first:
            raise CamkitValueError(
                f"inputs: images of different sizes ({str(files[0])!r} is {first[0]}x{first[1]}, "
                f"{str(path)!r} is {height}x{width}); resize them all with --size H,W"
            )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _collect(
    inputs: Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], list[int], list[str], list[str]]:
    """Files, labels, source names and class names of the inputs.

    A file's source name is its path relative to its input folder (its own name
    for a file given directly); with several inputs, relative to their common
    folder instead, so that ``a/img0.png`` and ``b/img0.png`` keep apart.
    """
    files: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    roots: list[Path] = []
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
            roots.append(path.parent)
        elif path.is_dir():
            folders = sorted(d for d in path.iterdir() if d.is_dir() and _images_in(d))
            loose = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for label, folder in enumerate(folders):  # an ImageFolder tree
                classes.append(folder.name)
                for image in _images_in(folder):
                    files.append(image)
                    labels.append(label)
                    roots.append(path)
            for image in loose:
                files.append(image)
                labels.append(-1)
                roots.append(path)
        else:
            raise CamkitValueError(f"inputs: {str(path)!r} does not exist")
    if not files:
        raise CamkitValueError(f"inputs: found no image files in {[str(i) for i in inputs]}")
    return files, labels, _source_names(files, roots, len(inputs)), classes


def _source_names(files: list[Path], roots: list[Path], inputs: int) -> list[str]:
    absolute = [f.resolve() for f in files]
    if inputs > 1:
        common = Path(os.path.commonpath([str(r.resolve()) for r in roots]))
        names = [a.relative_to(common).as_posix() for a in absolute]
    else:
        names = [
            a.relative_to(r.resolve()).as_posix() for a, r in zip(absolute, roots, strict=True)
        ]
    seen: dict[str, Path] = {}
    for name, file in zip(names, files, strict=True):
        if name in seen:
            raise CamkitValueError(
                f"inputs: {str(file)!r} is given twice (also as {str(seen[name])!r}); "
                f"give each image once"
            )
        seen[name] = file
    return names


def overlay_name(source: str) -> str:
    """The overlay PNG's path for an image's source name: the same path, with ``.png``
    appended unless the image is a PNG (``x.jpg`` gives ``x.jpg.png``, ``x.png`` stays)."""
    return source if source.lower().endswith(".png") else source + ".png"


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


LARGEST_SIDE = 32768
"""The largest ``--size`` side, in pixels."""

LARGEST_COUNT = 2**31 - 1
"""The largest ``--batch-size`` and class index."""


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}") from None
    if len(values) not in (1, 2) or not all(1 <= v <= LARGEST_SIDE for v in values):
        raise argparse.ArgumentTypeError(
            f"expected N or H,W of ints from 1 to {LARGEST_SIDE}, got {text!r}"
        )
    return (values[0], values[-1])


def _path(text: str) -> Path:
    if not text.strip():  # Path("") is the current folder: a store written among its files
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _target(text: str) -> str | int:
    if text in ("predicted", "label"):
        return text
    try:
        index = int(text)
    except ValueError:
        index = -1
    if not 0 <= index <= LARGEST_COUNT:
        raise argparse.ArgumentTypeError(
            f"expected 'predicted', 'label' or a class index (an int from 0), got {text!r}"
        )
    return index


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders, or ImageFolder trees")
    parser.add_argument(
        "--model",
        required=True,
        help="torchvision:NAME (random weights unless --weights) or package.module:factory",
    )
    parser.add_argument(
        "--weights",
        help="a state_dict file, loaded with weights_only=True (without it the weights are "
        "random, drawn with --seed)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the seed of the random weights when --weights is not given, and of the "
        f"random draws of {', '.join(SEEDED)} (default 0): the same weights and maps on "
        "every run, so a stored run can resume",
    )
    parser.add_argument(
        "--layer", help="the layer to explain, e.g. layer4 or features.relu (required)"
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
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (0 to the CPUs)"
    )
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
    explain.add_argument("--store", type=_path, help="folder for the map store (resumable)")
    explain.add_argument(
        "--overlays", type=_path, help="folder for overlay PNGs, named after the inputs"
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
    evaluate.add_argument("--json", type=_path, help="also write the results as JSON here")
    evaluate.add_argument(
        "--methods", nargs="+", choices=METHODS,
        help="compare several methods (with --layers, every method at every layer): a table "
        "of means with bootstrap intervals and ranks, beside random maps",
    )  # fmt: skip
    evaluate.add_argument(
        "--layers", nargs="+", help="compare several layers (with --methods, every pair)"
    )
    evaluate.add_argument("--csv", type=_path, help="with --methods/--layers: write the table")
    evaluate.add_argument(
        "--figure", type=_path, help="with --methods/--layers: draw the comparison (PNG)"
    )
    verify = commands.add_parser(
        "verify",
        help="check every shard of a map store (sizes, checksums, shapes, indices)",
        description="Check every shard of a map store written by camkit explain or "
        "camkit.explain_dataset. Exit status 0: intact (complete or not); 1: damaged shards "
        "(rerun the same command to compute them again); 2: no store, or a damaged manifest.",
    )
    verify.add_argument("store", type=_path, help="the store's folder")
    view = commands.add_parser(
        "view",
        help="write a page to look through a map store (a static site: open its index.html)",
        description="Write a self-contained static site (HTML, script, thumbnails; no server, "
        "no network) to look through a map store: sort and filter its samples, compare two "
        "stores, see each class's mean map. Rerunning it writes only what changed.",
    )
    view.add_argument("store", type=_path, help="the store's folder")
    view.add_argument("--out", type=_path, required=True, help="the folder to write the site to")
    view.add_argument(
        "inputs",
        nargs="*",
        help="the inputs the store was written from (as given to camkit explain), to show "
        "each map over its image; without them the page shows the maps alone",
    )
    view.add_argument("--compare", type=_path, help="a second store of the same images")
    view.add_argument("--thumb", type=int, default=80, help="thumbnail size in pixels")
    view.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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


def _check_output_file(option: str, path: Path | None) -> None:
    """Refuse, before any work, a file the command could not write at the end."""
    if path is None:
        return
    if path.is_dir():
        raise CamkitValueError(f"{option}: {str(path)!r} is a folder; give a file's path")
    if not path.parent.is_dir():
        raise CamkitValueError(
            f"{option}: the folder of {str(path)!r} does not exist; create it first"
        )


def _written(option: str, path: Path, write: Callable[[Path], object]) -> None:
    """``write(path)``, with camkit's error if the file cannot be written."""
    try:
        write(path)
    except OSError as error:
        raise CamkitStorageError(
            f"{option}: cannot write {str(path)!r} ({type(error).__name__}: {error})"
        ) from error


def _cpus() -> int:
    """The CPUs this process may use (its affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _run(arguments: argparse.Namespace, team: Rank) -> int:
    if arguments.command == "verify":
        return _verify(arguments.store) if team.main else 0
    if arguments.command == "view":
        output_folder(arguments.out, "--out")
        return _view(arguments) if team.main else 0
    if not 1 <= arguments.batch_size <= LARGEST_COUNT:
        raise CamkitValueError(
            f"--batch-size: got {arguments.batch_size}; allowed: 1 to {LARGEST_COUNT}"
        )
    for option in ("json", "csv", "figure"):
        _check_output_file(f"--{option}", getattr(arguments, option, None))
    for option in ("store", "overlays"):
        if getattr(arguments, option, None) is not None:
            output_folder(getattr(arguments, option), f"--{option}")
    cpus = _cpus()
    if not 0 <= arguments.workers <= cpus:  # more only compete for the CPUs, and each holds memory
        raise CamkitValueError(
            f"--workers: got {arguments.workers}; allowed: 0 (load in this process) to {cpus} "
            f"(the CPUs this process may use)"
        )
    channels = arguments.channels
    mean = arguments.mean or (IMAGENET_MEAN if channels == 3 else (0.5,))
    std = arguments.std or (IMAGENET_STD if channels == 3 else (0.5,))
    dataset = ImageFiles(
        arguments.inputs, size=arguments.size, channels=channels, mean=mean, std=std
    )
    device = _device(arguments.device)
    if arguments.weights is None:  # random weights, the same on every run: a store resumes
        torch.manual_seed(arguments.seed)
        if team.main:
            print(
                f"camkit {arguments.command}: no --weights: the model's weights are random "
                f"(seed {arguments.seed})",
                file=sys.stderr,
            )
    model = load_model(arguments.model, arguments.weights)
    model.to(device)
    comparing = arguments.command == "evaluate" and (arguments.methods or arguments.layers)
    if arguments.layer is None and not (comparing and arguments.layers):
        raise CamkitValueError("--layer: name the layer to explain, e.g. --layer layer4")
    cam = None if comparing else _explainer(arguments.method, model, arguments.layer, arguments)
    loader = DataLoader(dataset, batch_size=arguments.batch_size, num_workers=arguments.workers)
    target = None if arguments.target == "predicted" else arguments.target
    if target == "label" and -1 in dataset.labels:
        raise CamkitValueError(
            "--target: 'label' needs ImageFolder trees (class folders); some inputs have no class"
        )
    if comparing:
        return _compare(arguments, model, loader, target, device, team)
    assert cam is not None
    if arguments.command == "explain":
        return _explain(arguments, dataset, cam, loader, target, device, (mean, std), team)
    return _evaluate(arguments, model, cam, loader, target, device, team)


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CamkitValueError(
            f"--device: got {name!r}; allowed: cpu, cuda, cuda:N, mps, or auto"
        ) from error
    missing = device_missing(device)
    if missing:
        raise CamkitValueError(
            f"--device: got {name!r}, but {missing}; allowed: cpu, auto (a GPU if there is "
            f"one), or a device it has"
        )
    return device


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
    overlays = None
    if arguments.overlays is not None:
        overlays = _Overlays(dataset, arguments.overlays, *standardization)
    store = camkit.explain_dataset(
        cam,
        loader,
        arguments.store,
        target=target,
        dtype=arguments.dtype,
        upsample=upsample,
        device=device,
        progress=not arguments.no_progress,
        on_batch=overlays,
        sources=dataset.names,
        dataset_options=dataset.options(),
    )
    if overlays is not None and store is not None:  # those of samples this run did not explain
        overlays.from_store(store, team)
    if team.main:
        written = [f"{len(store)} maps in {arguments.store}"] if store is not None else []
        if arguments.overlays is not None:
            written.append(f"{len(dataset)} overlays in {arguments.overlays}")
        print(f"camkit explain: wrote {' and '.join(written)}")
    return 0


class _Overlays:
    """Writes each image's overlay PNG (at its source name, see :func:`overlay_name`): for
    the batches explained (as ``on_batch``), then, with a store, for the samples explained
    by an earlier run, from their stored maps."""

    def __init__(
        self, dataset: ImageFiles, folder: Path, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.dataset, self.folder = dataset, folder
        self.mean, self.std = list(mean), list(std)
        self.names = [overlay_name(n) for n in dataset.names]
        clash = len(set(self.names)) != len(self.names)
        if clash:
            raise CamkitValueError(
                "--overlays: two inputs would share an overlay name (such as x.jpg and "
                "x.jpg.png); rename one"
            )
        self.written: set[int] = set()

    def __call__(self, indices: Tensor, x: Tensor, result: camkit.CAMResult) -> None:
        for index, image, cam in zip(indices.tolist(), x.cpu(), result.maps.cpu(), strict=True):
            self._save(index, image, cam)

    def from_store(self, store: camkit.MapStore, team: Rank) -> None:
        """The overlays of stored samples this run did not explain (this rank's share)."""
        rest = [i for i in store.indices if i not in self.written]
        for index in rest[team.rank :: team.size]:
            self._save(index, self.dataset[index][0], store.map(index))

    def _save(self, index: int, image: Tensor, cam: Tensor) -> None:
        from PIL import Image

        from camkit.plot import blend

        rgb = blend(image, cam, mean=self.mean, std=self.std)
        path = self.folder / self.names[index]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path, format="PNG")
        self.written.add(index)


def _explainer(
    method: str, model: nn.Module, layer: str, arguments: argparse.Namespace
) -> camkit.Explainer:
    """``method`` (one of :data:`METHODS`) of ``model`` at ``layer``, seeded by ``--seed``
    if it draws random numbers."""
    seeded = {"seed": arguments.seed} if method in SEEDED else {}
    explainer: camkit.Explainer = getattr(camkit, method)(model, layer, **seeded)
    return explainer


def _compare(
    arguments: argparse.Namespace,
    model: nn.Module,
    loader: DataLoader[Any],
    target: Any,
    device: torch.device,
    team: Rank,
) -> int:
    if isinstance(target, int):
        raise CamkitValueError("--target: evaluate explains 'predicted' or 'label' classes")
    methods = arguments.methods or [arguments.method]
    layers = arguments.layers or [arguments.layer]
    candidates: dict[str, camkit.Explainer] = {
        f"{method} at {layer}": _explainer(method, model, layer, arguments)
        for method in methods
        for layer in layers
    }
    chosen = {name: getattr(camkit.metrics, name) for name in arguments.metrics}
    result = camkit.metrics.compare(
        model, loader, candidates, chosen, target=target or "predicted", device=device,
        progress=not arguments.no_progress,
    )  # fmt: skip
    if team.main:
        print(f"camkit evaluate: {len(candidates)} candidates and random maps")
        for metric in result.metrics:
            better = "higher" if result.higher_is_better[metric] else "lower"
            compared, total = result.coverage(metric)
            left = "" if compared == total else f"; compared on {compared} of {total}"
            print(f"  {metric} ({better} is better{left})")
            for name in result.ranking(metric):
                cell = result.cells[name, metric]
                print(f"    {cell.rank}. {name}: {cell.mean:.4f} [{cell.low:.4f}, {cell.high:.4f}]")
        for option, write in (("json", result.to_json), ("csv", result.to_csv),
                              ("figure", result.plot)):  # fmt: skip
            if getattr(arguments, option) is not None:
                _written(f"--{option}", getattr(arguments, option), write)
    return 0


def _view(arguments: argparse.Namespace) -> int:
    store = camkit.MapStore(arguments.store)
    images = classes = None
    if arguments.inputs:
        prepared = store.config.get("dataset_options") or {}
        size = prepared.get("size")
        channels = int(prepared.get("channels", 3))
        dataset = ImageFiles(  # loaded unstandardized: the mean and std are not used
            arguments.inputs,
            size=None if size is None else (int(size[0]), int(size[1])),
            channels=channels,
            mean=[0.0] * channels,
            std=[1.0] * channels,
        )
        if store.sources != dataset.names:
            raise CamkitValueError(
                f"inputs: the store {str(arguments.store)!r} was written from other images "
                f"({len(store.sources or [])} recorded, {len(dataset.names)} found); give "
                f"the inputs given to camkit explain"
            )
        images = dataset.load
        if store.config.get("target") == "label":  # the classes are the class folders
            classes = dataset.classes or None
    page = camkit.view(
        store,
        arguments.out,
        images=images,
        compare=arguments.compare,
        classes=classes,
        thumb=arguments.thumb,
        progress=not arguments.no_progress,
    )
    print(f"camkit view: wrote {page} (open it in a browser)")
    return 0


def _verify(folder: Path) -> int:
    store = camkit.MapStore(folder)
    check = store.verify()
    state = "complete" if store.complete else f"incomplete ({len(check.missing)} shards to write)"
    print(f"camkit verify: {folder}: {len(store)} maps in {check.checked} shards, {state}")
    for shard, problem in check.damaged.items():
        print(f"  shard {shard}: {problem}")
    for problem in check.problems:
        print(f"  {problem}")
    if not check.ok:
        print(
            f"camkit verify: {len(check.damaged) + len(check.problems)} damaged; rerun the "
            f"command that wrote {folder} (the same settings) to compute them again"
        )
        return 1
    print("camkit verify: every shard is intact")
    return 0


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
    if arguments.csv is not None or arguments.figure is not None:
        raise CamkitValueError(
            "--csv, --figure: they write a comparison; give --methods or --layers too"
        )
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
            rows = results[name].values.flatten(1) if results[name].values.dim() > 1 else (
                results[name].values[:, None])  # fmt: skip
            defined = int((~rows.isnan()).all(dim=1).sum())
            left = "" if defined == len(rows) else f"  (defined on {defined} of {len(rows)})"
            print(f"  {name:<{width}}  {', '.join(f'{v:.4f}' for v in values)}{left}")
        if arguments.json is not None:
            text = json.dumps({"images": count, "metrics": summaries})
            _written("--json", arguments.json, lambda path: path.write_text(text))
    return 0


if __name__ == "__main__":  # python -m camkit.cli
    sys.exit(main())

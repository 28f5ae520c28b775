"""Perturbation methods beside their peers: Ablation-CAM, Score-CAM, SS-CAM, IS-CAM.

    python benchmarks/perturbation.py            # resnet50 and the MNIST net, CPU, 2 threads
    python benchmarks/perturbation.py --cases mnist --rounds 5

Every implementation runs with the same batch size (``--batch-size`` copies per
forward pass) on the same input, in one process, interleaved in rounds; the table
gives the median seconds per call and, for each method, every implementation's time
as a ratio to camkit's default. SS-CAM and IS-CAM run ``--samples`` smoothing
samples (TorchCAM's ``num_samples``). The peers are those of the ``bench`` extra:
pytorch-grad-cam (Ablation-CAM, Score-CAM) and TorchCAM (Score-CAM, SS-CAM, IS-CAM).
The table is printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import camkit  # noqa: E402
from benchmarks.cases import Case  # noqa: E402
from examples.mnist.model import MnistNet  # noqa: E402

Call = Callable[[], object]


def build(name: str, images: int, size: int) -> Case:
    torch.manual_seed(0)
    if name == "mnist":
        model: nn.Module = MnistNet()
        x = torch.randn(images, 1, 28, 28)
        layer = "features.relu"
    else:
        import torchvision.models as tvm

        model = tvm.resnet50(weights=None)
        x = torch.randn(images, 3, size, size)
        layer = "layer4"
    model.eval()
    with torch.no_grad():
        classes = model(x).argmax(1)
    return Case(name, model, x, classes, layer)


def calls(case: Case, batch_size: int, samples: int) -> dict[str, dict[str, Call]]:
    """For each method, its implementations (camkit's default first)."""
    model, x, classes, layer = case.model, case.x, case.classes, case.layer
    top = {"mnist": 4, "resnet50": 256}[case.name]

    def ours(method: type, **options: object) -> Call:
        cam = method(model, layer, batch_size=batch_size, **options)
        return lambda: cam(x, classes)

    methods: dict[str, dict[str, Call]] = {
        "Ablation-CAM": {"camkit (network after the layer)": ours(camkit.AblationCAM)},
        "Score-CAM": {
            "camkit": ours(camkit.ScoreCAM),
            f"camkit, top_channels={top}": ours(camkit.ScoreCAM, top_channels=top),
        },
        "SS-CAM": {"camkit": ours(camkit.SSCAM, samples=samples, seed=0)},
        "IS-CAM": {"camkit": ours(camkit.ISCAM, samples=samples)},
    }
    if case.name == "mnist":  # on resnet50 it takes as long as pytorch-grad-cam's
        methods["Ablation-CAM"]["camkit, split_tail=False"] = ours(
            camkit.AblationCAM, split_tail=False
        )
    _add_pytorch_grad_cam(methods, case, batch_size)
    _add_torchcam(methods, case, batch_size, samples)
    return methods


def _add_pytorch_grad_cam(methods: dict[str, dict[str, Call]], case: Case, batch: int) -> None:
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in case.classes]
    layer = [case.model.get_submodule(case.layer)]

    def run(method: type, **options: object) -> Call:
        def call() -> object:
            with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
                cam = method(case.model, layer, **options)
                cam.batch_size = batch
                return cam(case.x, targets)

        return call

    methods["Ablation-CAM"]["pytorch-grad-cam"] = run(AblationCAM, batch_size=batch)
    methods["Score-CAM"]["pytorch-grad-cam"] = run(ScoreCAM)


def _add_torchcam(
    methods: dict[str, dict[str, Call]], case: Case, batch: int, samples: int
) -> None:
    from torchcam.methods import ISCAM, SSCAM, ScoreCAM

    classes = [int(c) for c in case.classes]
    shape = tuple(case.x.shape[1:])

    def run(method: type, **options: object) -> Call:
        def call() -> object:
            with method(
                case.model, case.layer, batch_size=batch, input_shape=shape, **options
            ) as ex:
                with torch.no_grad():
                    case.model(case.x)
                return ex(class_idx=classes)

        return call

    methods["Score-CAM"]["TorchCAM"] = run(ScoreCAM)
    methods["SS-CAM"]["TorchCAM"] = run(SSCAM, num_samples=samples)
    methods["IS-CAM"]["TorchCAM"] = run(ISCAM, num_samples=samples)


Times = dict[str, dict[str, list[float]]]


def measure(methods: dict[str, dict[str, Call]], rounds: dict[str, int]) -> Times:
    """Seconds per call of every implementation, ``rounds[method]`` times, interleaved: each
    round runs every implementation of every method that still has rounds to go."""
    times: Times = {m: {i: [] for i in c} for m, c in methods.items()}
    for r in range(max(rounds.values())):
        for method, implementations in methods.items():
            if r >= rounds[method]:
                continue
            for name, call in implementations.items():
                started = time.perf_counter()
                call()
                times[method][name].append(time.perf_counter() - started)
                print(f"  {method:12s} {name:34s} {times[method][name][-1]:8.2f} s", flush=True)
    return times


def table(case: Case, times: Times, batch: int, samples: int) -> str:
    n = len(case.x)
    lines = [
        f"## {case.name}: {n} image(s) {tuple(case.x.shape[1:])}, layer `{case.layer}`, "
        f"batch size {batch}, {samples} smoothing samples",
        "",
        "| method | implementation | rounds | median s per call | range of rounds (s) "
        "| median / camkit's |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for method, implementations in times.items():
        ours = statistics.median(next(iter(implementations.values())))
        for name, seconds in implementations.items():
            median = statistics.median(seconds)
            spread = f"{min(seconds):.3f} to {max(seconds):.3f}" if len(seconds) > 1 else ""
            lines.append(
                f"| {method} | {name} | {len(seconds)} | {median:.3f} | {spread} "
                f"| {median / ours:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["resnet50", "mnist"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="resnet50's input size")
    parser.add_argument("--rounds", type=int, default=0, help="0: 1 for resnet50, 5 for mnist")
    parser.add_argument(
        "--score-rounds", type=int, default=3, help="rounds of resnet50's Score-CAM (the goal)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results-perturbation.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sections = []
    for name in args.cases:
        case = build(name, images=1 if name == "resnet50" else 64, size=args.size)
        print(f"{name}:", flush=True)
        methods = calls(case, args.batch_size, args.samples)
        rounds = dict.fromkeys(methods, args.rounds or (1 if name == "resnet50" else 5))
        if name == "resnet50":
            rounds["Score-CAM"] = max(rounds["Score-CAM"], args.score_rounds)
        times = measure(methods, rounds)
        sections.append(table(case, times, args.batch_size, args.samples))
        print(sections[-1], flush=True)
    header = (
        f"# Perturbation methods beside their peers\n\nMeasured {time.strftime('%Y-%m-%d')} "
        f"on {platform.machine()} CPU, torch {torch.__version__}, {args.threads} CPU threads, "
        f"the median of interleaved rounds (the rounds column; the range shows the noise). "
        f"Command: `python benchmarks/perturbation.py {' '.join(argv or sys.argv[1:])}`.\n"
    )
    args.out.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

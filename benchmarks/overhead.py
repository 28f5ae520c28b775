"""camkit's own cost per call: a Grad-CAM call against the same work done by plain autograd.

    python benchmarks/overhead.py                 # the MNIST net, batch 1 and 256
    python benchmarks/overhead.py --rounds 2000

The plain version is the floor of the computation, written out by hand the way
a user would: a forward hook keeps the layer's output, one forward pass records
the graph, ``torch.autograd.grad`` takes the score's gradient at the layer,
then the channel weights, the weighted sum, the ReLU, the upsampling
(``F.interpolate``) and the min-max scaling. camkit's call adds what makes it a
library: checks of the input and the target, eval mode held and restored, the
autocast state, hooks that handle in-place networks and reused modules, the
one finite check, the result. The two run interleaved, ``--rounds`` times
each after a warm-up, on one thread; the table gives the medians and their
difference, camkit's overhead per call (the goal: at most 0.3 ms at batch 1).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import camkit  # noqa: E402


def plain_gradcam(model: nn.Module, layer: nn.Module, x: Tensor, target: int) -> Tensor:
    """Grad-CAM written out with plain autograd: the least work a call can do."""
    kept: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        with torch.enable_grad():
            scores = model(x)[:, target]
            (gradient,) = torch.autograd.grad(scores.sum(), kept[0])
    finally:
        handle.remove()
    activation = kept[0].detach()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    maps = (weights * activation).sum(1, keepdim=True).clamp_min(0)
    maps = F.interpolate(maps, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def _median_seconds(
    call: Callable[[], Any], other: Callable[[], Any], rounds: int
) -> tuple[float, float]:
    """Median seconds of ``call`` and of ``other``, timed alternately ``rounds`` times."""
    for _ in range(max(20, rounds // 20)):  # warm-up: caches, allocator, first kernels
        call(), other()
    first, second = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        middle = time.perf_counter()
        other()
        end = time.perf_counter()
        first.append(middle - start)
        second.append(end - middle)
    return statistics.median(first), statistics.median(second)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from examples.mnist.train import load

    checkpoint, _ = load()
    model = checkpoint.model.eval()
    layer = model.get_submodule("features.relu")
    cam = camkit.GradCAM(model, "features.relu")
    lines = [
        "# camkit's own cost per call",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU, torch "
        f"{torch.__version__}, one thread, median of {args.rounds} interleaved rounds. "
        f"Command: `python benchmarks/overhead.py --rounds {args.rounds}`.",
        "",
        "| batch | plain autograd (ms) | camkit GradCAM (ms) | camkit's overhead (ms) | ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines))
    for batch in args.batches:
        x = torch.randn(batch, 1, 28, 28)
        torch.testing.assert_close(cam(x, target=3), plain_gradcam(model, layer, x, 3))
        ours, plain = _median_seconds(
            lambda x=x: cam(x, target=3), lambda x=x: plain_gradcam(model, layer, x, 3), args.rounds
        )
        lines.append(
            f"| {batch} | {1e3 * plain:.3f} | {1e3 * ours:.3f} | {1e3 * (ours - plain):.3f} "
            f"| {ours / plain:.2f}x |"
        )
        print(lines[-1])
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark one explanation-guided training step against a plain training step.

    python benchmarks/training.py              # CPU, 2 threads
    python benchmarks/training.py --repeats 30 --out benchmarks/results-training.md

Each step is a whole optimizer step: zero the gradients, run the model, build
the loss, back-propagate it, update the parameters. The plain step's loss is
the cross-entropy; a guided step adds a penalty on camkit maps over a fixed
region, computed by ``explain(..., differentiable=True)`` from the same
forward pass as the cross-entropy. For reference, the same Grad-CAM penalty
written by hand with plain autograd (a hook, ``autograd.grad(...,
create_graph=True)``), and Ross et al.'s input-gradient penalty (RRR). The
steps run interleaved in rounds; the table gives the median time per step as a
ratio to the plain step's, with the quartiles of the per-round ratios.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import camkit  # noqa: E402
from benchmarks.run import ratio_quartiles  # noqa: E402

PLAIN = "plain step"


@dataclass(frozen=True)
class Setup:
    """A model in train mode, a batch, its labels, the penalized region, the layer."""

    name: str
    model: nn.Module
    x: Tensor
    y: Tensor
    mask: Tensor
    layer: str
    early_layer: str


def mnist_setup() -> Setup:
    from examples.mnist.model import MnistNet

    mask = torch.zeros(28, 28)
    mask[:3] = 1
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    model = MnistNet().train()
    return Setup("MNIST net, batch 128", model, x, y, mask, "features.relu", "features.relu1")


def resnet_setup() -> Setup:
    from torchvision.models import resnet18

    mask = torch.zeros(112, 112)
    mask[:16] = 1
    x, y = torch.randn(16, 3, 112, 112), torch.randint(0, 1000, (16,))
    return Setup("resnet18, batch 16, 112x112", resnet18().train(), x, y, mask, "layer4", "layer1")


def steps(setup: Setup) -> dict[str, Callable[[], Any]]:
    """Each kind of training step, as a call that runs one."""
    model, x, y, mask = setup.model, setup.x, setup.y, setup.mask
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    layer = dict(model.named_modules())[setup.layer]

    def step(loss: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss().backward()
            optimizer.step()

        return run

    def plain() -> Tensor:
        return F.cross_entropy(model(x), y)

    def guided(
        method: type[camkit.BaseCAM], layer: str = setup.layer, **options: bool
    ) -> Callable[[], Tensor]:
        cam = method(model, layer)

        def loss() -> Tensor:
            explained = cam.explain(x, y, differentiable=True, **options)
            penalty = (explained.maps * mask).square().sum() / len(x)
            return F.cross_entropy(explained.output, y) + penalty

        return loss

    def by_hand() -> Tensor:
        store: dict[str, Tensor] = {}
        handle = layer.register_forward_hook(lambda m, i, o: store.update(a=o))
        try:
            out = model(x)
        finally:
            handle.remove()
        a = store["a"]
        (grad,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), a, create_graph=True)
        raw = (grad.mean(dim=(2, 3), keepdim=True) * a).sum(1).clamp_min(0)
        up = F.interpolate(raw[:, None], size=x.shape[2:], mode="bilinear")[:, 0]
        flat = up.flatten(1)
        low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        maps = ((flat - low) / (high - low).clamp_min(1e-6)).view_as(up)
        return F.cross_entropy(out, y) + (maps * mask).square().sum() / len(x)

    def rrr() -> Tensor:
        inputs = x.clone().requires_grad_(True)
        out = model(inputs)
        (grad,) = torch.autograd.grad(out.log_softmax(1).sum(), inputs, create_graph=True)
        return F.cross_entropy(out, y) + 1000 * (mask * grad).square().sum() / len(x)

    return {
        PLAIN: step(plain),
        "camkit Grad-CAM step": step(guided(camkit.GradCAM)),
        "camkit HiResCAM step, signed maps": step(
            guided(camkit.HiResCAM, relu=False, normalize=False)
        ),
        "camkit LayerCAM step": step(guided(camkit.LayerCAM)),
        "camkit HiResCAM step, signed maps, early layer": step(
            guided(camkit.HiResCAM, setup.early_layer, relu=False, normalize=False)
        ),
        "Grad-CAM step by hand (plain autograd)": step(by_hand),
        "RRR step (input gradient)": step(rrr),
    }


def measure(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per step in each of ``repeats`` interleaved rounds, after one warm-up round."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_index:
                samples[name].append(time.perf_counter() - started)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-training.md")
    parser.add_argument(
        "--rst", type=Path, default=ROOT / "docs" / "training" / "cost.rst", help="docs table"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    command = " ".join(["python benchmarks/training.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()} "
        f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
        f"{args.repeats} interleaved rounds after a warm-up. Command: `{command}`.",
        "",
    ]
    rst = [
        f".. csv-table:: Time of a training step as a ratio to a plain step's ({command})",
        '   :header: "training step", "MNIST net, batch 128 (features.relu; early: relu1)", '
        '"resnet18, batch 16, 112x112 (layer4; early: layer1)"',
        "",
    ]
    ratios: dict[str, list[str]] = {}
    for setup in (mnist_setup(), resnet_setup()):
        rounds = measure(steps(setup), args.repeats)
        plain = statistics.median(rounds[PLAIN])
        lines += [
            f"## {setup.name}, train mode, maps of `{setup.layer}` (early layer: "
            f"`{setup.early_layer}`)",
            "",
            "| training step | ms per step | time / plain step | quartiles of rounds |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, values in rounds.items():
            seconds = statistics.median(values)
            q1, q3 = ratio_quartiles(values, rounds[PLAIN])
            ratios.setdefault(name, []).append(f"{seconds / plain:.2f}x")
            lines.append(
                f"| {name} | {1000 * seconds:.1f} | {seconds / plain:.2f}x | "
                f"{q1:.2f}x to {q3:.2f}x |"
            )
            print(lines[-1], flush=True)
        lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.write_text("# Training-step benchmark\n\n" + text)
    rst += [f'   "{name}", ' + ", ".join(f'"{r}"' for r in row) for name, row in ratios.items()]
    args.rst.write_text("\n".join(rst) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of camkit.explain_dataset against a plain inference loop, on 1 and 2 processes.

    python benchmarks/throughput.py                  # both cases, 1 and 2 processes
    python benchmarks/throughput.py --cases mnist --repeats 5

Each process count runs under ``torchrun --standalone --nproc_per_node=P`` with
one CPU thread per process. Within one run the worker times, alternately and
``--repeats`` times, (a) a plain ``torch.no_grad()`` loop over the DataLoader's
batches, (b) ``explain_dataset`` with Grad-CAM writing every map (float32)
into a fresh folder, and (c) the same as (b) with the store's integrity checks
switched off (no CRC-32 of the files written, no writer lock), and (d) the
floor: Grad-CAM written out by hand with the least work a loop can do (autograd
recording only the network after the layer, camkit's own upsampling kernel,
none of camkit's checks), its maps kept in memory and saved once with
``np.save``, each from a barrier to a barrier; with P processes each rank takes every P-th batch, as
``explain_dataset`` deals them (one process loops over the DataLoader itself).
The table gives the median images per second, the ratios (d)/(a) (what
Grad-CAM itself costs on this model) and (b)/(a) measured in the same run,
each one's speed-up over one process, and what the checks cost, 1 - (b)/(c)
(the goal: at most 3 %).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

CASES = {
    "mnist": "the MNIST net (shipped weights), the MNIST test set: 10,000 images 28x28, "
    "batch 256, layer `features.relu`",
    "resnet18": "torchvision resnet18 (random weights), 512 random images 3x112x112, "
    "batch 32, layer `layer4`",
}


def _case(name: str) -> tuple[torch.nn.Module, DataLoader[Any], str]:
    if name == "mnist":
        from examples.mnist.data import load_split
        from examples.mnist.train import load

        checkpoint, _ = load()
        test = load_split("test")
        data = TensorDataset(checkpoint.prepare(test.images), test.labels)
        return checkpoint.model, DataLoader(data, batch_size=256), "features.relu"
    from torchvision.models import resnet18

    torch.manual_seed(0)  # the same random weights on every rank (camkit refuses others)
    model = resnet18().eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(512, 3, 112, 112, generator=generator)
    data = TensorDataset(images, torch.zeros(512, dtype=torch.long))
    return model, DataLoader(data, batch_size=32), "layer4"


class _NoLock:
    """Stands in for the writer lock in run (c)."""

    def __init__(self, folder: Path) -> None:
        pass

    def __enter__(self) -> _NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _unchecked(run: Any) -> Any:
    """``run()`` with the store's checksums and lock switched off (run (c))."""
    import camkit.datasets
    from camkit._store import files

    def write(self: files.HashingWriter, data: Any) -> int:
        return int(self._handle.write(data))

    names = vars(camkit.datasets)  # explain_dataset looks WriterLock up here
    saved = files.HashingWriter.write, names["WriterLock"]
    files.HashingWriter.write = write  # type: ignore[method-assign]
    names["WriterLock"] = _NoLock
    try:
        return run()
    finally:
        files.HashingWriter.write, names["WriterLock"] = saved  # type: ignore[method-assign]


def hand_written(model: torch.nn.Module, layer: str, batches: Any, path: str) -> None:
    """Run (d): Grad-CAM of the predicted class by hand, for every batch, saved with np.save."""
    import numpy as np

    from camkit._engine.map_ops import min_max_normalize_, upsample

    kept: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)  # record only what follows the layer
        leaf = output.detach().requires_grad_()
        kept.append(leaf)
        return leaf

    maps = []
    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        for x, _ in batches:
            kept.clear()
            with torch.no_grad():
                logits = model(x)
            activations = kept[0]
            with torch.enable_grad():
                scores = logits.gather(1, logits.detach().argmax(1, keepdim=True))
                (gradients,) = torch.autograd.grad(scores.sum(), activations)
            weights = gradients.flatten(2).mean(2)[:, None]  # (N, 1, C)
            cam = (weights @ activations.detach().flatten(2)).view(len(x), *activations.shape[2:])
            cam = upsample(cam.clamp_min_(0), tuple(x.shape[2:]))
            maps.append(min_max_normalize_(cam).numpy())
    finally:
        handle.remove()
    np.save(path, np.concatenate(maps))


def worker(name: str, repeats: int) -> None:
    """One rank: time the plain loop and explain_dataset, alternately; rank 0 prints JSON."""
    import camkit
    from camkit._engine.distributed import Batches, barrier, process_group, rank_share

    torch.set_num_threads(1)
    model, loader, layer = _case(name)
    cam = camkit.GradCAM(model, layer)
    with process_group() as team:
        batches = Batches.of(loader)  # one process loops over the loader itself
        share = (
            loader if team.size == 1 else batches.loader_for(rank_share(range(batches.count), team))
        )
        next(iter(share))
        with torch.no_grad():
            model(next(iter(share))[0])  # warm-up
        cam(next(iter(share))[0])
        plain: list[float] = []
        explained: list[float] = []
        unchecked: list[float] = []
        floor: list[float] = []
        for _ in range(repeats):
            barrier(team)
            started = time.perf_counter()
            with torch.no_grad():
                for x, _ in share:
                    model(x)
            barrier(team)
            plain.append(time.perf_counter() - started)
            for times, checked in ((explained, True), (unchecked, False)):
                folder = tempfile.mkdtemp() if team.main else ""
                folder = camkit._engine.distributed.gather(team, folder)[0]
                barrier(team)
                started = time.perf_counter()
                run = partial(camkit.explain_dataset, cam, loader, folder, progress=False)
                run() if checked else _unchecked(run)
                times.append(time.perf_counter() - started)  # it ends with a barrier
                barrier(team)
                if team.main:
                    shutil.rmtree(folder)
            folder = tempfile.mkdtemp()
            barrier(team)
            started = time.perf_counter()
            hand_written(model, layer, share, os.path.join(folder, "maps.npy"))
            barrier(team)
            floor.append(time.perf_counter() - started)
            shutil.rmtree(folder)
        if team.main:
            images = len(loader.dataset)  # type: ignore[arg-type]
            measured = {
                "plain": plain, "explain": explained, "unchecked": unchecked, "floor": floor
            }  # fmt: skip
            print(json.dumps({"images": images, **measured}))


def _launch(name: str, processes: int, repeats: int) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={processes}", __file__, "--worker", name, "--repeats", str(repeats),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-throughput.md")
    parser.add_argument(
        "--rst", type=Path, default=ROOT / "docs" / "datasets" / "throughput.rst", help="docs"
    )
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.repeats)
        return 0
    command = " ".join(
        ["python benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()} "
        f"CPU ({os.cpu_count()} cores), torch {torch.__version__}, one thread per process, "
        f"median of {args.repeats} alternating repeats. Command: `{command}`.",
        "",
        "| case | processes | plain loop, images/s | Grad-CAM by hand, images/s | "
        "explain_dataset (Grad-CAM, maps written), images/s | by hand / plain | "
        "explain / plain | explain / by hand | plain speed-up | explain speed-up | "
        "cost of checksums and lock |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rst = [
        f".. csv-table:: Images per second, one CPU thread per process (``{command}``)",
        '   :header: "case", "processes", "plain loop", "Grad-CAM by hand", "explain_dataset", '
        '"by hand / plain", "explain / plain", "explain / by hand", "plain speed-up", '
        '"explain speed-up", "cost of checksums and lock"',
        "",
    ]
    for name in args.cases:
        base: dict[str, float] = {}
        for processes in (1, 2):
            result = _launch(name, processes, args.repeats)
            rates = {
                kind: result["images"] / statistics.median(result[kind])
                for kind in ("plain", "explain", "unchecked", "floor")
            }
            base = base or rates
            cells = [
                name,
                str(processes),
                f"{rates['plain']:.0f}",
                f"{rates['floor']:.0f}",
                f"{rates['explain']:.0f}",
                f"{rates['floor'] / rates['plain']:.2f}x",
                f"{rates['explain'] / rates['plain']:.2f}x",
                f"{rates['explain'] / rates['floor']:.2f}x",
                f"{rates['plain'] / base['plain']:.2f}x",
                f"{rates['explain'] / base['explain']:.2f}x",
                f"{100 * (1 - rates['explain'] / rates['unchecked']):.1f} %",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            rst.append("   " + ", ".join(f'"{c}"' for c in cells))
            print(lines[-1], flush=True)
    lines += ["", *(f"- {name}: {CASES[name]}" for name in args.cases)]
    text = "\n".join(lines)
    print(text)
    args.out.write_text("# Dataset throughput\n\n" + text + "\n")
    rst += ["", *(f"- {name}: {CASES[name].replace('`', '``')}." for name in args.cases)]
    args.rst.parent.mkdir(exist_ok=True)
    args.rst.write_text("\n".join(rst) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What checking a store's shards costs its reader: every map read with and without checksums.

    python benchmarks/store_reads.py --repeats 9

Writes the MNIST test set's 10,000 Grad-CAM maps (float32, 31 MB) into a store,
then times, alternately ``--repeats`` times, reading every map in index order
through a freshly opened :class:`camkit.MapStore` with ``checksums=True`` (the
default: each shard's CRC-32 checked when it is first opened) and with
``checksums=False`` (sizes, shapes and indices only), and the first map of a
freshly opened store (one shard opened). One thread; the files are in the
page cache (a cold disk read costs the same either way, and dominates).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import camkit  # noqa: E402


def _seconds(read: Callable[[], object]) -> float:
    started = time.perf_counter()
    read()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-store.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from examples.mnist.data import load_split
    from examples.mnist.train import load

    checkpoint, _ = load()
    test = load_split("test")
    loader = DataLoader(TensorDataset(checkpoint.prepare(test.images)), batch_size=256)
    scratch = tempfile.TemporaryDirectory()
    folder = Path(scratch.name) / "store"
    cam = camkit.GradCAM(checkpoint.model, "features.relu")
    camkit.explain_dataset(cam, loader, folder, progress=False)

    def every_map(checksums: bool) -> Callable[[], object]:
        return lambda: [m.sum() for m in map(camkit.MapStore(folder, checksums=checksums).map,
                                             range(10_000))]  # fmt: skip

    def first_map(checksums: bool) -> Callable[[], object]:
        return lambda: camkit.MapStore(folder, checksums=checksums).map(0)

    shards = camkit.MapStore(folder).verify().checked
    cases = {
        "every map, in index order": every_map,
        "the first map of a freshly opened store": first_map,
    }
    lines = [
        "# Reading a store: the cost of checking checksums",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU, torch "
        f"{torch.__version__}, one thread, median of {args.repeats} alternating repeats, files "
        f"in the page cache. Command: `python benchmarks/store_reads.py --repeats "
        f"{args.repeats}`. The MNIST test set's 10,000 float32 maps, in {shards} shards.",
        "",
        "| read | checksums=False (ms) | checksums=True (ms) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    print("\n".join(lines))
    for name, case in cases.items():
        plain, checked = [], []
        for _ in range(args.repeats):
            plain.append(_seconds(case(False)))
            checked.append(_seconds(case(True)))
        fast, slow = statistics.median(plain), statistics.median(checked)
        lines.append(f"| {name} | {1e3 * fast:.2f} | {1e3 * slow:.2f} | {slow / fast:.2f}x |")
        print(lines[-1])
    args.out.write_text("\n".join(lines) + "\n")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

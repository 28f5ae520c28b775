"""The map store viewer: the time to build its site, its size, and the page's speed in Chromium.

    python benchmarks/viewer.py            # the MNIST test store and a 100,000-map store

Builds the site (:func:`camkit.view`) for (a) the MNIST test set's 10,000
Grad-CAM maps with their images and a Score-CAM store to compare with, and (b)
a synthetic store of 100,000 maps (28x28, random images through the MNIST
net's architecture with random weights) with its images; then rebuilds each
(nothing to write). In headless Chromium (``/usr/bin/chromium``, driven by
Playwright) it times the page from opening until its first grid's thumbnails
are drawn, sorting by score (so that each page draws from many sprite
sheets), and paging through the next 1,000 samples, each page until its
thumbnails are drawn. One CPU thread for the builds.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import camkit  # noqa: E402


def _size(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _mnist(scratch: Path) -> tuple[camkit.MapStore, dict[str, Any]]:
    from examples.mnist.data import load_split
    from examples.mnist.train import load

    checkpoint, _ = load()
    test = load_split("test")
    loader = DataLoader(TensorDataset(checkpoint.prepare(test.images), test.labels), batch_size=256)
    stores = [
        camkit.explain_dataset(
            getattr(camkit, m)(checkpoint.model, "features.relu"),
            loader,
            scratch / m,
            target="label",
            progress=False,
        )
        for m in ("GradCAM", "ScoreCAM")
    ]
    assert stores[0] is not None
    return stores[0], {"images": lambda i: test.images[i], "compare": stores[1]}


def _synthetic(scratch: Path, n: int) -> tuple[camkit.MapStore, dict[str, Any]]:
    from examples.mnist.model import MnistNet

    torch.manual_seed(0)
    images = torch.rand(n, 1, 28, 28)
    loader = DataLoader(TensorDataset(images), batch_size=1000)
    cam = camkit.GradCAM(MnistNet().eval(), "features.relu")
    folder = scratch / "synthetic"
    store = camkit.explain_dataset(cam, loader, folder, dtype="uint8", progress=False)
    assert store is not None
    return store, {"images": lambda i: images[i]}


def _page(site: Path, browser: Any) -> tuple[float, float, float]:
    """Seconds to the first grid drawn, to the grid sorted by score drawn, and to page
    through the next 1,000 samples by score (each page until its thumbnails are drawn)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    frame = "() => new Promise(done => requestAnimationFrame(() => done()))"

    def drawn(number: int) -> None:
        page.wait_for_selector(f'#grid[data-drawn="{number}"]')
        page.evaluate(frame)

    started = time.perf_counter()
    page.goto((site / "index.html").as_uri())
    drawn(1)
    first = time.perf_counter() - started
    started = time.perf_counter()
    page.select_option("#sort", "score-desc")
    drawn(2)
    sorted_ = time.perf_counter() - started
    started = time.perf_counter()
    for number in range(3, 3 + -(-1000 // 120)):
        page.click("#next")
        drawn(number)
    paging = time.perf_counter() - started
    page.close()
    return first, sorted_, paging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=100_000, help="maps in store (b)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-viewer.md")
    parser.add_argument(
        "--rst", type=Path, default=ROOT / "docs" / "datasets" / "viewer-benchmark.rst", help="docs"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp())
    lines = [
        "# The map store viewer",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU, torch "
        f"{torch.__version__}, one thread for the builds, headless Chromium from "
        f"/usr/bin/chromium. Command: `python benchmarks/viewer.py`.",
        "",
        "| store | maps | build (s) | rebuild, nothing new (s) | site (MiB) | files | "
        "page: first grid (s) | page: sorted by score (s) | page: the next 1,000 by score (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines))
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
            cases = {
                "MNIST test set, Grad-CAM with Score-CAM to compare, with images": _mnist,
                "synthetic 28x28, with images": lambda s: _synthetic(s, args.synthetic),
            }
            for name, make in cases.items():
                store, options = make(scratch)
                site = scratch / f"site-{len(lines)}"
                started = time.perf_counter()
                camkit.view(store, site, progress=False, **options)
                build = time.perf_counter() - started
                started = time.perf_counter()
                camkit.view(store, site, progress=False, **options)
                rebuild = time.perf_counter() - started
                files = sum(1 for p in site.rglob("*") if p.is_file())
                first, sorted_, paging = _page(site, browser)
                lines.append(
                    f"| {name} | {len(store):,} | {build:.1f} | {rebuild:.2f} | "
                    f"{_size(site):.0f} | {files} | {first:.2f} | {sorted_:.2f} | {paging:.2f} |"
                )
                print(lines[-1], flush=True)
            browser.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.write_text("\n".join(lines) + "\n")
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ")]
    rst = [
        ".. csv-table:: The viewer: building its site, and the page in headless Chromium "
        "(``python benchmarks/viewer.py``)",
        "   :header: " + ", ".join(f'"{cell.strip()}"' for cell in rows[0]),
        "",
        *("   " + ", ".join(f'"{cell.strip()}"' for cell in row) for row in rows[2:]),
    ]
    args.rst.write_text("\n".join(rst) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

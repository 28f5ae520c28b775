"""Make the figures of the model-family pages, the datasets page and the Metrics page from
their own recipes.

Each page's Python snippets run in order, as the docs tests run them, and the
figure the last one leaves in ``fig`` is saved as ``docs/families/<page>.png``,
so each figure is exactly what its recipe draws. The datasets page's figure
shows the maps and pseudo-label masks its recipe computes. From the repository
root::

    python docs/make_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_docs import FAMILY_PAGES, snippets  # noqa: E402


def main() -> None:
    for page in FAMILY_PAGES:
        namespace: dict[str, object] = {"__name__": "__snippet__"}
        for block in snippets(page):
            exec(compile(block, str(page), "exec"), namespace)
        out = ROOT / "docs" / "families" / f"{page.stem}.png"
        namespace["fig"].savefig(out, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
        print(f"wrote {out.relative_to(ROOT)}")
    datasets_figure()
    metrics_figure()


def metrics_figure() -> None:
    """The Metrics page's worked comparison: its snippets run in order, ``fig`` saved."""
    page = ROOT / "docs" / "metrics.rst"
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    for block in snippets(page):
        exec(compile(block, str(page), "exec"), namespace)
        if "mnist" in namespace:
            break
    out = ROOT / "docs" / "metrics" / "compare-mnist.png"
    out.parent.mkdir(exist_ok=True)
    namespace["fig"].savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out.relative_to(ROOT)}")


def datasets_figure() -> None:
    """Digits, their stored Grad-CAM maps, and the pseudo-label masks of the datasets page."""
    import matplotlib.pyplot as plt
    import torch

    from camkit.plot import blend

    page = ROOT / "docs" / "datasets.rst"
    namespace: dict[str, Any] = {"__name__": "__snippet__"}
    for block in snippets(page)[:3]:  # explain, read back, pseudo masks
        exec(compile(block, str(page), "exec"), namespace)
    test, maps, masks = namespace["test"], namespace["maps"], namespace["masks"]
    classes = namespace["classes"]
    fig, axes = plt.subplots(2, len(maps), figsize=(1.5 * len(maps), 3.8))
    colours = plt.get_cmap("hsv")  # one hue per class, none of them grey
    for column, (image, cam, mask) in enumerate(zip(test.images, maps, masks, strict=False)):
        axes[0, column].imshow(blend(image, cam))
        axes[0, column].set_title(f"map, class {int(classes[column])}", fontsize=8)
        shown = torch.zeros(*mask.shape, 3)
        shown[mask == 255] = 1.0  # ignored: white
        for label in mask.unique().tolist():
            if label not in (0, 255):
                shown[mask == label] = torch.tensor(
                    colours((label - 1) / 10)[:3], dtype=torch.float32
                )
        axes[1, column].imshow(shown.numpy())
        axes[1, column].set_title("pseudo-label", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("Stored Grad-CAM maps and pseudo-labels (colour: the class, white: ignored, "
                 "black: background)")  # fmt: skip
    fig.tight_layout()
    out = ROOT / "docs" / "datasets" / "pseudo-labels.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Make the figures of the model-family pages from their own recipes.

Each page's Python snippets run in order, as the docs tests run them, and the
figure the last one leaves in ``fig`` is saved as ``docs/families/<page>.png``,
so each figure is exactly what its recipe draws. From the repository root::

    python docs/make_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

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


if __name__ == "__main__":
    main()

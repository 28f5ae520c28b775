"""Every Python snippet in the README and the Sphinx pages runs as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst"))]


def snippets(page: Path) -> list[str]:
    text = page.read_text()
    if page.suffix == ".md":
        return re.findall(r"```python\n(.*?)```", text, flags=re.S)
    blocks, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        found = re.match(r"^( *)\.\. code-block:: python$", line)
        if not found:
            continue
        indent, body = len(found.group(1)), []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)))
    return blocks


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_snippets_run(page: Path) -> None:
    code = snippets(page)
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for block in code:
        exec(compile(block, str(page), "exec"), namespace)


def test_pages_have_snippets() -> None:
    assert snippets(ROOT / "README.md")
    assert snippets(ROOT / "docs" / "getting-started.rst")


def test_tutorial_report_and_its_figures_are_in_the_docs() -> None:
    report = ROOT / "docs" / "tutorial" / "mnist" / "report.md"
    text = report.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(linked) == 18
    for path in linked:
        assert (report.parent / path).stat().st_size > 1000, path
    assert "## Results and discussion" in text

"""The docs: every Python snippet runs as written; the built site works offline."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst"))]
FAMILY_PAGES = [
    ROOT / "docs" / f"{name}.rst"
    for name in ("segmentation", "detection", "embeddings", "hugging-face-timm")
]
"""Pages with a recipe for a model family, whose last snippet leaves a figure in ``fig``
(saved by ``docs/make_figures.py``)."""


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
def test_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the snippets' tempfile.mkdtemp() folders (map stores of 100 MB) go under tmp_path,
    # which pytest removes, not into the system's temporary folder for good
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = snippets(page)
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for block in code:
        exec(compile(block, str(page), "exec"), namespace)


def test_every_method_of_the_example_has_its_figure_on_the_methods_page() -> None:
    from examples.mnist.comparison import explainers, raw_pixel_model, vit_explainers
    from examples.mnist.gallery import slug
    from examples.mnist.train import load
    from examples.mnist.vit import DEFAULT_VIT_WEIGHTS, MnistViT

    page = (ROOT / "docs" / "methods.rst").read_text()
    names = [*explainers(raw_pixel_model(load()[0])), "LeGrad"]
    assert "LeGrad" in vit_explainers(raw_pixel_model(load(DEFAULT_VIT_WEIGHTS, MnistViT)[0]))
    for name in names:
        if name in ("uniform random", "centre Gaussian"):  # the report's map baselines
            continue
        assert f".. image:: methods/{slug(name)}.png" in page, name
    for shown in re.findall(r"\.\. image:: (methods/\S+)", page):
        assert (ROOT / "docs" / shown).stat().st_size > 10_000, shown


@pytest.mark.parametrize("page", FAMILY_PAGES, ids=[p.stem for p in FAMILY_PAGES])
def test_family_pages_show_the_figure_their_recipe_draws(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for block in snippets(page):
        exec(compile(block, str(page), "exec"), namespace)
    figure = namespace["fig"]
    assert len(figure.axes) >= 2  # type: ignore[attr-defined]
    assert f".. image:: families/{page.stem}.png" in page.read_text()
    assert (ROOT / "docs" / "families" / f"{page.stem}.png").stat().st_size > 10_000
    assert page.stem in (ROOT / "docs" / "index.rst").read_text()


def test_pages_have_snippets() -> None:
    assert snippets(ROOT / "README.md")
    assert snippets(ROOT / "docs" / "getting-started.rst")


def test_tutorial_report_and_its_figures_are_in_the_docs() -> None:
    report = ROOT / "docs" / "tutorial" / "mnist" / "report.md"
    text = report.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(linked) == 20  # the method comparison among them
    assert "figures/method_comparison.png" in linked
    for path in linked:
        assert (report.parent / path).stat().st_size > 1000, path
    assert "## Results and discussion" in text
    assert "## A vision transformer: LeGrad" in text
    assert "| LeGrad |" in text


class _Resources(HTMLParser):
    """The addresses a page loads by itself: scripts, stylesheets, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in {"script", "img", "iframe", "audio", "video", "source"} and values.get("src"):
            self.loaded.append(str(values["src"]))
        if tag == "link" and values.get("href") and values.get("rel") != "canonical":
            rel = set(str(values.get("rel", "")).split())
            if rel & {"stylesheet", "preload", "modulepreload", "icon", "prefetch"}:
                self.loaded.append(str(values["href"]))


def _external(address: str) -> bool:
    return address.startswith("//") or urlsplit(address).scheme in {"http", "https"}


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Sphinx site, built as CI builds it (warnings are errors)."""
    import sphinx  # noqa: F401  (the docs extra; the build below runs it in a subprocess)

    out = tmp_path_factory.mktemp("html")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    result = subprocess.run(
        [*command, str(ROOT / "docs"), str(out)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return out


def test_built_pages_load_nothing_from_another_host(built_docs: Path) -> None:
    pages = sorted(built_docs.rglob("*.html"))
    assert len(pages) > 15
    math_pages = 0
    for page in pages:
        parser = _Resources()
        parser.feed(page.read_text())
        assert parser.loaded, page  # the parser does see the theme's own scripts
        external = [a for a in parser.loaded if _external(a)]
        assert not external, (page.relative_to(built_docs), external)
        for address in parser.loaded:  # and every local one is in the site
            if not address.startswith("data:"):
                target = (page.parent / urlsplit(address).path).resolve()
                assert target.is_file(), (page.relative_to(built_docs), address)
        math_pages += any("mathjax" in a for a in parser.loaded)
    assert math_pages >= 3  # concepts, methods and the API reference have formulas
    for sheet in built_docs.rglob("*.css"):
        imported = re.findall(r"@import\s+(?:url\()?['\"]?([^'\")\s;]+)", sheet.read_text())
        urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", sheet.read_text())
        assert not [a for a in imported + urls if _external(a)], sheet


def test_the_external_check_would_catch_a_cdn_script() -> None:
    parser = _Resources()
    parser.feed(
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.org/x.css"><a href="https://arxiv.org">'
    )
    assert [a for a in parser.loaded if _external(a)] == [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
        "//fonts.example.org/x.css",
    ]


def test_api_reference_shows_how_to_call_an_explainer(built_docs: Path) -> None:
    api = (built_docs / "api.html").read_text()
    for name in ("BaseCAM", "GuidedBackprop", "GuidedGradCAM"):
        for member in ("__call__", "explain"):
            assert f'id="camkit.{name}.{member}"' in api, (name, member)
    assert 'id="camkit.LayerContext.score_activations"' in api


def test_training_page_shows_the_example_table_and_figures() -> None:
    """The table on the "Training with explanations" page is that of the committed run."""
    import json

    folder = ROOT / "docs" / "training"
    page = (ROOT / "docs" / "training.rst").read_text()
    for included in (".. include:: training/table.rst", ".. include:: training/cost.rst"):
        assert included in page
    rows = json.loads((folder / "results.json").read_text())
    table = (folder / "table.rst").read_text()
    names = [row["name"] for row in rows]
    assert names[:3] == ["plain", "camkit HiResCAM penalty", "RRR input-gradient penalty"]
    for row in rows:
        assert f'"{row["name"]}", "{100 * row["randomized"]:.2f} %"' in table
    plain, guided = rows[0], rows[1]
    assert plain["randomized"] < 0.5 and guided["randomized"] >= 0.97  # the example's goals
    for figure in ("construction.png", "maps.png"):
        assert f".. image:: training/{figure}" in page
        assert (folder / figure).stat().st_size > 10_000
    assert "ratio" in (folder / "cost.rst").read_text()


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A LaTeX command shown as text: what a docstring's math turns into when its backslashes are
# eaten (a "\b" in a non-raw docstring becomes a backspace) or its :math: role is missing.
LATEX = re.compile(r"\\(?:frac|sum|mathrm|math[a-z]+|partial|odot|alpha|beta|big|bar|sqrt|cdot)\b")


def _docstrings() -> list[tuple[str, str]]:
    import importlib
    import inspect
    import pkgutil

    import camkit

    found = []
    for info in pkgutil.walk_packages(camkit.__path__, "camkit."):
        if info.name.endswith("__main__"):  # importing it runs the command
            continue
        module = importlib.import_module(info.name)
        found.append((info.name, module.__doc__ or ""))
        for name, member in vars(module).items():
            if getattr(member, "__module__", None) != info.name:
                continue
            found.append((f"{info.name}.{name}", inspect.getdoc(member) or ""))
            for attribute, value in vars(member).items() if inspect.isclass(member) else []:
                found.append((f"{info.name}.{name}.{attribute}", inspect.getdoc(value) or ""))
    return found


def test_no_docstring_holds_a_control_character() -> None:
    """Nor a tab: in a docstring it is an eaten ``\\t`` (``\\text``, ``\\tau``, ``\\times``)."""
    docstrings = _docstrings()
    assert len(docstrings) > 300
    eaten = re.compile(CONTROL.pattern[:-1] + r"\t]")
    bad = [(where, eaten.findall(text)) for where, text in docstrings if eaten.search(text)]
    assert not bad


def test_the_built_pages_hold_no_control_character_nor_unrendered_latex(built_docs: Path) -> None:
    shown_as_math = re.compile(
        r'<(span|div) class="math[^"]*"[^>]*>.*?</\1>|<pre>.*?</pre>|<code[^>]*>.*?</code>'
        r"|<script.*?</script>",
        re.S,
    )
    pages = sorted(built_docs.rglob("*.html"))
    for page in pages:
        html = page.read_text()
        assert not CONTROL.search(html), page.relative_to(built_docs)
        text = shown_as_math.sub("", html)
        assert not LATEX.findall(text), (page.relative_to(built_docs), LATEX.findall(text)[:5])
    api = (built_docs / "api.html").read_text()
    assert r"\bar G" in api  # Seg-Eigen-CAM's formula reaches MathJax intact
    assert LATEX.search(shown_as_math.sub("", "<p>a \\frac{1}{Z} b</p>")) is not None


def test_the_checks_would_catch_a_backspace_in_a_docstring() -> None:
    eaten = "centred per channel (:math:`\bar G`)"
    assert CONTROL.search(eaten)

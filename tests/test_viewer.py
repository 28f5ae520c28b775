"""The map store viewer: the site it writes, and the page in a real browser.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``) with
Playwright's Python API (no browser download). Under CI both must be there
(``.ci/run`` installs them); elsewhere the browser tests skip without them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import camkit
from camkit.errors import CamkitValueError
from camkit.viewer import CELLS, _image, _off_centre
from examples.mnist.data import load_split
from examples.mnist.train import load

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CAMKIT_CHROMIUM", "/usr/bin/chromium"))
SAMPLES = 300  # five sprite sheets (4 x 64 + 44), three pages of 120
SCREENSHOT = ROOT / "docs" / "datasets" / "viewer.png"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[camkit.MapStore, camkit.MapStore]:
    """Grad-CAM and Score-CAM stores of 300 MNIST test digits (their labels explained)."""
    checkpoint, _ = load()
    test = load_split("test")
    data = TensorDataset(checkpoint.prepare(test.images[:SAMPLES]), test.labels[:SAMPLES])
    loader = DataLoader(data, batch_size=64)
    sources = [f"{int(test.labels[i])}/{i:05d}.png" for i in range(SAMPLES)]
    made = []
    for method in ("GradCAM", "ScoreCAM"):
        cam = getattr(camkit, method)(checkpoint.model, "features.relu")
        out = tmp_path_factory.mktemp(method)
        store = camkit.explain_dataset(cam, loader, out, target="label", progress=False,
                                       sources=sources)  # fmt: skip
        assert store is not None
        made.append(store)
    return made[0], made[1]


def _images(index: int) -> torch.Tensor:
    return load_split("test").images[index]


def _strokes(index: int) -> torch.Tensor:
    """The digit's strokes as its object mask."""
    return load_split("test").images[index, 0] > 0.5


@pytest.fixture(scope="module")
def site(stores: tuple[camkit.MapStore, camkit.MapStore], tmp_path_factory: Any) -> Path:
    folder = tmp_path_factory.mktemp("site")
    page = camkit.view(stores[0], folder, images=_images, compare=stores[1], progress=False,
                       masks=_strokes,
                       classes=[f"digit {d}" for d in range(10)],
                       title="300 MNIST test digits: Grad-CAM against Score-CAM")  # fmt: skip
    assert page == folder / "index.html"
    return folder


def _data(folder: Path) -> dict[str, Any]:
    text = (folder / "data.js").read_text()
    prefix = "window.CAMKIT_VIEWER = "
    assert text.startswith(prefix)
    loaded: dict[str, Any] = json.loads(text[len(prefix) :].rstrip().rstrip(";"))
    return loaded


def test_the_site_holds_every_record_and_each_sheet(
    site: Path, stores: tuple[camkit.MapStore, camkit.MapStore]
) -> None:
    data = _data(site)
    columns = data["columns"]
    records = stores[0].records()
    assert columns["index"] == records["index"].tolist() == list(range(SAMPLES))
    assert columns["target"] == records["target"].tolist()
    assert columns["prediction"] == records["prediction"].tolist()
    np.testing.assert_allclose(columns["score"], records["score"].numpy(), rtol=1e-4)
    assert columns["source"] == stores[0].sources
    sheets = -(-SAMPLES // (CELLS * CELLS))
    for kind in ("overlay", "image", "map", "other"):
        assert sorted(p.name for p in (site / "sheets").glob(f"{kind}-*.jpg")) == [
            f"{kind}-{s:04d}.jpg" for s in range(sheets)
        ]
    assert {row["class"] for row in data["summary"]["classes"]} == set(columns["target"])
    for row in data["summary"]["classes"]:
        assert (site / "classes" / f"class-{row['class']}.png").is_file()
        members = [i for i, t in enumerate(columns["target"]) if t == row["class"]]
        assert row["count"] == len(members)
        right = sum(columns["prediction"][i] == row["class"] for i in members)
        assert row["accuracy"] == pytest.approx(right / len(members))


def test_mass_inside_the_object_is_computed_from_the_stored_maps(
    site: Path, stores: tuple[camkit.MapStore, camkit.MapStore]
) -> None:
    data = _data(site)
    inside = data["columns"]["inside"]
    for i in range(0, SAMPLES, 7):
        cam = stores[0].map(i).double()
        expected = float(cam[_strokes(i)].sum() / cam.sum()) if cam.sum() > 0 else 0.0
        assert inside[i] == pytest.approx(expected, abs=1e-4)  # rounded to 4 places
    for row in data["summary"]["classes"]:
        members = [i for i, t in enumerate(data["columns"]["target"]) if t == row["class"]]
        assert row["inside"] == pytest.approx(sum(inside[i] for i in members) / len(members))


def test_agreement_is_one_with_itself_and_follows_pearson(
    stores: tuple[camkit.MapStore, camkit.MapStore], tmp_path: Path
) -> None:
    camkit.view(stores[0], tmp_path / "self", compare=stores[0], progress=False)
    agreement = np.array(_data(tmp_path / "self")["columns"]["agreement"])
    assert np.all((agreement > 0.9999) | (agreement == 0))  # 0 only for a constant map
    assert (agreement > 0.9999).mean() > 0.9
    data = _data(tmp_path / "self")
    assert data["sheets"]["kinds"] == ["map", "other"]  # no images given: maps alone


def test_off_centre_is_hand_derivable() -> None:
    maps = torch.zeros(4, 8, 8)
    maps[0, 3:5, 3:5] = 1  # centred
    maps[1, 0, 0] = 1  # the corner pixel: its centre is (0.5 - 4) / 8 from the middle
    maps[2, :, 7] = 1  # the right-hand column
    offset = _off_centre(maps)
    assert offset[0] == pytest.approx(0.0, abs=1e-7)
    assert offset[1] == pytest.approx((3.5 / 8) * 2**0.5 / (0.5 * 2**0.5), rel=1e-6)
    assert offset[2] == pytest.approx((3.5 / 8) / (0.5 * 2**0.5), rel=1e-6)
    assert offset[3] == 0  # an all-zero map


def test_images_are_read_in_each_form_and_never_clipped_silently() -> None:
    """A uint8 image (PIL's, OpenCV's) is 0 to 255; an (H, W, C) array is channels last, as
    PIL gives it; a float image outside [0, 1] (standardized, say) is refused: clipped, its
    thumbnail would be white or washed out."""
    from PIL import Image

    pixels = torch.randint(0, 256, (3, 12, 10), dtype=torch.uint8)
    expected = _image(pixels.float() / 255, (12, 10), 0)
    hwc = pixels.permute(1, 2, 0).numpy()
    for value in (pixels, pixels.numpy(), hwc, Image.fromarray(hwc)):
        torch.testing.assert_close(_image(value, (12, 10), 0), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(_image(hwc[..., :1], (12, 10), 0)[..., 0], expected[..., 0])
    outside = r"images\(7\): values must lie in \[0, 1\], got -1 to 2"
    with pytest.raises(CamkitValueError, match=outside):
        _image(torch.linspace(-1, 2, 120).view(1, 12, 10), (12, 10), 7)
    with pytest.raises(CamkitValueError, match=r"images\(3\) has shape \(2, 12, 10\)"):
        _image(torch.rand(2, 12, 10), (12, 10), 3)


def test_a_rerun_writes_only_what_is_missing_or_out_of_date(
    stores: tuple[camkit.MapStore, camkit.MapStore], tmp_path: Path
) -> None:
    folder = tmp_path / "site"
    camkit.view(stores[0], folder, images=_images, progress=False)
    sheets = {p.name: p.stat().st_mtime_ns for p in (folder / "sheets").iterdir()}
    camkit.view(stores[0], folder, images=_images, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "sheets").iterdir()} == sheets
    (folder / "sheets" / "map-0001.jpg").unlink()  # an interrupted build
    camkit.view(stores[0], folder, images=_images, progress=False)
    again = {p.name: p.stat().st_mtime_ns for p in (folder / "sheets").iterdir()}
    assert again["map-0000.jpg"] == sheets["map-0000.jpg"]
    assert "map-0001.jpg" in again
    camkit.view(stores[0], folder, progress=False)  # other options: every sheet again
    assert not (folder / "sheets" / "image-0000.jpg").exists() or (
        (folder / "sheets" / "map-0000.jpg").stat().st_mtime_ns != sheets["map-0000.jpg"]
    )


def test_an_interrupted_build_resumes(
    stores: tuple[camkit.MapStore, camkit.MapStore], tmp_path: Path
) -> None:
    def failing(index: int) -> torch.Tensor:
        if index == 3 * CELLS * CELLS:  # the first sample of the fourth sheet
            raise KeyboardInterrupt
        return _images(index)

    with pytest.raises(KeyboardInterrupt):
        camkit.view(stores[0], tmp_path, images=failing, progress=False)
    sheets = tmp_path / "sheets"
    finished = ["0000.jpg", "0001.jpg", "0002.jpg"]  # sheet 3 was being drawn: not recorded
    written = {p.name: p.stat().st_mtime_ns for p in sheets.iterdir() if p.name[-8:] in finished}
    assert len(written) == 3 * 3  # overlay, image, map of each finished sheet
    camkit.view(stores[0], tmp_path, images=_images, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in sheets.iterdir()}
    assert {name: after[name] for name in written} == written  # the three kept as they were
    assert len(after) == 3 * (-(-SAMPLES // (CELLS * CELLS)))  # overlay, image, map each
    assert (tmp_path / "index.html").is_file()


def test_a_store_of_other_samples_is_refused(
    stores: tuple[camkit.MapStore, camkit.MapStore], tmp_path: Path
) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 26 * 26, 3))  # fmt: skip
    data = TensorDataset(torch.rand(10, 1, 28, 28))
    small = camkit.explain_dataset(camkit.GradCAM(model, "1"), DataLoader(data, batch_size=5),
                                   tmp_path / "small", progress=False)  # fmt: skip
    assert small is not None
    with pytest.raises(CamkitValueError, match=r"compare: .* holds other samples"):
        camkit.view(stores[0], tmp_path / "site", compare=small, progress=False)
    with pytest.raises(CamkitValueError, match="thumb: got 4"):
        camkit.view(stores[0], tmp_path / "site", thumb=4, progress=False)
    (tmp_path / "a-file").write_text("kept")
    with pytest.raises(CamkitValueError, match=r"^out: '.*a-file' is a file; give a folder"):
        camkit.view(stores[0], tmp_path / "a-file", progress=False)
    with pytest.raises(camkit.CamkitStorageError, match=r"^out: cannot create '.*a-file/site'"):
        camkit.view(stores[0], tmp_path / "a-file" / "site", progress=False)
    with pytest.raises(camkit.CamkitTypeError, match=r"^out: got ''; allowed: a folder's path"):
        camkit.view(stores[0], "", progress=False)  # not the current folder
    assert (tmp_path / "a-file").read_text() == "kept"


# ----------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        if os.environ.get("CI"):
            raise  # CI has the test extra (a skip only where CAMKIT_TESTS_WITHOUT names it)
        pytest.skip("playwright is not installed")
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have Chromium at {CHROMIUM} (.ci/run installs it)")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        yield launched
        launched.close()


class Page:
    """The viewer opened from disk, with every request and console message it makes."""

    def __init__(self, browser: Any, folder: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on(
            "console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text)
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto((folder / "index.html").as_uri())
        self.page.wait_for_selector("body[data-ready=true]")

    def shown(self) -> list[int]:
        return [int(i) for i in self.page.locator("#grid .item").evaluate_all(
            "items => items.map(item => item.dataset.index)")]  # fmt: skip

    def choose(self, select: str, value: str) -> None:
        self.page.select_option(f"#{select}", value)


def _ordered(data: dict[str, Any], key: Any, keep: Any = lambda i: True) -> list[int]:
    columns = data["columns"]
    positions = [i for i in range(len(columns["index"])) if keep(i)]
    positions.sort(key=lambda i: (key(i), columns["index"][i]))
    return [columns["index"][i] for i in positions]


def test_the_page_sorts_filters_and_shows_each_sample(browser: Any, site: Path) -> None:
    data = _data(site)
    columns = data["columns"]
    view = Page(browser, site)
    page = view.page
    assert view.shown() == list(range(120))
    page.wait_for_selector('#grid[data-drawn="1"]')  # every thumbnail of the page drawn
    import io

    from PIL import Image

    thumb = Image.open(io.BytesIO(page.locator("#grid .item canvas").first.screenshot()))
    pixels = np.asarray(thumb.convert("RGB"), dtype=np.float32)
    assert all(abs(side - 80) <= 1 for side in pixels.shape[:2])  # 80 px, placed on a subpixel
    assert pixels[2:-2, 2:-2].std() > 10  # a digit under a map, not a blank canvas
    assert f"of {SAMPLES}" in page.locator("#showing").text_content()
    page.click("#next")
    assert view.shown() == list(range(120, 240))
    cases = {
        ("sort", "score-desc"): _ordered(data, lambda i: -columns["score"][i]),
        ("sort", "score-asc"): _ordered(data, lambda i: columns["score"][i]),
        ("sort", "target"): _ordered(data, lambda i: columns["target"][i]),
        ("sort", "prediction"): _ordered(data, lambda i: columns["prediction"][i]),
        ("sort", "offset-desc"): _ordered(data, lambda i: -columns["offset"][i]),
        ("sort", "agreement-asc"): _ordered(data, lambda i: columns["agreement"][i]),
        ("sort", "inside-asc"): _ordered(data, lambda i: columns["inside"][i]),
    }
    for (select, value), expected in cases.items():
        view.choose(select, value)
        assert view.shown() == expected[:120], value
    view.choose("sort", "index")
    filters = {
        ("filter-target", "3"): lambda i: columns["target"][i] == 3,
        ("filter-prediction", "5"): lambda i: columns["prediction"][i] == 5,
        ("filter-correct", "incorrect"): lambda i: columns["target"][i] != columns["prediction"][i],
        ("filter-correct", "correct"): lambda i: columns["target"][i] == columns["prediction"][i],
    }
    for (select, value), keep in filters.items():
        view.choose(select, value)
        expected = _ordered(data, lambda i: 0, keep)
        assert view.shown() == expected[:120], (select, value)
        assert f"of {len(expected)}" in page.locator("#showing").text_content() or not expected
        view.choose(select, "")
    assert any(columns["target"][i] != columns["prediction"][i] for i in range(SAMPLES))
    page.fill("#filter-source", "3/")
    assert view.shown() == _ordered(
        data, lambda i: 0, lambda i: columns["source"][i].startswith("3/")
    )
    page.fill("#filter-source", "")
    # the detail view of the 8th sample shown, sorted by score
    view.choose("sort", "score-asc")
    chosen = view.shown()[7]
    page.locator("#grid .item").nth(7).click()
    detail = page.locator("#detail")
    assert detail.is_visible() and detail.get_attribute("data-index") == str(chosen)
    fields = dict(
        zip(
            page.locator("#record th").all_text_contents(),
            page.locator("#record td").all_text_contents(),
            strict=True,
        )
    )
    assert fields["index"] == str(chosen)
    assert fields["source"] == columns["source"][chosen]
    assert fields["class"] == f"digit {columns['target'][chosen]}"
    assert float(fields["score"]) == pytest.approx(columns["score"][chosen])
    page.fill("#opacity", "80")
    page.locator("#opacity").dispatch_event("input")
    opacity = page.locator("#detail-overlay .layer.map").evaluate("layer => layer.style.opacity")
    assert opacity == "0.8"
    page.keyboard.press("Escape")
    assert not detail.is_visible()
    # the per-class summary
    page.click("#tab-classes")
    rows = page.locator("#class-table tbody tr")
    assert rows.count() == len(data["summary"]["classes"])
    page.click("#sort-classes")
    by_offset = sorted(data["summary"]["classes"], key=lambda r: (-r["offset"], r["class"]))
    shown = rows.evaluate_all("rows => rows.map(row => Number(row.dataset.class))")
    assert shown == [r["class"] for r in by_offset]
    page.click("#sort-classes-inside")
    by_inside = sorted(data["summary"]["classes"], key=lambda r: (r["inside"], r["class"]))
    shown = rows.evaluate_all("rows => rows.map(row => Number(row.dataset.class))")
    assert shown == [r["class"] for r in by_inside]
    assert all(u.startswith("file://") for u in view.requests), view.requests
    assert not view.errors, view.errors
    page.close()


def test_the_docs_screenshot_is_the_page(browser: Any, site: Path) -> None:
    """Takes the screenshot the "Whole datasets" page shows (written there with
    CAMKIT_SCREENSHOTS=1; otherwise checked to exist)."""
    view = Page(browser, site)
    view.choose("sort", "agreement-asc")
    view.page.locator("#grid .item").nth(2).click()
    shot = view.page.screenshot()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("CAMKIT_SCREENSHOTS"):
        SCREENSHOT.write_bytes(shot)
    assert SCREENSHOT.is_file()
    assert not view.errors
    view.page.close()


def test_a_page_of_maps_alone_offers_only_what_it_has(
    browser: Any, stores: tuple[camkit.MapStore, camkit.MapStore], tmp_path: Path
) -> None:
    camkit.view(stores[0], tmp_path, progress=False)  # no images, no second store, no masks
    view = Page(browser, tmp_path)
    page = view.page
    page.wait_for_selector('#grid[data-drawn="1"]')
    options = page.locator("#sort option").evaluate_all("options => options.map(o => o.value)")
    assert "agreement-asc" not in options and "inside-asc" not in options
    assert page.locator("#class-table th.inside").count() == 0
    page.locator("#grid .item").first.click()
    assert page.locator("#detail-image-figure").is_hidden()
    assert page.locator("#detail-other-figure").is_hidden()
    assert "agreement" not in page.locator("#record").text_content()
    assert not view.errors, view.errors
    assert all(u.startswith("file://") for u in view.requests)
    page.close()

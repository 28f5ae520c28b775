"""Overlays checked pixel by pixel, rendered headless with Agg."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from camkit import CamkitTypeError, CamkitValueError
from camkit.plot import blend, compare, grid, overlay


def _corner_map(h: int = 6, w: int = 5) -> torch.Tensor:
    cam = torch.zeros(h, w)
    cam[0, 0] = 1.0
    return cam


@pytest.mark.parametrize("cmap", ["jet", "viridis"])
def test_hot_corner_gets_the_top_colour_and_the_rest_stays_the_image(cmap: str) -> None:
    image = torch.rand(3, 6, 5)
    out = blend(image, _corner_map(), cmap=cmap, alpha=1.0)
    top = np.asarray(mpl.colormaps[cmap](1.0)[:3])
    np.testing.assert_allclose(out[0, 0], top, atol=1e-6)
    rest = np.ones((6, 5), dtype=bool)
    rest[0, 0] = False
    np.testing.assert_allclose(out[rest], image.permute(1, 2, 0).numpy()[rest], atol=1e-6)


def test_alpha_blends_linearly() -> None:
    image = torch.full((1, 2, 2), 0.5)
    cam = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    out = blend(image, cam, cmap="gray", alpha=0.5)
    # gray(m) = m; pixel (0, 0): (1 - 0.5) * 0.5 + 0.5 * 1 = 0.75; (0, 1): m=0.5, w=0.25:
    # 0.75 * 0.5 + 0.25 * gray(0.5) ~ 0.5 (gray's 256-entry table rounds 0.5 slightly)
    np.testing.assert_allclose(out[0, 0], [0.75] * 3, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.5] * 3, atol=3e-3)
    np.testing.assert_allclose(out[1, 1], [0.5] * 3, atol=1e-6)


@pytest.mark.parametrize(
    "image",
    [
        torch.rand(6, 5),
        torch.rand(1, 6, 5),
        torch.rand(3, 6, 5),
        np.random.rand(6, 5, 3),
        np.random.rand(6, 5, 1).astype(np.float32),
        torch.rand(3, 6, 5, dtype=torch.float64),
    ],
    ids=["hw-tensor", "1hw", "3hw", "hw3-array", "hw1-array", "float64"],
)
def test_accepted_image_layouts(image: object) -> None:
    out = blend(image, torch.rand(6, 5))  # type: ignore[arg-type]
    assert out.shape == (6, 5, 3)
    assert out.dtype == np.float64
    assert out.min() >= 0
    assert out.max() <= 1


def test_standardized_images_are_restored() -> None:
    raw = torch.rand(3, 4, 4)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    standardized = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    out = blend(standardized, torch.zeros(4, 4), mean=mean, std=std)
    np.testing.assert_allclose(out, raw.permute(1, 2, 0).numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("image", "cam", "error", "message"),
    [
        (torch.rand(3, 6, 5), torch.rand(6, 4), CamkitValueError, r"does not match"),
        (torch.rand(3, 6, 5), torch.rand(1, 6, 5), CamkitValueError, r"cam: expected an \(H, W\)"),
        (torch.rand(2, 6, 5), torch.rand(6, 5), CamkitValueError, r"image: expected"),
        (torch.rand(1, 1, 6, 5), torch.rand(6, 5), CamkitValueError, r"image: expected"),
        ([[0.0]], torch.rand(1, 1), CamkitTypeError, r"image: expected a tensor"),
    ],
)
def test_bad_input(image: object, cam: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        blend(image, cam)  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match="alpha"):
        blend(torch.rand(2, 2), torch.rand(2, 2), alpha=1.5)


def test_overlay_draws_the_blend_and_returns_axes(tmp_path: Path) -> None:
    image, cam = torch.rand(3, 6, 5), _corner_map()
    ax = overlay(image, cam, title="t", colorbar=True, alpha=1.0)
    drawn = ax.get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn), blend(image, cam, alpha=1.0))
    assert len(ax.figure.axes) == 2  # the colorbar
    ax.figure.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0


def test_grid_layout_and_errors() -> None:
    fig = grid(torch.rand(5, 1, 6, 5), [*torch.rand(4, 6, 5), None], titles=list("abcde"), ncols=2)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6
    assert [a.get_title() for a in fig.axes[:5]] == list("abcde")
    with pytest.raises(CamkitValueError, match="one of each per panel"):
        grid(torch.rand(2, 1, 4, 4), torch.rand(3, 4, 4))


def test_compare_classes_and_methods() -> None:
    image = torch.rand(1, 6, 5)
    by_class = compare(image, torch.rand(4, 6, 5), scores=[0.5, 0.25, 0.125, 0.0625], ncols=3)
    titles = [a.get_title() for a in by_class.axes if a.get_title()]
    assert titles == ["input", "class 0: 0.5", "class 1: 0.25", "class 2: 0.125", "class 3: 0.0625"]
    maps = {"Grad-CAM": torch.rand(6, 5), "HiResCAM": _corner_map()}
    by_method = compare(image, maps)
    assert [a.get_title() for a in by_method.axes] == ["input", "Grad-CAM", "HiResCAM"]
    drawn = by_method.axes[2].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn), blend(image, _corner_map()))
    with pytest.raises(CamkitValueError, match="scores: got 1 scores for 2 maps"):
        compare(image, maps, scores=[1.0])

"""Overlays checked pixel by pixel, rendered headless with Agg."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from camkit import CamkitTypeError, CamkitValueError, plot
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
        (torch.rand(3, 6, 5), torch.rand(1, 6, 5), CamkitValueError, r"cam: expected an \(H, W\)"),
        (torch.rand(3, 6, 5), torch.rand(6, 5) * 3, CamkitValueError,
         r"cam: values must lie in \[0, 1\], got 0.* to 2.*normalize=True"),
        (torch.rand(3, 6, 5), torch.full((6, 5), torch.nan), CamkitValueError,
         r"cam: holds 30 NaN or infinite value\(s\)"),
        (torch.randn(3, 6, 5), torch.rand(6, 5), CamkitValueError,
         r"image: values must lie in \[0, 1\].*give mean= and std="),
        (np.full((6, 5, 3), 200.0), torch.rand(6, 5), CamkitValueError,
         r"image: values must lie in \[0, 1\], got 200 to 200.*uint8"),
        (torch.rand(2, 6, 5), torch.rand(6, 5), CamkitValueError, r"image: expected"),
        (torch.rand(1, 1, 6, 5), torch.rand(6, 5), CamkitValueError, r"image: expected"),
        ([[0.0]], torch.rand(1, 1), CamkitTypeError, r"image: expected a tensor"),
    ],
)  # fmt: skip
def test_bad_input(image: object, cam: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        blend(image, cam)  # type: ignore[arg-type]
    with pytest.raises(CamkitValueError, match="alpha"):
        blend(torch.rand(2, 2), torch.rand(2, 2), alpha=1.5)


def test_uint8_images_are_read_as_0_to_255() -> None:
    """A uint8 image (as PIL and OpenCV give them) blends as its [0, 1] float twin; before,
    its values were clipped to 1, a white picture."""
    pixels = torch.randint(0, 256, (3, 6, 5), dtype=torch.uint8)
    cam = torch.rand(6, 5)
    expected = blend(pixels.double() / 255, cam)
    np.testing.assert_array_equal(blend(pixels, cam), expected)
    hwc = pixels.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(blend(hwc, cam), expected)


def test_a_map_at_a_layer_resolution_is_resized_as_camkit_resizes() -> None:
    """A map of another size than the image is upsampled bilinearly (align_corners=False),
    as torch.nn.functional.interpolate does, before it is blended."""
    image, small = torch.rand(3, 12, 10), torch.rand(3, 5)
    resized = torch.nn.functional.interpolate(
        small.double()[None, None], size=(12, 10), mode="bilinear", align_corners=False
    )[0, 0]
    # the same interpolation by matrix products: float64 rounding, values at most 1
    np.testing.assert_allclose(blend(image, small), blend(image, resized), rtol=0, atol=1e-12)


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


def test_orthogonal_slices_cut_through_the_peak_and_show_each_cut() -> None:
    torch.manual_seed(0)
    volume = torch.rand(1, 6, 7, 8) * 1000 - 500  # any intensity scale, such as CT's
    cam = torch.zeros(6, 7, 8)
    cam[4, 1, 6] = 1.0
    fig = plot.orthogonal_slices(volume, cam, window=(-500, 500), alpha=1.0)
    assert [ax.get_title() for ax in fig.axes] == ["axial d=4", "coronal h=1", "sagittal w=6"]
    shown = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert [s.shape[:2] for s in shown] == [(7, 8), (6, 8), (6, 7)]
    top = np.array(mpl.colormaps["jet"](1.0)[:3])
    # the peak is drawn in the colormap's top colour, at (row, column) of each cut
    for picture, (row, col) in zip(shown, [(1, 6), (4, 6), (4, 1)], strict=True):
        np.testing.assert_allclose(picture[row, col], top)
    grey = (volume[0, 4].numpy() + 500) / 1000  # the window maps -500..500 to black..white
    np.testing.assert_allclose(shown[0][0, 0], [grey[0, 0]] * 3, atol=1e-6)
    plt.close(fig)
    chosen = plot.orthogonal_slices(volume[0], cam, point=(0, 0, 0))
    assert chosen.axes[0].get_title() == "axial d=0"
    plt.close(chosen)


def test_slice_grid_spreads_the_slices_along_the_axis() -> None:
    fig = plot.slice_grid(torch.rand(5, 9, 4), torch.rand(5, 9, 4), axis=1, count=3)
    assert [ax.get_title() for ax in fig.axes] == ["h=0", "h=4", "h=8"]
    assert fig.axes[0].get_images()[0].get_array().shape[:2] == (5, 4)
    plt.close(fig)


def test_frame_strip_shows_each_frame_with_its_own_map() -> None:
    clip = torch.zeros(3, 4, 6, 6)
    cams = torch.zeros(4, 6, 6)
    for t in range(4):
        cams[t, t, t] = 1.0  # frame t's hot spot at (t, t)
    fig = plot.frame_strip(clip, cams, frames=[1, 3], alpha=1.0)
    assert [ax.get_title() for ax in fig.axes] == ["t=1", "t=3"]
    for ax, t in zip(fig.axes, [1, 3], strict=True):
        picture = ax.get_images()[0].get_array()
        others = [u for u in range(4) if u != t]
        assert float(picture[others, others].sum()) == 0  # the other frames' spots are not here
        np.testing.assert_allclose(picture[t, t], mpl.colormaps["jet"](1.0)[:3])
    plt.close(fig)


def test_animate_writes_a_gif_with_a_frame_per_map(tmp_path: Path) -> None:
    from PIL import Image

    path = plot.animate(torch.rand(4, 8, 8), torch.rand(4, 8, 8), tmp_path / "clip.gif", fps=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
    volume = plot.animate(
        torch.rand(1, 5, 8, 8), torch.rand(5, 8, 8), tmp_path / "v.gif", volume=True
    )
    with Image.open(volume) as gif:
        assert gif.n_frames == 5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: plot.animate(torch.rand(4, 8, 8), torch.rand(3, 8, 8), p / "a.gif"), "cams:"),
        (lambda p: plot.animate(torch.rand(4, 8, 8), torch.rand(4, 8, 8), p / "a.png"), "path:"),
        (
            lambda p: plot.animate(torch.rand(2, 4, 4), torch.rand(2, 4, 4), p / "a.gif", fps=0),
            "fps:",
        ),
        (lambda p: plot.orthogonal_slices(torch.rand(4, 4, 4), torch.rand(4, 4)), "cam:"),
        (
            lambda p: plot.orthogonal_slices(
                torch.rand(4, 4, 4), torch.rand(4, 4, 4), point=(4, 0, 0)
            ),
            "point:",
        ),
        (lambda p: plot.slice_grid(torch.rand(4, 4, 4), torch.rand(4, 4, 4), axis=3), "axis:"),
        (
            lambda p: plot.slice_grid(torch.rand(4, 4, 4), torch.rand(4, 4, 4), window=(1, 1)),
            "window:",
        ),
        (
            lambda p: plot.frame_strip(torch.rand(3, 2, 4, 4), torch.rand(2, 4, 4), frames=[2]),
            "frames:",
        ),
    ],
)
def test_volume_and_video_plots_refuse_bad_input(
    tmp_path: Path, call: Callable[[Path], object], message: str
) -> None:
    with pytest.raises(CamkitValueError, match=f"^{message}"):
        call(tmp_path)
    plt.close("all")


def test_an_mp4_without_ffmpeg_is_refused_clearly(tmp_path: Path) -> None:
    from matplotlib import animation

    if animation.writers.is_available("ffmpeg"):
        path = plot.animate(torch.rand(3, 8, 8), torch.rand(3, 8, 8), tmp_path / "clip.mp4")
        assert path.stat().st_size > 0
    else:
        with pytest.raises(CamkitValueError, match="needs the ffmpeg program"):
            plot.animate(torch.rand(3, 8, 8), torch.rand(3, 8, 8), tmp_path / "clip.mp4")


def test_tokens_shows_each_token_or_span_with_its_map() -> None:
    maps = torch.zeros(3, 6, 6)
    maps[0, 0, 0], maps[1, 0, 0], maps[1, 5, 5], maps[2, 3, 3] = 1.0, 1.0, 1.0, 1.0
    fig = plot.tokens(torch.zeros(1, 6, 6), maps, ["sev", "en", " left"],
                      spans=[(0, 2), (2, 3)], alpha=1.0)  # fmt: skip
    assert [ax.get_title() for ax in fig.axes] == ["seven", "left"]
    assert fig.texts[0].get_text() == "seven left"  # the answer as the title
    top = np.array(mpl.colormaps["jet"](1.0)[:3])
    merged = fig.axes[0].get_images()[0].get_array()  # the mean of tokens 0 and 1, rescaled
    np.testing.assert_allclose(merged[0, 0], top)
    half = 0.5 * np.array(mpl.colormaps["jet"](0.5)[:3])  # opacity 0.5 over a black image
    np.testing.assert_allclose(merged[5, 5], half, atol=1e-6)
    np.testing.assert_allclose(fig.axes[1].get_images()[0].get_array()[3, 3], top)
    plt.close(fig)
    every = plot.tokens(torch.zeros(1, 6, 6), maps, ["a", "b", "c"])
    assert [ax.get_title() for ax in every.axes] == ["a", "b", "c"]
    plt.close(every)
    with pytest.raises(CamkitValueError, match=r"^words:"):
        plot.tokens(torch.zeros(1, 6, 6), maps, ["a"])
    with pytest.raises(CamkitValueError, match=r"^spans:"):
        plot.tokens(torch.zeros(1, 6, 6), maps, ["a", "b", "c"], spans=[(2, 2)])


def test_values_past_0_or_1_by_rounding_alone_are_clipped_not_refused() -> None:
    """A float32 resize can leave a value a unit of rounding past 1; that is still [0, 1]."""
    image, cam = torch.rand(3, 6, 5), torch.rand(6, 5)
    cam[0, 0], image[0, 0, 0] = 1 + 2**-23, 1 + 2**-23  # float32's next value after 1
    np.testing.assert_array_equal(blend(image, cam), blend(image.clamp(0, 1), cam.clamp(0, 1)))

"""Overlaying maps on images with matplotlib, imported only when used.

:func:`blend` computes the overlay as an array; :func:`overlay` draws it on
matplotlib axes; :func:`grid` lays many overlays out in one figure. The
overlay's opacity grows with the map, so where the map is 0 the image shows
through unchanged and where it is 1 the colormap's top colour is blended in
at ``alpha``.

Volumes and clips: :func:`orthogonal_slices` cuts a 3D map and its volume
through the map's peak, :func:`slice_grid` shows evenly spaced slices,
:func:`frame_strip` a clip's frames with their maps, and :func:`animate`
writes either as an animated GIF (or MP4 where ffmpeg is installed).
Volumes keep their own intensities (CT in Hounsfield units, MRI in any
scale): ``window=(low, high)`` sets the grey range, the volume's 1st to
99th percentile by default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from camkit._engine import map_ops
from camkit._engine.option_checks import check_colormap, int_sequence
from camkit.errors import CamkitTypeError, CamkitValueError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "animate",
    "blend",
    "compare",
    "concepts",
    "frame_strip",
    "grid",
    "orthogonal_slices",
    "overlay",
    "slice_grid",
    "tokens",
]

ArrayLike = Tensor | np.ndarray


def blend(
    image: ArrayLike,
    cam: ArrayLike,
    *,
    cmap: str = "jet",
    alpha: float = 0.6,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> np.ndarray:
    """Blend a map into an image, returning an ``(H, W, 3)`` float array in [0, 1].

    Args:
        image: ``(H, W)`` grayscale, ``(C, H, W)`` tensor or ``(H, W, C)`` array
            with ``C`` 1 or 3; values in [0, 1] (or ``uint8``, 0 to 255) unless
            ``mean``/``std`` are given.
        cam: ``(H, W)`` map with values in [0, 1], as camkit returns them; a map
            of another size (at a layer's resolution) is resized to the image
            bilinearly, as camkit's explainers resize theirs.
        cmap: A matplotlib colormap name.
        alpha: Opacity where the map is 1; it falls linearly to 0 where the map is 0.
        mean: Per-channel (or single) mean used to standardize ``image``; undone here.
        std: Per-channel (or single) std used to standardize ``image``; undone here.

    Returns:
        ``(1 - alpha * m) * image + alpha * m * cmap(m)`` with ``m`` the map.

    Raises:
        CamkitValueError: If ranks are wrong, the map holds values outside [0, 1]
            (NaN included), or the image, with neither ``mean`` nor ``std``, holds
            float values outside [0, 1] (a standardized image, or one in 0 to 255:
            clipped to [0, 1], it would draw a misleading picture).

    Example:
        >>> import torch
        >>> blend(torch.zeros(1, 4, 4), torch.ones(4, 4), alpha=1.0).shape
        (4, 4, 3)
    """
    import matplotlib as mpl

    _check_style(cmap, alpha, mean, std)
    rgb = _as_rgb(image, mean, std)
    m = _as_map(cam, "cam")
    if m.ndim != 2:
        raise CamkitValueError(f"cam: expected an (H, W) map, got shape {m.shape}")
    if m.shape != rgb.shape[:2]:  # a map at a layer's resolution: resized as camkit's are
        m = map_ops.upsample(torch.from_numpy(m)[None], rgb.shape[:2])[0].numpy()
    colours = mpl.colormaps[cmap](m)[..., :3]
    weight = alpha * m[..., None]
    return np.asarray(np.clip((1 - weight) * rgb + weight * colours, 0.0, 1.0))


def overlay(
    image: ArrayLike,
    cam: ArrayLike,
    *,
    ax: Axes | None = None,
    cmap: str = "jet",
    alpha: float = 0.6,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    title: str | None = None,
    colorbar: bool = False,
) -> Axes:
    """Draw a map over its image on matplotlib axes.

    Args:
        image: The image, as for :func:`blend`.
        cam: The ``(H, W)`` map, values in [0, 1] (resized to the image as for
            :func:`blend`).
        ax: Axes to draw on; a new figure is made when ``None``.
        cmap: A matplotlib colormap name.
        alpha: Opacity where the map is 1.
        mean: Standardization mean to undo, as for :func:`blend`.
        std: Standardization std to undo, as for :func:`blend`.
        title: Axes title.
        colorbar: Add a colorbar for the map's scale.

    Returns:
        The axes drawn on, for further composition.

    Example:
        >>> import torch
        >>> ax = overlay(torch.rand(3, 8, 8), torch.rand(8, 8), title="class 3")
        >>> ax.get_title()
        'class 3'
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    _check_axes(ax)
    picture = blend(image, cam, cmap=cmap, alpha=alpha, mean=mean, std=std)  # checked first
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(picture)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=9)
    if colorbar:
        mappable = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
        ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)
    return ax


def grid(
    images: Sequence[ArrayLike] | Tensor,
    cams: Sequence[ArrayLike | None] | Tensor,
    *,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    cmap: str = "jet",
    alpha: float = 0.6,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    size: float = 1.6,
    suptitle: str | None = None,
) -> Figure:
    """Lay out overlays in a grid: many images with one map each, or one image many times.

    Args:
        images: The images, one per panel (repeat an image to show many of its maps).
        cams: One map per panel; ``None`` shows the plain image.
        titles: One title per panel.
        ncols: Panels per row.
        cmap: A matplotlib colormap name.
        alpha: Opacity where a map is 1.
        mean: Standardization mean to undo.
        std: Standardization std to undo.
        size: Panel size in inches.
        suptitle: Figure title.

    Returns:
        The figure; save it with ``fig.savefig(path)``.

    Example:
        >>> import torch
        >>> fig = grid(torch.rand(5, 1, 8, 8), torch.rand(5, 8, 8), ncols=3)
        >>> len(fig.axes)
        6
    """
    import matplotlib.pyplot as plt

    _check_style(cmap, alpha, mean, std, ncols, size)
    if titles is not None and (
        isinstance(titles, str)
        or not isinstance(titles, Sequence)
        or not all(isinstance(t, str) for t in titles)
    ):
        raise CamkitValueError(f"titles: got {titles!r}; allowed: a list of strings, or None")
    if len(images) != len(cams) or (titles is not None and len(titles) != len(images)):
        raise CamkitValueError(
            f"cams: got {len(images)} images, {len(cams)} maps and "
            f"{'no' if titles is None else len(titles)} titles; give one of each per panel"
        )
    if len(images) == 0 or ncols < 1:
        raise CamkitValueError(f"images: need at least one panel and ncols >= 1, got ncols={ncols}")
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    title_room = 0.3 if titles is not None else 0.05
    top_room = title_room + (0.45 if suptitle else 0.0)
    height = nrows * (size + title_room) + top_room - title_room + 0.05
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, height), squeeze=False)
    fig.subplots_adjust(  # fixed margins: much faster than tight_layout for many panels
        left=0.01,
        right=0.99,
        bottom=0.05 / height,
        top=1 - top_room / height,
        wspace=0.05,
        hspace=title_room / size,
    )
    for i, ax in enumerate(axes.flat):
        if i >= len(images):
            ax.set_axis_off()
            continue
        cam = cams[i]
        title = None if titles is None else titles[i]
        if cam is None:
            ax.imshow(_as_rgb(images[i], mean, std))
            ax.set_axis_off()
            if title is not None:
                ax.set_title(title, fontsize=9)
        else:
            overlay(images[i], cam, ax=ax, cmap=cmap, alpha=alpha, mean=mean, std=std, title=title)
    if suptitle:
        fig.suptitle(suptitle, y=1 - 0.1 / height, va="top")
    return fig


def compare(
    image: ArrayLike,
    cams: dict[str, ArrayLike] | Sequence[ArrayLike] | Tensor,
    *,
    scores: Sequence[float] | Tensor | None = None,
    ncols: int = 6,
    cmap: str = "jet",
    alpha: float = 0.6,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    suptitle: str | None = None,
) -> Figure:
    """One image with many maps: one per class (a ``(k, H, W)`` tensor) or per method (a dict).

    The first panel shows the plain image. Titles are the dict's keys, or
    ``class i`` for a sequence, followed by the score when ``scores`` is given.

    Args:
        image: The image, as for :func:`blend`.
        cams: ``{title: map}`` (for instance one map per method), or ``k`` maps
            (for instance ``cam(x, torch.arange(10).expand(n, 10))[i]``).
        scores: One score per map (a probability, a logit), shown in the titles.
        ncols: Panels per row.
        cmap: A matplotlib colormap name.
        alpha: Opacity where a map is 1.
        mean: Standardization mean to undo.
        std: Standardization std to undo.
        suptitle: Figure title.

    Returns:
        The figure.

    Example:
        >>> import torch
        >>> fig = compare(torch.rand(1, 8, 8), torch.rand(10, 8, 8), scores=torch.rand(10))
        >>> fig.axes[3].get_title()[:8]
        'class 2:'
    """
    if isinstance(cams, dict):
        titles, maps = list(cams), list(cams.values())
    else:
        maps = list(cams)
        titles = [f"class {i}" for i in range(len(maps))]
    if scores is not None:
        if isinstance(scores, (str, bytes)) or not isinstance(scores, (Sequence, Tensor)):
            raise CamkitValueError(f"scores: got {scores!r}; allowed: one number per map, or None")
        values = [float(v) for v in scores]
        if len(values) != len(maps):
            raise CamkitValueError(
                f"scores: got {len(values)} scores for {len(maps)} maps; give one per map"
            )
        titles = [f"{t}: {v:.3g}" for t, v in zip(titles, values, strict=True)]
    return grid(
        [image] * (len(maps) + 1),
        [None, *maps],
        titles=["input", *titles],
        ncols=ncols,
        cmap=cmap,
        alpha=alpha,
        mean=mean,
        std=std,
        suptitle=suptitle,
    )


def concepts(
    image: ArrayLike,
    maps: ArrayLike,
    *,
    labels: Sequence[str] | None = None,
    ax: Axes | None = None,
    cmap: str = "tab10",
    alpha: float = 0.7,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    title: str | None = None,
) -> Axes:
    """Draw several concepts' maps over one image, one colour per concept.

    Each pixel takes the colour of the concept whose map is largest there,
    blended in with opacity ``alpha`` times that map's value (as
    :func:`blend` does for one map), so that the concepts of a
    :class:`~camkit.DeepFeatureFactorization` show side by side.

    Args:
        image: The image, as for :func:`blend`.
        maps: ``(K, H, W)`` concept maps, values in [0, 1].
        labels: One legend entry per concept (such as the classes it votes for).
        ax: Axes to draw on; a new figure is made when ``None``.
        cmap: A qualitative matplotlib colormap; concept ``k`` gets its ``k``-th colour.
        alpha: Opacity where a map is 1.
        mean: Standardization mean to undo, as for :func:`blend`.
        std: Standardization std to undo, as for :func:`blend`.
        title: Axes title.

    Returns:
        The axes drawn on.

    Example:
        >>> import torch
        >>> ax = concepts(torch.rand(3, 8, 8), torch.rand(2, 8, 8), labels=["a", "b"])
        >>> len(ax.get_legend().get_texts())
        2
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    _check_style(cmap, alpha, mean, std)
    rgb = _as_rgb(image, mean, std)
    m = _as_map(maps, "maps")
    if m.ndim != 3 or m.shape[1:] != rgb.shape[:2]:
        raise CamkitValueError(
            f"maps: expected (K, H, W) maps with (H, W) = {rgb.shape[:2]}, got shape {m.shape}"
        )
    if labels is not None and (
        isinstance(labels, str)
        or not isinstance(labels, Sequence)
        or not all(isinstance(label, str) for label in labels)
    ):
        raise CamkitValueError(f"labels: got {labels!r}; allowed: one name per concept, or None")
    if labels is not None and len(labels) != len(m):
        raise CamkitValueError(f"labels: got {len(labels)} for {len(m)} concepts")
    palette = mpl.colormaps[cmap]
    colours = np.array([palette(k % palette.N)[:3] for k in range(len(m))])
    strongest = m.argmax(axis=0)
    weight = alpha * m.max(axis=0)[..., None]
    blended = (1 - weight) * rgb + weight * colours[strongest]
    _check_axes(ax)
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.clip(blended, 0.0, 1.0))
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=9)
    if labels is not None:
        handles = [Patch(color=colours[k], label=label) for k, label in enumerate(labels)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return ax


VIEWS = ("axial", "coronal", "sagittal")
"""The three orthogonal cuts of a ``(D, H, W)`` volume: across D, H and W."""


def orthogonal_slices(
    volume: ArrayLike,
    cam: ArrayLike,
    *,
    point: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    size: float = 2.4,
    suptitle: str | None = None,
) -> Figure:
    """A 3D map over its volume in three orthogonal cuts through one point (the map's peak).

    Args:
        volume: ``(D, H, W)``, or ``(1, D, H, W)`` as a one-channel model takes it.
        cam: The ``(D, H, W)`` map, values in [0, 1].
        point: The voxel ``(d, h, w)`` the cuts pass through; by default the
            map's largest value (the first, in C order, among equals).
        window: The intensities shown from black to white; the volume's 1st
            to 99th percentile by default.
        cmap: A matplotlib colormap name.
        alpha: Opacity where the map is 1.
        size: Panel size in inches.
        suptitle: Figure title.

    Returns:
        The figure: one panel per cut (axial: ``volume[d]``, coronal:
        ``volume[:, h]``, sagittal: ``volume[:, :, w]``), the point marked by a
        cross-hair and named in each title.

    Raises:
        CamkitValueError: If the shapes differ or the point lies outside the volume.

    Example:
        >>> import torch
        >>> cam = torch.zeros(6, 7, 8)
        >>> cam[2, 3, 4] = 1
        >>> fig = orthogonal_slices(torch.rand(1, 6, 7, 8), cam)
        >>> [ax.get_title() for ax in fig.axes]
        ['axial d=2', 'coronal h=3', 'sagittal w=4']
    """
    import matplotlib.pyplot as plt

    grey, m = _volume_and_map(volume, cam, "volume")
    if point is None:
        where = np.unravel_index(int(np.argmax(m)), m.shape)
        point = tuple(int(i) for i in where)
    if (
        not int_sequence(point)
        or len(point) != 3
        or not all(0 <= int(p) < n for p, n in zip(point, m.shape, strict=True))
    ):
        raise CamkitValueError(f"point: got {point!r}; allowed: (d, h, w) inside {m.shape}")
    d, h, w = (int(p) for p in point)
    grey = _windowed(grey, window)
    cuts = [
        (grey[d], m[d], (w, h)),
        (grey[:, h], m[:, h], (w, d)),
        (grey[:, :, w], m[:, :, w], (h, d)),
    ]
    _check_size(size)  # cmap and alpha are blend's to check
    fig, axes = plt.subplots(1, 3, figsize=(3 * size, size + (0.5 if suptitle else 0.3)))
    for ax, view, axis, value, (image, map_slice, (col, row)) in zip(
        axes, VIEWS, "dhw", (d, h, w), cuts, strict=True
    ):
        overlay(image, map_slice, ax=ax, cmap=cmap, alpha=alpha, title=f"{view} {axis}={value}")
        ax.axhline(row, color="white", linewidth=0.6, alpha=0.7)
        ax.axvline(col, color="white", linewidth=0.6, alpha=0.7)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def slice_grid(
    volume: ArrayLike,
    cam: ArrayLike,
    *,
    axis: int = 0,
    count: int = 12,
    ncols: int = 6,
    window: tuple[float, float] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    size: float = 1.6,
    suptitle: str | None = None,
) -> Figure:
    """Evenly spaced slices of a volume with its 3D map, in a grid.

    Args:
        volume: ``(D, H, W)``, or ``(1, D, H, W)``.
        cam: The ``(D, H, W)`` map, values in [0, 1].
        axis: The axis sliced across (0: axial, 1: coronal, 2: sagittal).
        count: How many slices, spread from the first to the last (at most
            the axis's length).
        ncols: Panels per row.
        window: Intensities from black to white, as for :func:`orthogonal_slices`.
        cmap: A matplotlib colormap name.
        alpha: Opacity where the map is 1.
        size: Panel size in inches.
        suptitle: Figure title.

    Returns:
        The figure, each panel titled with its slice's index.

    Example:
        >>> import torch
        >>> fig = slice_grid(torch.rand(10, 8, 8), torch.rand(10, 8, 8), count=4, ncols=4)
        >>> [ax.get_title() for ax in fig.axes]
        ['d=0', 'd=3', 'd=6', 'd=9']
    """
    grey, m = _volume_and_map(volume, cam, "volume")
    if axis not in (0, 1, 2):
        raise CamkitValueError(f"axis: got {axis!r}; allowed: 0, 1 or 2")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CamkitValueError(f"count: got {count!r}; allowed: a positive int")
    grey = np.moveaxis(_windowed(grey, window), axis, 0)
    m = np.moveaxis(m, axis, 0)
    picked = np.unique(np.linspace(0, len(m) - 1, min(count, len(m))).round().astype(int))
    name = "dhw"[axis]
    return grid(
        [grey[i] for i in picked],
        [m[i] for i in picked],
        titles=[f"{name}={i}" for i in picked],
        ncols=ncols,
        cmap=cmap,
        alpha=alpha,
        size=size,
        suptitle=suptitle,
    )


def frame_strip(
    clip: ArrayLike,
    cams: ArrayLike,
    *,
    frames: Sequence[int] | None = None,
    ncols: int = 8,
    cmap: str = "jet",
    alpha: float = 0.6,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    size: float = 1.6,
    suptitle: str | None = None,
) -> Figure:
    """A clip's frames with their maps, in a row (rows of ``ncols``).

    Args:
        clip: ``(C, T, H, W)`` as torchvision's video models take it (C 1 or 3),
            or ``(T, H, W)`` grayscale; values in [0, 1] unless ``mean``/``std``
            are given.
        cams: The ``(T, H, W)`` maps, one per frame, values in [0, 1].
        frames: The frames to show (all by default).
        ncols: Panels per row.
        cmap: A matplotlib colormap name.
        alpha: Opacity where a map is 1.
        mean: Standardization mean to undo, per channel.
        std: Standardization std to undo, per channel.
        size: Panel size in inches.
        suptitle: Figure title.

    Returns:
        The figure, each panel titled with its frame's index.

    Example:
        >>> import torch
        >>> fig = frame_strip(torch.rand(3, 4, 8, 8), torch.rand(4, 8, 8))
        >>> [ax.get_title() for ax in fig.axes]
        ['t=0', 't=1', 't=2', 't=3']
    """
    images, m = _frames_and_maps(clip, cams)
    if frames is not None and not int_sequence(frames):
        raise CamkitValueError(f"frames: got {frames!r}; allowed: a list of frame indices")
    chosen = list(range(len(m))) if frames is None else [int(t) for t in frames]
    if not chosen or not all(0 <= t < len(m) for t in chosen):
        raise CamkitValueError(f"frames: got {frames!r}; allowed: indices below {len(m)}")
    return grid(
        [images[t] for t in chosen],
        [m[t] for t in chosen],
        titles=[f"t={t}" for t in chosen],
        ncols=ncols,
        cmap=cmap,
        alpha=alpha,
        mean=mean,
        std=std,
        size=size,
        suptitle=suptitle,
    )


def animate(
    clip: ArrayLike,
    cams: ArrayLike,
    path: str | os.PathLike[str],
    *,
    fps: int = 4,
    volume: bool = False,
    window: tuple[float, float] | None = None,
    cmap: str = "jet",
    alpha: float = 0.6,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    size: float = 3.0,
) -> Path:
    """Write a clip's frames (or a volume's slices) with their maps as an animation.

    A ``.gif`` is written with Pillow, which matplotlib already depends on; an
    ``.mp4`` needs the ``ffmpeg`` program, and is refused with a clear error
    where matplotlib cannot find it.

    Args:
        clip: ``(C, T, H, W)`` or ``(T, H, W)`` as for :func:`frame_strip`; with
            ``volume=True``, a ``(D, H, W)`` or ``(1, D, H, W)`` volume whose
            axial slices are the frames.
        cams: ``(T, H, W)`` maps (``(D, H, W)`` for a volume), values in [0, 1].
        path: Where to write, ending in ``.gif`` or ``.mp4``.
        fps: Frames per second.
        volume: Read ``clip`` as a volume (intensities windowed, see ``window``).
        window: A volume's intensities from black to white, as for
            :func:`orthogonal_slices`.
        cmap: A matplotlib colormap name.
        alpha: Opacity where a map is 1.
        mean: A clip's standardization mean to undo.
        std: A clip's standardization std to undo.
        size: The frame's size in inches (at 100 dots per inch).

    Returns:
        The path written.

    Raises:
        CamkitValueError: For another suffix, an MP4 without ffmpeg, or shapes
            that do not match.
    """
    import matplotlib.pyplot as plt
    from matplotlib import animation

    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise CamkitValueError(f"path: got {str(path)!r}; allowed: a .gif or .mp4 file")
    if suffix == ".mp4" and not animation.writers.is_available("ffmpeg"):
        raise CamkitValueError(
            f"path: writing {target.name} needs the ffmpeg program, which matplotlib cannot "
            f"find; install ffmpeg or write a .gif"
        )
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise CamkitValueError(f"fps: got {fps!r}; allowed: a positive int")
    if volume:
        grey, m = _volume_and_map(clip, cams, "clip")
        slices = _windowed(grey, window)
        pictures = [blend(s, c, cmap=cmap, alpha=alpha) for s, c in zip(slices, m, strict=True)]
        label = "d"
    else:
        images, m = _frames_and_maps(clip, cams)
        pictures = [
            blend(f, c, cmap=cmap, alpha=alpha, mean=mean, std=std)
            for f, c in zip(images, m, strict=True)
        ]
        label = "t"
    _check_size(size)  # cmap and alpha were blend's to check
    fig, ax = plt.subplots(figsize=(size, size))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.9)
    ax.set_axis_off()
    shown = ax.imshow(pictures[0])
    title = ax.set_title(f"{label}=0", fontsize=9)

    def show(index: int) -> list[Any]:
        shown.set_data(pictures[index])
        title.set_text(f"{label}={index}")
        return [shown, title]

    movie = animation.FuncAnimation(fig, show, frames=len(pictures), blit=False)
    writer = (
        animation.PillowWriter(fps=fps) if suffix == ".gif" else animation.FFMpegWriter(fps=fps)
    )
    try:
        movie.save(target, writer=writer, dpi=100)
    finally:
        plt.close(fig)
    return target


def tokens(
    image: ArrayLike,
    maps: ArrayLike,
    words: Sequence[str],
    *,
    spans: Sequence[tuple[int, int]] | None = None,
    ncols: int = 6,
    cmap: str = "jet",
    alpha: float = 0.6,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    size: float = 1.8,
) -> Figure:
    """An answer's tokens (or word spans), each with its map over the image, the answer as
    the title: the figure of a :class:`~camkit.TokenTarget` explanation.

    Args:
        image: The image, as for :func:`blend`.
        maps: ``(k, H, W)``: one map per token, values in [0, 1] (``maps[i]`` of a
            ``(N, k, H, W)`` result).
        words: The ``k`` tokens as text (a processor's ``batch_decode`` of each id).
        spans: Token ranges ``(start, stop)`` to show as one panel each (a word made of
            several tokens, a phrase): the mean of their maps, scaled to [0, 1]. By
            default every token has its own panel.
        ncols: Panels per row.
        cmap: A matplotlib colormap name.
        alpha: Opacity where a map is 1.
        mean: Standardization mean to undo.
        std: Standardization std to undo.
        size: Panel size in inches.

    Returns:
        The figure: the answer as its title, one panel per token or span.

    Example:
        >>> import torch
        >>> fig = tokens(torch.rand(3, 8, 8), torch.rand(3, 8, 8), ["seven", " left", "."],
        ...              spans=[(0, 2), (2, 3)])
        >>> [ax.get_title() for ax in fig.axes]
        ['seven left', '.']
    """
    m = _as_map(maps, "maps")
    if m.ndim != 3 or len(words) != len(m):
        raise CamkitValueError(
            f"words: got {len(words)} words for maps of shape {m.shape}; give (k, H, W) maps "
            f"and one word per map"
        )
    if spans is not None and (
        not isinstance(spans, Sequence)
        or not all(isinstance(span, Sequence) and int_sequence(span) for span in spans)
    ):
        raise CamkitValueError(f"spans: got {spans!r}; allowed: (start, stop) pairs, or None")
    ranges = [(i, i + 1) for i in range(len(m))] if spans is None else list(spans)
    if not ranges or not all(0 <= a < b <= len(m) for a, b in ranges):
        raise CamkitValueError(
            f"spans: got {spans!r}; allowed: (start, stop) pairs with 0 <= start < stop <= {len(m)}"
        )
    panels, titles = [], []
    for a, b in ranges:
        merged = m[a:b].mean(axis=0)
        low, high = merged.min(), merged.max()
        panels.append((merged - low) / (high - low) if high > low else np.zeros_like(merged))
        titles.append("".join(words[a:b]).strip() or repr("".join(words[a:b])))
    return grid(
        [image] * len(panels),
        panels,
        titles=titles,
        ncols=ncols,
        cmap=cmap,
        alpha=alpha,
        mean=mean,
        std=std,
        size=size,
        suptitle="".join(words).strip(),
    )


def _volume_and_map(volume: Any, cam: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``(D, H, W)`` volume (a leading channel of 1 dropped) and its map of the same shape."""
    grey = _as_array(volume, name)
    if grey.ndim == 4 and grey.shape[0] == 1:
        grey = grey[0]
    m = _as_map(cam, "cam")
    if grey.ndim != 3 or m.shape != grey.shape:
        raise CamkitValueError(
            f"cam: expected a (D, H, W) map over a (D, H, W) or (1, D, H, W) {name}; got a map "
            f"of shape {m.shape} over a {name} of shape {tuple(np.shape(volume))}"
        )
    return grey, m


def _windowed(grey: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Intensities mapped to [0, 1]: ``window`` (or the 1st to 99th percentile) to black-white."""
    if window is None:
        low, high = (float(v) for v in np.percentile(grey, [1, 99]))
    else:
        if (
            not isinstance(window, (tuple, list))
            or len(window) != 2
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                for v in window
            )
        ):
            raise CamkitValueError(f"window: got {window!r}; allowed: (low, high), two numbers")
        low, high = (float(v) for v in window)
        if not high > low:
            raise CamkitValueError(f"window: got {window!r}; allowed: (low, high) with low < high")
    if not high > low:  # a constant volume
        return np.zeros_like(grey)
    return np.asarray(np.clip((grey - low) / (high - low), 0.0, 1.0))


def _frames_and_maps(clip: Any, cams: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """A clip's frames, each ``(H, W, C)`` or ``(H, W)``, and its ``(T, H, W)`` maps."""
    frames = _as_array(clip, "clip")
    if _is_uint8(clip):
        frames = frames / 255
    m = _as_map(cams, "cams")
    if frames.ndim == 4:
        frames = frames.transpose(1, 2, 3, 0)  # (C, T, H, W) -> (T, H, W, C)
    if frames.ndim not in (3, 4) or m.ndim != 3 or m.shape != frames.shape[:3]:
        raise CamkitValueError(
            f"cams: expected (T, H, W) maps for a (C, T, H, W) or (T, H, W) clip; got maps of "
            f"shape {m.shape} for a clip of shape {tuple(np.shape(clip))}"
        )
    return list(frames), m


def _as_map(value: Any, name: str) -> np.ndarray:
    """Maps as a float64 array, checked to hold values in [0, 1] (camkit's explainers scale
    theirs so): a raw map clipped to [0, 1] would draw a misleading picture."""
    m = _as_array(value, name)
    _check_unit_range(m, name, "; scale each map to [0, 1] (camkit's explainers do, with "
                      "normalize=True)")  # fmt: skip
    return np.asarray(np.clip(m, 0.0, 1.0))  # past [0, 1] by rounding at most


def _check_unit_range(values: np.ndarray, name: str, advice: str) -> None:
    problem = map_ops.unit_range_problem(torch.from_numpy(values))
    if problem:
        raise CamkitValueError(f"{name}: {problem}{advice}")


def _is_uint8(value: Any) -> bool:
    return (isinstance(value, Tensor) and value.dtype == torch.uint8) or (
        isinstance(value, np.ndarray) and value.dtype == np.uint8
    )


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        tensor = value.detach().cpu()  # float64 kept whole, any other dtype as float32
        tensor = tensor if tensor.dtype == torch.float64 else tensor.float()
        return np.asarray(tensor.numpy(), dtype=np.float64)
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    raise CamkitTypeError(f"{name}: expected a tensor or numpy array, got {type(value).__name__}")


def _as_rgb(
    image: Any, mean: Sequence[float] | float | None, std: Sequence[float] | float | None
) -> np.ndarray:
    img = _as_array(image, "image")
    if _is_uint8(image):
        img = img / 255
    elif mean is None and std is None:
        _check_unit_range(img, "image", "; for a standardized image give mean= and std=; "
                          "scale any other to [0, 1] (clamp one that noise pushed out), or "
                          "give it as uint8")  # fmt: skip
    if img.ndim == 3 and isinstance(image, Tensor):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise CamkitValueError(
            f"image: expected (H, W), a (C, H, W) tensor or an (H, W, C) array with C 1 or 3, "
            f"got shape {tuple(np.shape(image))}"
        )
    if std is not None:
        img = img * np.asarray(std, dtype=np.float64).reshape(1, 1, -1)
    if mean is not None:
        img = img + np.asarray(mean, dtype=np.float64).reshape(1, 1, -1)
    return np.asarray(np.clip(np.broadcast_to(img, (*img.shape[:2], 3)), 0.0, 1.0))


def _check_style(
    cmap: object,
    alpha: object,
    mean: object = None,
    std: object = None,
    ncols: object = 1,
    size: object = 1.0,
) -> None:
    """Refuse drawing options of the wrong kind, each by name, before anything is drawn."""
    check_colormap(cmap)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise CamkitValueError(f"alpha: got {alpha!r}; allowed: a number in [0, 1]")
    for name, value in (("mean", mean), ("std", std)):
        values = [value] if isinstance(value, (int, float)) else value
        if value is not None and (
            isinstance(value, (bool, str, bytes))
            or not isinstance(values, (Sequence, np.ndarray, Tensor))
            or len(values) not in (1, 3)
            or not all(
                isinstance(v, (int, float, np.floating, Tensor)) and not isinstance(v, bool)
                for v in values
            )
        ):
            raise CamkitValueError(
                f"{name}: got {value!r}; allowed: a number, or one per channel (1 or 3), or None"
            )
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise CamkitValueError(f"ncols: got {ncols!r}; allowed: a positive int")
    _check_size(size)


def _check_axes(ax: object) -> None:
    """Refuse an ``ax`` that is not matplotlib axes (or ``None``)."""
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        raise CamkitTypeError(f"ax: got {type(ax).__name__}; allowed: matplotlib axes, or None")


def _check_size(size: object) -> None:
    """Refuse a panel or figure size that is not a positive number of inches."""
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, float))
        or not (size > 0 and np.isfinite(size))
    ):
        raise CamkitValueError(f"size: got {size!r}; allowed: a positive number of inches")

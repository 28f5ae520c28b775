"""Overlaying maps on images with matplotlib, imported only when used.

:func:`blend` computes the overlay as an array; :func:`overlay` draws it on
matplotlib axes; :func:`grid` lays many overlays out in one figure. The
overlay's opacity grows with the map, so where the map is 0 the image shows
through unchanged and where it is 1 the colormap's top colour is blended in
at ``alpha``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from camkit.errors import CamkitTypeError, CamkitValueError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["blend", "compare", "concepts", "grid", "overlay"]

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
            with ``C`` 1 or 3; values in [0, 1] unless ``mean``/``std`` are given.
        cam: ``(H, W)`` map with values in [0, 1], as camkit returns them.
        cmap: A matplotlib colormap name.
        alpha: Opacity where the map is 1; it falls linearly to 0 where the map is 0.
        mean: Per-channel (or single) mean used to standardize ``image``; undone here.
        std: Per-channel (or single) std used to standardize ``image``; undone here.

    Returns:
        ``(1 - alpha * m) * image + alpha * m * cmap(m)`` with ``m`` the map.

    Raises:
        CamkitValueError: If shapes do not match or ranks are wrong.

    Example:
        >>> import torch
        >>> blend(torch.zeros(1, 4, 4), torch.ones(4, 4), alpha=1.0).shape
        (4, 4, 3)
    """
    import matplotlib as mpl

    if not 0.0 <= alpha <= 1.0:
        raise CamkitValueError(f"alpha: got {alpha}; allowed: a number in [0, 1]")
    rgb = _as_rgb(image, mean, std)
    m = _as_array(cam, "cam")
    if m.ndim != 2:
        raise CamkitValueError(f"cam: expected an (H, W) map, got shape {m.shape}")
    if m.shape != rgb.shape[:2]:
        raise CamkitValueError(
            f"cam: map of shape {m.shape} does not match the image's {rgb.shape[:2]}"
        )
    m = np.clip(m, 0.0, 1.0)
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
        cam: The ``(H, W)`` map, values in [0, 1].
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

    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(blend(image, cam, cmap=cmap, alpha=alpha, mean=mean, std=std))
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

    if not 0.0 <= alpha <= 1.0:
        raise CamkitValueError(f"alpha: got {alpha}; allowed: a number in [0, 1]")
    rgb = _as_rgb(image, mean, std)
    m = _as_array(maps, "maps")
    if m.ndim != 3 or m.shape[1:] != rgb.shape[:2]:
        raise CamkitValueError(
            f"maps: expected (K, H, W) maps with (H, W) = {rgb.shape[:2]}, got shape {m.shape}"
        )
    if labels is not None and len(labels) != len(m):
        raise CamkitValueError(f"labels: got {len(labels)} for {len(m)} concepts")
    palette = mpl.colormaps[cmap]
    colours = np.array([palette(k % palette.N)[:3] for k in range(len(m))])
    strongest = m.argmax(axis=0)
    weight = alpha * np.clip(m.max(axis=0), 0.0, 1.0)[..., None]
    blended = (1 - weight) * rgb + weight * colours[strongest]
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


def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return np.asarray(value.detach().float().cpu().numpy(), dtype=np.float64)
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    raise CamkitTypeError(f"{name}: expected a tensor or numpy array, got {type(value).__name__}")


def _as_rgb(
    image: Any, mean: Sequence[float] | float | None, std: Sequence[float] | float | None
) -> np.ndarray:
    img = _as_array(image, "image")
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

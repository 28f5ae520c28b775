"""Test-time augmentation: explain transformed copies of the input and average the maps.

``cam.explain(x, target, augment=[...])`` runs the explained forward pass on
``x`` and on each augmented copy, brings every copy's map back to ``x``'s frame
with the augmentation's inverse, and averages them all (``x``'s own map
included). ``aug_smooth=True`` is ``augment=[horizontal_flip]``.

Every copy explains the classes of the pass on ``x`` (with ``target=None``,
``x``'s predicted classes, even where a copy would predict another class).

>>> import torch
>>> from torch import nn
>>> import camkit
>>> from camkit.augment import horizontal_flip, rotation, scaled
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
...                       nn.Flatten(), nn.Linear(16, 2))
>>> cam = camkit.GradCAM(model, "1")
>>> cam(torch.randn(3, 1, 8, 8), augment=[horizontal_flip, rotation(1), scaled(1.5)]).shape
torch.Size([3, 8, 8])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit._engine.option_checks import positive_number
from camkit.errors import CamkitValueError

__all__ = [
    "Augmentation",
    "horizontal_flip",
    "photometric",
    "rotation",
    "scaled",
    "vertical_flip",
]


@dataclass(frozen=True)
class Augmentation:
    """A transform of the input and the inverse that brings a map back to the input's frame.

    Attributes:
        apply: ``(N, C, *spatial) -> (N, C, *spatial')``, the augmented input.
        invert: ``(maps, size) -> maps``: maps ``(N, k, *spatial'')`` of the augmented
            input back to the frame (and spatial ``size``) of the maps of ``x``
            itself (the input's size, or the layer's with ``upsample=False``).
        name: For messages and ``repr``.
        moves_pixels: Whether ``apply`` moves pixels (a flip, a rotation); a target
            that scores positions (a segmentation mask, a box) is then refused.

    Example:
        >>> import torch
        >>> shift = Augmentation(
        ...     apply=lambda x: x.roll(2, dims=-1),
        ...     invert=lambda maps, size: maps.roll(-2, dims=-1),
        ...     name="shift right by 2",
        ... )
        >>> shift.apply(torch.arange(4.0)[None, None])
        tensor([[[2., 3., 0., 1.]]])
    """

    apply: Callable[[Tensor], Tensor]
    invert: Callable[[Tensor, tuple[int, ...]], Tensor]
    name: str = "custom"
    moves_pixels: bool = True


def _flip(axis: int, name: str) -> Augmentation:
    return Augmentation(lambda x: x.flip(axis), lambda maps, size: maps.flip(axis), name)


horizontal_flip = _flip(-1, "horizontal flip")
"""Mirror the last axis (width); the flip of ``aug_smooth``."""

vertical_flip = _flip(-2, "vertical flip")
"""Mirror the second-last axis (height)."""


def rotation(quarter_turns: int) -> Augmentation:
    """Rotate the last two axes by ``quarter_turns`` times 90 degrees (counter-clockwise).

    Example:
        >>> import torch
        >>> rotation(1).apply(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
        tensor([[[[2., 4.],
                  [1., 3.]]]])
    """
    if isinstance(quarter_turns, bool) or not isinstance(quarter_turns, int):
        raise _error("quarter_turns", quarter_turns, "an int (1 = 90 degrees)")
    return Augmentation(
        lambda x: torch.rot90(x, quarter_turns, dims=(-2, -1)),
        lambda maps, size: torch.rot90(maps, -quarter_turns, dims=(-2, -1)),
        f"rotation by {90 * quarter_turns} degrees",
    )


def scaled(factor: float) -> Augmentation:
    """Resize the input by ``factor`` ((bi/tri)linear); the map is resized back.

    Example:
        >>> import torch
        >>> scaled(2.0).apply(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 3, 16, 16])
    """
    factor = positive_number(factor, "factor")

    def apply(x: Tensor) -> Tensor:
        size = [max(1, round(s * factor)) for s in x.shape[2:]]
        return F.interpolate(x, size=size, mode=_MODES[x.dim()], align_corners=False)

    def invert(maps: Tensor, size: tuple[int, ...]) -> Tensor:
        return F.interpolate(maps, size=size, mode=_MODES[maps.dim()], align_corners=False)

    return Augmentation(apply, invert, f"scale by {factor:g}", moves_pixels=True)


def photometric(transform: Callable[[Tensor], Tensor], name: str = "photometric") -> Augmentation:
    """An augmentation of the values only (brightness, contrast, noise): no inverse needed.

    Example:
        >>> import torch
        >>> brighter = photometric(lambda x: 1.1 * x, "brightness x1.1")
        >>> brighter.invert(torch.ones(1, 1, 2, 2), (2, 2)).shape
        torch.Size([1, 1, 2, 2])
    """
    return Augmentation(transform, lambda maps, size: maps, name, moves_pixels=False)


_MODES = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _error(name: str, value: object, allowed: str) -> Exception:
    return CamkitValueError(f"{name}: got {value!r}; allowed: {allowed}")

"""Test-time augmentation inside a call: the augmented copies' maps, brought back and averaged.

The public side (the :class:`~camkit.augment.Augmentation` objects and the ready-made
ones) is :mod:`camkit.augment`; this is how a CAM's call uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor

from camkit._engine.pipeline import Request
from camkit._engine.targets import BoundTarget, CheckedTarget
from camkit.augment import Augmentation, horizontal_flip
from camkit.errors import CamkitTypeError, CamkitValueError


def augmentations_of(augment: Sequence[Augmentation], aug_smooth: bool) -> list[Augmentation]:
    """The checked augmentations of a call (``aug_smooth`` adds the horizontal flip)."""
    given: list[Any] = list(augment) if isinstance(augment, (list, tuple)) else [augment]
    augmentations: list[Augmentation] = []
    for augmentation in given:
        if not isinstance(augmentation, Augmentation):
            raise CamkitTypeError(
                f"augment: got {augmentation!r}; allowed: a list of camkit.augment.Augmentation "
                f"(horizontal_flip, vertical_flip, rotation(k), scaled(f), photometric(f) or "
                f"your own)"
            )
        augmentations.append(augmentation)
    return augmentations + ([horizontal_flip] if aug_smooth else [])


def averaged(
    request: Request,
    layer_maps: dict[str, Tensor],
    target: BoundTarget,
    augmentations: list[Augmentation],
    maps_of: Callable[[Request], dict[str, Tensor]],
) -> dict[str, Tensor]:
    """The mean of ``layer_maps`` (``x``'s, for the bound ``target``) and of each augmented
    copy's maps (``maps_of`` a request), each brought back to ``x``'s frame. Every copy
    explains the classes explained on ``x``."""
    fixed = request.target
    if target.classes is not None:
        fixed = CheckedTarget(target.classes, None, multi=True)
    total = dict(layer_maps)
    for augmentation in augmentations:
        copy = replace(request, x=augmentation.apply(request.x), target=fixed)
        for name, maps in maps_of(copy).items():
            size = tuple(total[name].shape[2:])
            back = augmentation.invert(maps, size)
            if back.shape != total[name].shape:
                raise CamkitValueError(
                    f"augment: {augmentation.name!r} brought a map of shape "
                    f"{tuple(maps.shape)} back as {tuple(back.shape)}; its inverse must "
                    f"give {tuple(total[name].shape)}, the shape of x's map"
                )
            total[name] = total[name] + back
    return {name: maps / (1 + len(augmentations)) for name, maps in total.items()}

"""Finishing maps, in one place: the ReLU, the upsampling, the fusion of layers, the scaling.

:func:`rectified_and_resized` turns a layer's signed map into the map at the
input's resolution; :func:`fused_and_scaled` fuses several layers' maps and
scales each to [0, 1]. In place on camkit's own tensors, or out of place (and
differentiable) for maps in the autograd graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camkit._engine import map_ops


def rectified_and_resized(
    maps: Tensor, relu: bool, size: tuple[int, ...] | None, differentiable: bool
) -> Tensor:
    """A layer's signed maps ``(N, k, *spatial)``: kept positive with ``relu``, resized to
    ``size`` (bi/tri)linearly unless it is ``None``."""
    if relu:
        maps = maps.clamp_min(0) if differentiable else maps.clamp_min_(0)
    if size is not None:
        resized = map_ops.upsample(maps.flatten(0, 1), size)
        maps = resized.view(*maps.shape[:2], *resized.shape[1:])
    return maps


FUSIONS = ("mean", "product")
"""How the maps of several layers become one."""


def fused_and_scaled(
    layer_maps: dict[str, Tensor], normalize: bool, differentiable: bool, fuse: str = "mean"
) -> tuple[Tensor, dict[str, Tensor]]:
    """The fused map and each layer's own, scaled to [0, 1] when ``normalize``.

    One layer's map is the result (``layer_maps`` shares it); several layers
    are fused as the mean (or the product) of their maps, each scaled to
    [0, 1] first. In place on camkit's own tensors, or out of place (and
    differentiable) for maps in the autograd graph.
    """
    scale = map_ops.scaled_maps if differentiable else map_ops.scale_maps_
    if len(layer_maps) == 1:
        ((name, only),) = layer_maps.items()
        maps = scale(only) if normalize else only
        return maps, {name: maps}  # shared, not copied: a copy would cost memory (see CAMResult)
    fresh = map_ops.scaled_maps if differentiable else lambda m: map_ops.scale_maps_(m.clone())
    stacked = torch.stack([fresh(m) for m in layer_maps.values()])
    fused = stacked.mean(0) if fuse == "mean" else stacked.prod(0)
    if not normalize:
        return fused, layer_maps
    return scale(fused), {n: scale(m) for n, m in layer_maps.items()}

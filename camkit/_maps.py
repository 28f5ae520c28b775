"""Turning activations and weights into maps: sum, ReLU, upsampling, scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def weighted_sum(activations: Tensor, weights: Tensor) -> Tensor:
    """``sum_k w_k A^k`` for ``(N, C)`` channel or ``(N, C, *spatial)`` pixel weights."""
    if weights.dim() == 2:
        weights = weights.view(*weights.shape, *([1] * (activations.dim() - 2)))
    return (weights * activations).sum(dim=1)


def upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize ``(N, *spatial)`` maps to ``size`` by (bi/tri)linear interpolation."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    resized = F.interpolate(
        maps.unsqueeze(1), size=size, mode=_MODES[len(size)], align_corners=False
    )
    return resized.squeeze(1)


def min_max_normalize(maps: Tensor) -> Tensor:
    """Scale each map to min 0 and max 1; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    scaled = (flat - low) / span.where(span > 0, 1.0)
    return scaled.view_as(maps)


def first_component(weighted: Tensor) -> Tensor:
    """Project ``(B, C, *spatial)`` on its first principal direction over channels.

    The SVD is of the uncentred ``pixels x channels`` matrix (as in Eigen-CAM);
    the sign is chosen so that the projection's sum is non-negative.
    """
    flat = weighted.flatten(2).transpose(1, 2)  # (B, pixels, C)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    projection: Tensor = flat @ vh[:, 0, :, None]  # (B, pixels, 1)
    sign = torch.where(projection.sum(dim=(1, 2), keepdim=True) < 0, -1.0, 1.0)
    return (projection * sign).view(weighted.shape[0], *weighted.shape[2:])

"""Turning activations and weights into maps: upsampling, scaling, principal components."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from camkit._engine.state import MATRICES


def _linear_weights(size_in: int, size_out: int) -> Tensor:
    """The ``(size_out, size_in)`` float64 matrix of 1-D linear interpolation, align_corners=False.

    Same source positions as ``torch.nn.functional.interpolate``: ``(i + 0.5) *
    in / out - 0.5``, clamped at 0, between pixels ``floor`` and ``floor + 1``.
    """
    source = (torch.arange(size_out, dtype=torch.float64) + 0.5) * size_in / size_out - 0.5
    source = source.clamp(min=0)
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = source - low
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights


def _matrix(size_in: int, size_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The interpolation matrix, kept between calls (see :mod:`camkit._engine.state`)."""
    key = (size_in, size_out, dtype, str(device))
    return MATRICES.get(key, lambda: _linear_weights(size_in, size_out).to(device, dtype))


def upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resize ``(N, *spatial)`` maps to ``size`` by (bi/tri)linear interpolation.

    Interpolation with ``align_corners=False`` is separable, so it runs as one
    small matrix product per axis, which is much faster on the CPU than
    ``torch.nn.functional.interpolate`` and gives the same values. The matrices
    are kept for later calls, at most 16 MiB of them (least recently used
    dropped first).
    """
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    if len(size) == 2:  # the common case: two products, no transposes, contiguous result
        rows = _matrix(maps.shape[1], size[0], maps.dtype, maps.device)
        cols = _matrix(maps.shape[2], size[1], maps.dtype, maps.device)
        # the columns as one plain product over every row of every map, then the rows as
        # one batched product: seven operations where matmul's broadcasting takes thirteen
        n, h, w = maps.shape
        wide = torch.mm(maps.reshape(n * h, w), cols.T).view(n, h, size[1])
        return torch.bmm(rows.expand(n, *rows.shape), wide)
    out = maps
    for axis, target in enumerate(size, start=1):
        if out.shape[axis] == target:
            continue
        weights = _matrix(out.shape[axis], target, out.dtype, out.device)
        out = (out.movedim(axis, -1) @ weights.T).movedim(-1, axis)
    return out.contiguous()


UNIT_ROUNDING = 1e-6
"""How far past 0 or 1 an image's or a map's values may lie and still count as in [0, 1]
(then clipped), where camkit.plot and camkit.view take images and maps: a few float32
units, what a resize or a colour conversion in float32 leaves."""


def unit_range_problem(values: Tensor) -> str:
    """What keeps ``values`` from lying in [0, 1] (up to :data:`UNIT_ROUNDING`), or ``""``."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        return f"holds {bad} NaN or infinite value(s); allowed: finite values in [0, 1]"
    if values.numel():
        low, high = float(values.min()), float(values.max())
        if low < -UNIT_ROUNDING or high > 1 + UNIT_ROUNDING:
            return f"values must lie in [0, 1], got {low:.4g} to {high:.4g}"
    return ""


ROUNDING_ULPS = 16
"""A map whose range is at most this many units of rounding of its magnitude
(``ROUNDING_ULPS * eps * max |L|``) is constant up to rounding, and scales to all zeros."""


_ROUNDING = {
    dtype: ROUNDING_ULPS * torch.finfo(dtype).eps
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}  # looked up per call: torch.finfo costs more than the arithmetic on a small map


def _flat(low: Tensor, high: Tensor, span: Tensor) -> Tensor:
    """Whether each map's range ``span = high - low`` is within its rounding (see
    :data:`ROUNDING_ULPS`); ``low <= high``, so the magnitude is ``max(high, -low)``."""
    return span <= torch.maximum(high, low.neg()).mul_(_ROUNDING[span.dtype])


def min_max_normalize_(maps: Tensor) -> Tensor:
    """Scale each map to min 0 and max 1, in place; a map that is constant, or constant up
    to rounding (see :data:`ROUNDING_ULPS`), becomes all zeros.

    Without the rounding rule, a map whose every value is the same up to the last bit
    (a layer whose units are all off, so every position holds the same bias term)
    would be stretched to [0, 1]: pure rounding noise shown as a full-contrast map.
    """
    flat = maps.view(len(maps), -1)
    # amin and amax are two passes, yet several times faster than aminmax on the CPU
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = high - low
    flat.sub_(low).div_(span.masked_fill_(_flat(low, high, span), torch.inf))  # x / inf = 0
    return maps


def scale_maps_(maps: Tensor) -> Tensor:
    """Min-max scale each map of ``(N, k, *spatial)`` maps in place (camkit's own tensors)."""
    min_max_normalize_(maps.view(-1, *maps.shape[2:]))
    return maps


SCALE_EPSILON = 1e-6
"""The least range a map is divided by when scaled in the autograd graph (see
:func:`scaled_maps`)."""


def scaled_maps(maps: Tensor) -> Tensor:
    """Min-max scale each map of ``(N, k, *spatial)`` maps, out of place and differentiable.

    ``(L - min L) / max(max L - min L, SCALE_EPSILON)``: the values of
    :func:`scale_maps_` unless a map's range is below the epsilon (a map constant up
    to rounding still becomes all zeros), and a finite gradient everywhere.
    """
    flat = maps.flatten(2)
    low, high = flat.amin(dim=2, keepdim=True), flat.amax(dim=2, keepdim=True)
    span = high - low
    varies = ~_flat(low.detach(), high.detach(), span.detach())  # a mask: no gradient
    scaled = (flat - low) / span.clamp_min(SCALE_EPSILON) * varies
    return scaled.view_as(maps)


def first_direction(pixels: Tensor) -> Tensor:
    """The first right singular vector ``v_1`` of each ``(B, pixels, C)`` matrix, ``(B, C)``.

    Its sign, arbitrary in an SVD, is chosen so that ``pixels @ v_1`` sums to a
    non-negative value. ``v_1`` is the top eigenvector of the smaller of the
    two Gram matrices, computed in float64: a batch of small symmetric
    eigenproblems, which CUDA solves in batched kernels where a batched SVD
    of tall matrices runs one solver call per matrix (over 200x a forward pass
    for the MNIST net on an H200).
    """
    wide = pixels.double()
    if pixels.shape[2] <= pixels.shape[1]:
        first = _eigh(wide.mT @ wide)[1][..., -1]
    else:  # v_1 = A^T u_1 / sigma_1, from the (pixels x pixels) Gram matrix
        values, vectors = _eigh(wide @ wide.mT)
        sigma = values[..., -1:].clamp_min(torch.finfo(torch.float64).tiny).sqrt()
        first = (wide.mT @ vectors[..., -1:])[..., 0] / sigma
    total = (wide @ first[..., None]).sum(dim=(1, 2))
    first = torch.where(total[:, None] < 0, -first, first)
    return first.to(pixels.dtype)


def first_component(weighted: Tensor, centred: bool = False) -> Tensor:
    """Project ``(B, C, *spatial)`` on its first principal direction over channels.

    By default the direction is that of the uncentred ``pixels x channels``
    matrix (as in Eigen-CAM), signed by :func:`first_direction`. With
    ``centred``, each channel's mean over the pixels is subtracted first and the
    projection is signed so that its largest magnitude is positive (as
    Seg-Eigen-CAM and pytorch-grad-cam's projections do).
    """
    flat = weighted.flatten(2).transpose(1, 2)  # (B, pixels, C)
    if centred:
        flat = flat - flat.mean(dim=1, keepdim=True)
    projection = flat @ first_direction(flat)[:, :, None]  # (B, pixels, 1)
    if centred:
        low, high = (
            projection.amin(dim=(1, 2), keepdim=True),
            projection.amax(dim=(1, 2), keepdim=True),
        )
        projection = torch.where(low.abs() > high.abs(), -projection, projection)
    return projection.view(weighted.shape[0], *weighted.shape[2:])


KERNELS = ("sigmoid", "rbf", "poly", "cosine", "linear")
"""The kernels of :func:`kernel_component`, as scikit-learn names them."""


def kernel_component(
    weighted: Tensor, kernel: str, gamma: float | None, coef0: float, degree: int
) -> Tensor:
    """Project ``(B, C, *spatial)`` on its first kernel principal component over channels.

    Kernel PCA as scikit-learn's ``KernelPCA(n_components=1)`` computes it on the
    channel-centred ``pixels x channels`` rows: the kernel matrix, centred in
    feature space, its top eigenvector times the square root of its eigenvalue,
    signed so that the largest magnitude is positive. In float64.
    """
    rows = weighted.flatten(2).transpose(1, 2).double()  # (B, pixels, C)
    rows = rows - rows.mean(dim=1, keepdim=True)
    scale = 1.0 / rows.shape[2] if gamma is None else gamma
    dot = rows @ rows.mT
    if kernel == "sigmoid":
        gram = torch.tanh(scale * dot + coef0)
    elif kernel == "poly":
        gram = (scale * dot + coef0) ** degree
    elif kernel == "rbf":
        squared = dot.diagonal(dim1=1, dim2=2)
        distance = (squared[:, :, None] + squared[:, None, :] - 2 * dot).clamp_min(0)
        gram = torch.exp(-scale * distance)
    elif kernel == "cosine":
        norms = rows.norm(dim=2)
        outer = norms[:, :, None] * norms[:, None, :]
        gram = torch.where(outer > 0, dot / torch.where(outer > 0, outer, 1.0), 0.0)
    else:
        gram = dot
    gram = (
        gram
        - gram.mean(dim=1, keepdim=True)
        - gram.mean(dim=2, keepdim=True)
        + gram.mean(dim=(1, 2), keepdim=True)
    )
    values, vectors = _eigh((gram + gram.mT) / 2)
    projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()  # (B, pixels)
    peak = projection.gather(1, projection.abs().argmax(dim=1, keepdim=True))
    projection = torch.where(peak < 0, -projection, projection)
    return projection.to(weighted.dtype).view(weighted.shape[0], *weighted.shape[2:])


_EIGH_CHUNK = 64
"""Matrices per call of CUDA's batched eigensolver: for matrices up to 32 x 32 it takes
about 0.55 MiB of workspace per matrix in float64 (2.2 GiB for 4,096 at once, measured on
an H200), so large batches go 64 at a time (about 35 MiB)."""


def _eigh(gram: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` (ascending eigenvalues, eigenvectors), with bounded workspace."""
    small = gram.device.type == "cuda" and gram.shape[-1] <= 32
    return eigh_in_chunks(gram, _EIGH_CHUNK if small else len(gram))


def eigh_in_chunks(gram: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a batch of symmetric matrices, ``chunk`` matrices per call."""
    if len(gram) <= chunk:
        values, vectors = torch.linalg.eigh(gram)
        return values, vectors
    parts = [torch.linalg.eigh(gram[i : i + chunk]) for i in range(0, len(gram), chunk)]
    return torch.cat([p.eigenvalues for p in parts]), torch.cat([p.eigenvectors for p in parts])


def channel_maps(
    weights: Tensor, activations: Tensor, combine: Callable[[Tensor], Tensor] | None
) -> Tensor:
    """``sum_c w_c A^c``: maps ``(N, k, *spatial)`` from channel weights ``(N, k, C)`` or
    pixel weights ``(N, k, C, *spatial)`` and activations ``(N, 1, C, *spatial)``;
    ``combine`` turns weighted activations ``(B, C, *spatial)`` into maps instead of their
    channel sum. Channel weights and the sum take one batched matrix product."""
    n, k = weights.shape[:2]
    spatial = activations.shape[3:]
    if weights.dim() == 3 and combine is None:  # bmm itself: matmul adds views and expands
        return torch.bmm(weights, activations[:, 0].flatten(2)).view(n, k, *spatial)
    if weights.dim() == 3:
        weights = weights.view(*weights.shape, *([1] * len(spatial)))
    weighted = weights * activations  # (N, k, C, *spatial)
    if combine is None:
        return weighted.sum(dim=2)
    return combine(weighted.flatten(0, 1)).view(n, k, *spatial)

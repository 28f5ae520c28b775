"""Occlusion sensitivity: no layer, no gradient; how much the score drops when a window of the
input is hidden, in 2D, 3D (volumes, clips) or any number of spatial axes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from camkit._engine import map_ops
from camkit._engine.model import eager
from camkit._engine.model_outputs import logits_in
from camkit._engine.option_checks import flag, optional_batch_size, rows_per_pass
from camkit._engine.pipeline import Explained, Request, bind_and_score, run_pass
from camkit._engine.targets import BoundTarget
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["OcclusionSensitivity"]

FILLS = ("gaussian", "mean_patch", "mean_img")
"""The named fills (a number fills with that value)."""

BLENDS = ("gaussian", "constant")
"""How the windows covering a position are averaged there."""

ACTIVATIONS = ("softmax", "sigmoid")
"""What may turn the model's class scores into the scores explained."""

GAUSSIAN_SIGMA = 0.25
"""The Gaussian fill's sigma, as a fraction of the window's side (MONAI's)."""

BLEND_SIGMA = 0.125
"""The Gaussian blend's sigma, as a fraction of the window's side (MONAI's ``sigma_scale``)."""


def occlusion_windows(
    size: Sequence[int], mask_size: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, ...]]:
    """The first corner of every window, in the order the rows are run.

    Along each axis the windows start at ``0, stride, 2 * stride, ...`` until one
    reaches the end, and the last is moved back to end at the border, so every
    position is covered (as MONAI's ``dense_patch_slices`` lays them out).

    Example:
        >>> occlusion_windows([10], [4], [3])
        [(0,), (3,), (6,)]
        >>> occlusion_windows([5, 4], [4, 4], [2, 4])
        [(0, 0), (1, 0)]
    """
    per_axis = []
    for length, mask, step in zip(size, mask_size, stride, strict=True):
        count = next(d for d in range(length + 1) if d * step + mask >= length) + 1
        per_axis.append([min(d * step, length - mask) for d in range(count)])
    return list(itertools.product(*per_axis))


def _erf_kernel(length: int, sigma: float) -> Tensor:
    """A delta at ``length // 2`` smoothed by the discrete (erf) Gaussian of ``sigma``,
    truncated at 4 sigma (rounded), as MONAI's ``gaussian_1d(approx="erf")`` does."""
    tail = int(max(sigma * 4.0, 0.5) + 0.5)
    offset = torch.arange(length, dtype=torch.float32) - length // 2
    t = 0.70710678 / sigma
    values = 0.5 * (torch.erf(t * (offset + 0.5)) - torch.erf(t * (offset - 0.5)))
    return values.clamp_min(0).where(offset.abs() <= tail, 0.0)


def gaussian_fill(mask_size: Sequence[int]) -> Tensor:
    """The Gaussian fill's multiplier over a window: 0 at its centre, 1 at its farthest
    corner, ``1 - G`` rescaled to [0, 1] for ``G`` the product of each axis's erf kernel
    with sigma a quarter of the side (all zeros for a one-position window)."""
    product = torch.ones(())
    for length in mask_size:
        product = product[..., None] * _erf_kernel(length, GAUSSIAN_SIGMA * length)
    low, high = product.min(), product.max()
    if not bool(high > low):
        return torch.zeros(tuple(mask_size))
    return (high - product) / (high - low)


def blend_weights(mask_size: Sequence[int], blend: str) -> Tensor:
    """Each position's weight within a window when overlapping windows are averaged:
    all ones, or a Gaussian with sigma an eighth of the side, floored at 1e-3 (MONAI's
    ``compute_importance_map``)."""
    if blend == "constant":
        return torch.ones(tuple(mask_size))
    weights = torch.ones(())
    for length in mask_size:
        offset = torch.arange(length, dtype=torch.float32) - (length - 1) / 2
        axis = torch.exp(offset**2 / (-2 * (BLEND_SIGMA * length) ** 2))
        weights = weights[..., None] * axis
    return weights.clamp_min(max(float(weights.min()), 1e-3))


class OcclusionSensitivity(Explainer):
    r"""Occlusion sensitivity: how much the target's score drops when a window is hidden.

    Zeiler and Fergus, *Visualizing and Understanding Convolutional Networks*,
    ECCV 2014, https://arxiv.org/abs/1311.2901; windows, fills and blending as
    MONAI's ``monai.visualize.OcclusionSensitivity`` (1.6) defines them.

    A window of ``mask_size`` slides over the spatial axes (2D images, 3D
    volumes, video clips ``(N, C, T, H, W)``) with the given ``stride`` (or
    ``overlap``), the last window along an axis moved back to end at the
    border. For each window :math:`w` the model scores a copy of the input
    hidden there, :math:`s_w`, and each position's map is the weighted mean
    of the drops of the windows covering it:

    .. math::

        M(p) = \frac{\sum_{w \ni p} b_w(p)\,\big(s(x) - s_w\big)}{\sum_{w \ni p} b_w(p)},

    with :math:`b_w` the ``blend`` weights within the window. Higher is more
    important, as for every camkit map. The copies of all samples and all
    windows run in batches of ``batch_size`` rows without gradients; a window
    costs one row per sample, so a volume's map costs as many forward passes
    as it has windows.

    **MONAI's map** is the score under occlusion, :math:`\sum b_w s_w / \sum b_w`
    (lower is more important, for every class); with ``relu=False,
    normalize=False`` camkit's map equals :math:`s(x)` minus MONAI's for the
    class explained. MONAI's default ``activate=True`` applies the sigmoid
    when the *input* has one channel and the softmax otherwise, whatever the
    model outputs (a one-channel CT or MRI with a ten-class model gets ten
    independent sigmoids); camkit explains the target's score as every
    method does (the logit), and ``activation`` names the one wanted.
    MONAI's ``mean_patch`` unpacks ``constant_occlusion``'s ``(mul, add)`` as
    ``(add, mul)``, so it *multiplies* each window by its mean; camkit fills
    the window with its mean, as MONAI's documentation says.

    Args:
        model: Any :class:`torch.nn.Module`.
        mask_size: The window's side, one int for every axis or one per axis
            (MONAI's default, 16). Each must be at most the input's size there.
        overlap: The fraction of a window its neighbour shares, in [0, 1):
            the stride is ``int(mask_size * (1 - overlap))`` (at least 1;
            ``mask_size`` where the window spans the axis), as MONAI's.
        stride: The step between windows, one int or one per axis, from 1 to
            ``mask_size``; given, it replaces ``overlap``.
        fill: What hides a window: ``"gaussian"`` multiplies it by 1 minus a
            Gaussian (0 at the centre, 1 at the corners; sigma a quarter of the
            side), ``"mean_patch"`` fills it with its own mean (over channels),
            ``"mean_img"`` with the sample's mean, a number with that value.
        blend: How the windows over a position are averaged: ``"gaussian"``
            (sigma an eighth of the side, the centre counts most) or
            ``"constant"``; ``None`` (default) is MONAI's choice, Gaussian for
            the Gaussian fill and constant otherwise.
        activation: ``None`` explains the target's score itself;
            ``"softmax"`` or ``"sigmoid"`` turns the model's class scores into
            probabilities first (class targets only).
        batch_size: Occluded copies per forward pass; None (default) sizes the
            passes to the input, as many copies as hold 2 Mi values (2 of a
            96\ :sup:`3` volume, 13 of a 3 x 224 x 224 image, at most 256), since
            a pass's memory grows with its rows. MONAI runs 16 by default.

    Raises:
        CamkitValueError: For a mask size, stride or overlap out of range, an
            unknown fill, blend or activation.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
        >>> _ = model(torch.zeros(1, 1, 8, 8, 8))
        >>> occlusion = OcclusionSensitivity(model, mask_size=4, stride=2)
        >>> occlusion(torch.randn(2, 1, 8, 8, 8), target=1).shape
        torch.Size([2, 8, 8, 8])
    """

    reports_output = True

    not_differentiable_because = "its maps are made from forward passes run without gradients"

    def __init__(
        self,
        model: nn.Module,
        mask_size: int | Sequence[int] = 16,
        *,
        overlap: float = 0.6,
        stride: int | Sequence[int] | None = None,
        fill: str | float = "gaussian",
        blend: str | None = None,
        activation: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = eager(model)
        self.layer_names = []
        self.mask_size = _sides(mask_size, "mask_size")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)):
            raise CamkitValueError(f"overlap: got {overlap!r}; allowed: a number in [0, 1)")
        if not 0 <= overlap < 1:
            raise CamkitValueError(f"overlap: got {overlap!r}; allowed: a number in [0, 1)")
        self.overlap = float(overlap)
        self.stride = None if stride is None else _sides(stride, "stride")
        if isinstance(fill, bool) or not (
            fill in FILLS or (isinstance(fill, (int, float)) and math.isfinite(fill))
        ):
            raise CamkitValueError(
                f"fill: got {fill!r}; allowed: {', '.join(map(repr, FILLS))} or a finite number"
            )
        self.fill = fill
        if blend is not None and blend not in BLENDS:
            raise CamkitValueError(f"blend: got {blend!r}; allowed: None, {BLENDS}")
        self.blend = blend
        if activation is not None and activation not in ACTIVATIONS:
            raise CamkitValueError(f"activation: got {activation!r}; allowed: None, {ACTIVATIONS}")
        self.activation = activation
        self.batch_size = optional_batch_size(batch_size)

    def settings(self) -> dict[str, Any]:
        """The method and every option: the windows, the fill, the blend, the activation
        and ``batch_size``."""
        return {
            **super().settings(),
            "mask_size": list(self.mask_size),
            "overlap": self.overlap,
            "stride": None if self.stride is None else list(self.stride),
            "fill": self.fill,
            "blend": self.blend,
            "activation": self.activation,
            "batch_size": self.batch_size,
        }

    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        relu: bool = True,
        normalize: bool = True,
        progress: bool = False,
        upsample: bool = True,
        differentiable: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """Run the model on ``x`` and on a hidden copy per window, and map the score drops.

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: As for :meth:`camkit.BaseCAM.explain`.
            relu: Keep only drops (a window whose hiding raises the score gets 0);
                ``False`` keeps the signed map.
            normalize: Scale each map to min 0 and max 1 (a constant map becomes zeros).
            progress: Show a progress bar over the batches of hidden copies (a
                volume's windows can take minutes).
            upsample: Only ``True``: the maps are at the input's resolution.
            differentiable: Only ``False`` (see :attr:`not_differentiable_because`).
            forward_args: Further positional inputs of the model; per-sample
                tensors are repeated with their sample's copies.
            forward_kwargs: Keyword inputs of the model, as ``forward_args``.

        Returns:
            The maps ``(N, *spatial)`` (``(N, k, *spatial)`` for ``k`` targets per
            sample), float32, with the output, scores and classes of the
            unoccluded pass.

        Raises:
            CamkitTypeError: For an input or target of the wrong type.
            CamkitValueError: For an empty batch, classes out of range, a window
                larger than the input, an ``activation`` with a callable target,
                a NaN or infinite score, ``upsample=False`` or ``differentiable=True``.
        """
        for name, value in (("relu", relu), ("normalize", normalize), ("progress", progress)):
            flag(value, name)
        return run_pass(
            self,
            x,
            target,
            lambda request: self._explained(request, relu, normalize, progress),
            upsample=upsample,
            differentiable=differentiable,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
        )

    def windows(self, size: Sequence[int]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
        """The window's sides and the first corner of every window over an input of
        spatial ``size``.

        Raises:
            CamkitValueError: If the window is larger than the input, or the stride
                than the window.
        """
        mask = _per_axis(self.mask_size, len(size), "mask_size")
        if any(m > s for m, s in zip(mask, size, strict=True)):
            raise CamkitValueError(
                f"mask_size: got {list(mask)} for an input of spatial size {list(size)}; "
                f"allowed: at most the input's size on every axis"
            )
        if self.stride is None:
            stride = tuple(
                m if m == s else max(int(m * (1 - self.overlap)), 1)
                for m, s in zip(mask, size, strict=True)
            )
        else:
            stride = _per_axis(self.stride, len(size), "stride")
            if any(t > m for t, m in zip(stride, mask, strict=True)):
                raise CamkitValueError(
                    f"stride: got {list(stride)} with mask_size {list(mask)}; allowed: at most "
                    f"the window's side, so that every position is covered"
                )
        return mask, occlusion_windows(size, mask, stride)

    def _scores(self, bound: BoundTarget, output: Any, rows: Tensor | None) -> Tensor:
        if self.activation is not None:
            logits = logits_in(output)
            output = logits.softmax(1) if self.activation == "softmax" else logits.sigmoid()
        return bound.scores(output, rows).float()

    @torch.no_grad()
    def _explained(
        self, request: Request, relu: bool, normalize: bool, progress: bool
    ) -> Explained:
        x = request.x
        size = tuple(x.shape[2:])
        mask, corners = self.windows(size)
        output = request.run(self.model, x)
        bound, _ = bind_and_score(request, output)
        if self.activation is not None and bound.classes is None:
            raise CamkitValueError(
                f"activation: {self.activation!r} applies to class targets; a callable "
                f"target computes its own score (apply the {self.activation} there)"
            )
        scores = self._scores(bound, output, None)
        n, k = scores.shape
        multiplier = gaussian_fill(mask).to(x.device, x.dtype) if self.fill == "gaussian" else None
        weights = blend_weights(mask, self.blend or _default_blend(self.fill)).to(x.device)
        sums = x.new_zeros((n, k, *size), dtype=torch.float32)
        counts = x.new_zeros(size, dtype=torch.float32)
        regions = [
            tuple(slice(c, c + m) for c, m in zip(corner, mask, strict=True)) for corner in corners
        ]
        for region in regions:
            counts[region] += weights
        rows = [(w, i) for w in range(len(regions)) for i in range(n)]
        per_pass = rows_per_pass(self.batch_size, x.shape[1:])
        starts = range(0, len(rows), per_pass)
        for start in tqdm(starts, desc="occluded copies", unit="batch", disable=not progress):
            chunk = rows[start : start + per_pass]
            samples = torch.tensor([i for _, i in chunk], device=x.device)
            hidden = x[samples]  # indexing copies: x itself is never written
            for row, (w, i) in enumerate(chunk):
                self._hide(hidden[row], x[i], regions[w], multiplier)
            hidden_scores = self._scores(bound, request.run(self.model, hidden, samples), samples)
            drops = (scores[samples] - hidden_scores).view(len(chunk), k, *[1] * len(size))
            for row, (w, i) in enumerate(chunk):
                sums[i][(slice(None), *regions[w])] += drops[row] * weights
        maps = sums / counts
        if relu:
            maps.clamp_min_(0)
        if normalize:
            map_ops.scale_maps_(maps)
        return Explained(maps, {}, output, bound, scores)

    def _hide(
        self, copy: Tensor, sample: Tensor, region: tuple[slice, ...], multiplier: Tensor | None
    ) -> None:
        """Hide ``region`` of one copy (``(C, *spatial)``) of ``sample``, in place."""
        window = (slice(None), *region)
        if multiplier is not None:
            copy[window] *= multiplier
        elif self.fill == "mean_patch":
            copy[window] = sample[window].mean()
        elif self.fill == "mean_img":
            copy[window] = sample.mean()
        else:
            copy[window] = float(self.fill)


def _default_blend(fill: str | float) -> str:
    return "gaussian" if fill == "gaussian" else "constant"


def _sides(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    """One positive int, or a sequence of them."""
    values = (value,) if isinstance(value, int) else value
    if (
        isinstance(value, (str, bytes))
        or not isinstance(values, Sequence)
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    ):
        raise CamkitValueError(
            f"{name}: got {value!r}; allowed: a positive int, or one per spatial axis"
        )
    return tuple(values)


def _per_axis(sides: tuple[int, ...], axes: int, name: str) -> tuple[int, ...]:
    """``sides`` for ``axes`` spatial axes: one value repeated, or exactly one per axis."""
    if len(sides) == 1:
        return sides * axes
    if len(sides) != axes:
        raise CamkitValueError(
            f"{name}: got {list(sides)} for an input with {axes} spatial axes; allowed: one "
            f"int, or {axes} of them"
        )
    return sides

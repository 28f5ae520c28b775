"""What a call of an explainer's ``explain`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["CAMResult"]


@dataclass(frozen=True)
class CAMResult:
    """Everything one call of :meth:`BaseCAM.explain` produced.

    Attributes:
        maps: The maps, float32 on the input's device: ``(N, *input spatial)``
            by default, ``(N, *layer spatial)`` with ``upsample=False``, and
            ``(N, k, ...)`` for ``k`` targets per sample.
        output: The model output of the same forward pass (detached), so the
            predictions need no second forward pass.
        scores: The explained score of each sample, ``(N,)`` (or ``(N, k)``), detached.
        classes: The class explained for each sample, ``(N,)`` (or ``(N, k)``),
            or ``None`` when the target was a callable.
        layer_maps: Each layer's own map, after ReLU, upsampling and scaling as
            requested, keyed by layer name. For a single layer its one entry
            *shares memory* with ``maps`` (a copy would cost as much memory as
            the maps, ``k`` times over for ``k`` targets): editing one in place
            edits the other, so ``clone()`` a map before editing it in place.
            Fused layers' entries are tensors of their own.
    """

    maps: Tensor
    output: Any
    scores: Tensor
    classes: Tensor | None
    layer_maps: dict[str, Tensor] = field(default_factory=dict)

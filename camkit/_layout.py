"""Activation layouts: turning token and channels-last outputs into (N, C, *spatial)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from camkit.errors import CamkitValueError

LAYOUTS = ("channels_first", "channels_last", "tokens")


class Layout:
    """How a layer lays out its output, and the index map to ``(N, C, *spatial)``.

    ``channels_first``: already ``(N, C, *spatial)``. ``channels_last``:
    ``(N, *spatial, C)``, as in Swin and ConvNeXt blocks. ``tokens``:
    ``(N, T, C)``, as in vision transformers; the first ``prefix_tokens``
    (such as CLS) are dropped and the rest arranged on ``grid``, inferred as a
    square when not given.
    """

    def __init__(self, kind: str, prefix_tokens: int = 1, grid: tuple[int, ...] | None = None):
        if kind not in LAYOUTS:
            raise CamkitValueError(f"layout: got {kind!r}; allowed: {', '.join(LAYOUTS)}")
        if prefix_tokens < 0:
            raise CamkitValueError(f"prefix_tokens: got {prefix_tokens}; must be >= 0")
        if grid is not None and (not grid or any(int(g) < 1 for g in grid)):
            raise CamkitValueError(f"grid: got {grid}; give positive sizes such as (14, 14)")
        self.kind = kind
        self.prefix_tokens = prefix_tokens
        self.grid = grid

    def to_channels_first(self, t: Tensor, name: str) -> Tensor:
        """View ``t`` as ``(N, C, *spatial)``."""
        if self.kind == "channels_first":
            return t
        if self.kind == "channels_last":
            if t.dim() < 3:
                raise CamkitValueError(
                    f"layout: {name!r} returned shape {tuple(t.shape)}; channels_last needs "
                    f"(N, *spatial, C)"
                )
            return t.movedim(-1, 1)
        if t.dim() != 3:
            raise CamkitValueError(
                f"layout: {name!r} returned shape {tuple(t.shape)}; tokens needs (N, T, C)"
            )
        tokens = t[:, self.prefix_tokens :]
        grid = self.grid or self._square(tokens.shape[1], name)
        if math.prod(grid) != tokens.shape[1]:
            raise CamkitValueError(
                f"grid: {grid} holds {math.prod(grid)} tokens, but {name!r} has "
                f"{tokens.shape[1]} after dropping {self.prefix_tokens} prefix token(s)"
            )
        return tokens.reshape(len(t), *grid, t.shape[2]).movedim(-1, 1)

    def from_channels_first(self, t: Tensor, original: Tensor) -> Tensor:
        """Inverse of :meth:`to_channels_first`; dropped prefix tokens come from ``original``."""
        if self.kind == "channels_first":
            return t
        moved = t.movedim(1, -1)
        if self.kind == "channels_last":
            return moved
        prefix = original[:, : self.prefix_tokens].expand(len(t), -1, -1)
        return torch.cat([prefix.to(t.dtype), moved.reshape(len(t), -1, t.shape[1])], dim=1)

    def activations(self, native: Tensor, name: str, x: Tensor, upsample: bool) -> Tensor:
        """A layer's output as ``(N, C, *spatial)``, checked against the input batch ``x``
        (and, with ``upsample``, against resizing to its spatial size)."""
        activation = self.to_channels_first(native, name)
        if activation.dim() not in (3, 4, 5) or activation.shape[0] != len(x):
            raise CamkitValueError(
                f"layer: {name!r} returned shape {tuple(native.shape)}; a CAM needs "
                f"(N, C, L), (N, C, H, W) or (N, C, D, H, W) with N = {len(x)} "
                f"(or set layout= for token or channels-last outputs; "
                f"camkit.list_layers(model, x) lists the layers that fit, with their options)"
            )
        if upsample and activation.dim() != x.dim():
            raise CamkitValueError(
                f"upsample: cannot resize the map of {name!r}, with "
                f"{activation.dim() - 2} spatial dims, to the input's "
                f"{tuple(x.shape[2:])}; pass upsample=False"
            )
        return activation

    def gradients(self, gradients: Tensor, name: str) -> Tensor:
        """Gradients ``(N, k, *layer output)`` as ``(N, k, C, *spatial)``."""
        n, k = gradients.shape[:2]
        flat = self.to_channels_first(gradients.flatten(0, 1), name)
        return flat.reshape(n, k, *flat.shape[1:])

    def _square(self, count: int, name: str) -> tuple[int, int]:
        side = math.isqrt(count)
        if side * side != count:
            raise CamkitValueError(
                f"grid: {name!r} has {count} tokens after dropping {self.prefix_tokens} "
                f"prefix token(s), not a square number; pass grid=(h, w) or prefix_tokens"
            )
        return side, side

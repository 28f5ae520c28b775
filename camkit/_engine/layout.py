"""Layer layouts: token, channels-last and merged-token outputs viewed as ``(N, C, *spatial)``,
and back."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from camkit._engine.option_checks import int_sequence, is_int, positive_int
from camkit.errors import CamkitValueError

LAYOUTS = ("channels_first", "channels_last", "tokens", "merged_tokens")


class Layout:
    """How a layer lays out its output, and the index map to ``(N, C, *spatial)``.

    ``channels_first``: already ``(N, C, *spatial)``. ``channels_last``:
    ``(N, *spatial, C)``, as in Swin and ConvNeXt blocks. ``tokens``:
    ``(N, T, C)``, as in vision transformers; the first ``prefix_tokens``
    (such as CLS) are dropped and the rest arranged on ``grid``, inferred as a
    square when not given. The tokens run over the grid's axes row-major, the
    first axis outermost, unless ``token_order`` names the grid's axes from the
    outermost to the innermost as the tokens run (``(1, 2, 0)`` for a clip's
    ``(t, h, w)`` grid whose tokens give each patch's frames in turn, as
    TimeSformer's do).

    ``merged_tokens``: ``(L, C)``, the tokens of every sample one after another on
    one axis, with no batch axis, as Qwen2-VL's vision tower takes them: each
    sample's ``grid`` (``(h, w)`` or ``(t, h, w)`` patches) runs in blocks of
    ``merge_size`` x ``merge_size`` patches (the blocks row-major, then the patches
    in each block row-major, frame after frame), so that neighbouring patches merge
    into one language-model token. ``merge_size=1`` reads plain row-major grids
    (the merger's output, on the merged grid).

    ``tiles`` (with ``tokens``): the layer's rows are each sample's ``tiles`` tiles in
    turn, as LLaVA-NeXT's and Idefics3's vision towers see an image cut into tiles;
    the tiles become an axis of their own, ``(N, C, tiles, *grid)``.
    """

    def __init__(
        self,
        kind: str,
        prefix_tokens: int = 1,
        grid: tuple[int, ...] | None = None,
        token_order: tuple[int, ...] | None = None,
        merge_size: int = 1,
        tiles: int = 1,
    ):
        if kind not in LAYOUTS:
            raise CamkitValueError(f"layout: got {kind!r}; allowed: {', '.join(LAYOUTS)}")
        if not is_int(prefix_tokens) or prefix_tokens < 0:
            raise CamkitValueError(f"prefix_tokens: got {prefix_tokens!r}; allowed: an int >= 0")
        if grid is not None and (
            not int_sequence(grid) or not grid or any(int(g) < 1 for g in grid)
        ):
            raise CamkitValueError(f"grid: got {grid!r}; give positive sizes such as (14, 14)")
        axes = len(grid) if grid is not None else 2
        if token_order is not None and (
            not int_sequence(token_order) or sorted(token_order) != list(range(axes))
        ):
            raise CamkitValueError(
                f"token_order: got {token_order!r}; allowed: an order of the grid's axes "
                f"0 to {axes - 1}, such as {(*range(1, axes), 0)}"
            )
        positive_int(merge_size, "merge_size")
        positive_int(tiles, "tiles")
        if tiles > 1 and (kind != "tokens" or token_order is not None):
            raise CamkitValueError(
                f"tiles: got {tiles} with layout={kind!r}"
                + (" and token_order" if token_order is not None else "")
                + "; tiles need layout='tokens' with row-major tiles"
            )
        if kind == "merged_tokens":
            if grid is None or len(grid) not in (2, 3):
                raise CamkitValueError(
                    f"grid: got {grid}; layout='merged_tokens' needs each sample's patch grid, "
                    f"(h, w) or (t, h, w), such as a row of Qwen2-VL's image_grid_thw"
                )
            if any(int(g) % merge_size for g in grid[-2:]):
                raise CamkitValueError(
                    f"grid: {tuple(grid)} is not a whole number of {merge_size} x "
                    f"{merge_size} blocks (merge_size)"
                )
        self.kind = kind
        self.merge_size = merge_size
        self.tiles = tiles
        self.prefix_tokens = prefix_tokens
        self.grid = grid
        self.token_order = None if token_order is None else tuple(token_order)

    @property
    def rows_are_samples(self) -> bool:
        """Whether the layer's output has one row per sample (not merged tokens, not tiles)."""
        return self.kind != "merged_tokens" and self.tiles == 1

    def check_replaceable(self, name: str, what: str) -> None:
        """Refuse to put ``what`` in place of the layer's output where several rows (or
        none) belong to one sample: the copies a method makes are rows of samples."""
        if not self.rows_are_samples:
            lays = "merged tokens" if self.kind == "merged_tokens" else f"{self.tiles} tiles"
            raise CamkitValueError(
                f"layer: {name!r} lays each sample out as {lays}, so camkit cannot {what}; "
                f"use a gradient or activation method (Grad-CAM, LayerCAM, Eigen-CAM, ...) "
                f"there, or occlusion on the input"
            )

    def to_channels_first(self, t: Tensor, name: str) -> Tensor:
        """View ``t`` as ``(N, C, *spatial)``."""
        if self.kind == "channels_first":
            return t
        if self.kind == "merged_tokens":
            return self._unmerged(t, name)
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
        if self.tiles > 1:  # (N * tiles, T, C): each sample's tiles in turn
            if len(t) % self.tiles:
                raise CamkitValueError(
                    f"tiles: {name!r} returned {len(t)} rows, not a whole number of "
                    f"{self.tiles} tiles per sample"
                )
            stored = tokens.reshape(-1, self.tiles, *grid, t.shape[2])
            return stored.movedim(-1, 1)  # (N, C, tiles, *grid)
        if self.token_order is None:
            return tokens.reshape(len(t), *grid, t.shape[2]).movedim(-1, 1)
        order = self.token_order
        stored = tokens.reshape(len(t), *(grid[a] for a in order), t.shape[2])
        return stored.permute(0, -1, *(1 + order.index(a) for a in range(len(order))))

    def from_channels_first(self, t: Tensor, original: Tensor) -> Tensor:
        """Inverse of :meth:`to_channels_first`; dropped prefix tokens come from ``original``."""
        if self.kind == "channels_first":
            return t
        if self.kind == "merged_tokens":
            return self._merged(t)
        moved = t.movedim(1, -1)
        if self.kind == "channels_last":
            return moved
        if self.token_order is not None:
            moved = moved.permute(0, *(1 + a for a in self.token_order), -1)
        rows = len(t) * self.tiles  # a tile per row of the layer's own output
        prefix = original[:, : self.prefix_tokens].expand(rows, -1, -1)
        return torch.cat([prefix.to(t.dtype), moved.reshape(rows, -1, t.shape[1])], dim=1)

    def activations(self, native: Tensor, name: str, x: Tensor, upsample: bool) -> Tensor:
        """A layer's output as ``(N, C, *spatial)``, checked against the input batch ``x``
        (and, with ``upsample``, against resizing to its spatial size)."""
        activation = self.to_channels_first(native, name)
        if not self.rows_are_samples and activation.shape[0] != len(x):
            raise CamkitValueError(
                f"grid: {name!r} holds {activation.shape[0]} samples of grid {self.grid}"
                f"{f' in {self.tiles} tiles' if self.tiles > 1 else ''}, but x has {len(x)}; "
                f"every sample needs the same grid"
            )
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
        if self.kind == "channels_first":  # as they are: no views on the hot path
            return gradients
        if not self.rows_are_samples:
            k = gradients.shape[1]
            grids = self.to_channels_first(gradients.movedim(1, 0).flatten(0, 1), name)
            return grids.view(k, -1, *grids.shape[1:]).movedim(0, 1)
        n, k = gradients.shape[:2]
        flat = self.to_channels_first(gradients.flatten(0, 1), name)
        return flat.reshape(n, k, *flat.shape[1:])

    def _blocks(self) -> tuple[int, ...]:
        """Each sample's tokens as stored: ``(t, h / m, w / m, m, m)``."""
        assert self.grid is not None
        t, h, w = (1, *self.grid) if len(self.grid) == 2 else self.grid
        m = self.merge_size
        return t, h // m, w // m, m, m

    def _unmerged(self, t: Tensor, name: str) -> Tensor:
        """``(L, C)`` merged tokens (of one or several ``k``, one after another) as
        ``(N, C, *grid)``."""
        per_sample = math.prod(self._blocks())
        if t.dim() != 2 or t.shape[0] % per_sample:
            raise CamkitValueError(
                f"layout: {name!r} returned shape {tuple(t.shape)}; merged_tokens needs "
                f"(L, C) with L a multiple of the {per_sample} tokens of grid {self.grid}"
            )
        frames, rows, cols, m, _ = self._blocks()
        stored = t.reshape(-1, frames, rows, cols, m, m, t.shape[1])
        grid = stored.permute(0, 6, 1, 2, 4, 3, 5).reshape(
            len(stored), t.shape[1], frames, rows * m, cols * m
        )
        return grid[:, :, 0] if self.grid is not None and len(self.grid) == 2 else grid

    def _merged(self, grid: Tensor) -> Tensor:
        """Inverse of :meth:`_unmerged`: ``(N, C, *grid)`` as ``(L, C)``."""
        frames, rows, cols, m, _ = self._blocks()
        n, c = grid.shape[:2]
        split = grid.reshape(n, c, frames, rows, m, cols, m)
        return split.permute(0, 2, 3, 5, 4, 6, 1).reshape(-1, c)

    def _square(self, count: int, name: str) -> tuple[int, int]:
        side = math.isqrt(count)
        if side * side != count:
            raise CamkitValueError(
                f"grid: {name!r} has {count} tokens after dropping {self.prefix_tokens} "
                f"prefix token(s), not a square number; pass grid=(h, w) or prefix_tokens"
            )
        return side, side

"""Layers, in one place: their names (parsing ``"path@call[key]"``, finding the module,
picking the tensor) and their layouts (token and channels-last outputs as
``(N, C, *spatial)``).

The syntax is documented in :mod:`camkit.layers`.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from camkit._engine.model import COMPILED_PREFIX, eager
from camkit.errors import CamkitTypeError, CamkitValueError

_SUGGESTIONS = 5
_SPEC = re.compile(r"^(?P<path>[^@\[\]]*)(?:@(?P<call>-?\d+))?(?P<keys>(?:\[[^\[\]]*\])*)$")
_KEY = re.compile(r"\[([^\[\]]*)\]")

Key = int | str
"""An index into a tuple or list output, or a key of a dict output."""


@dataclass(frozen=True)
class LayerRef:
    """A layer resolved in a model: the module, which of its calls, which part of its output.

    Attributes:
        name: The name as given (``"backbone.body[0]"``); CAM results use it as the key.
        path: The module's dotted name (``"backbone.body"``).
        module: The module itself.
        call: Which call of the module in one forward pass: ``0`` the first,
            ``-1`` the last (the default), as Python indexes a list.
        keys: The indices or keys that pick a tensor out of the module's output,
            outermost first; empty when the output is the tensor.
    """

    name: str
    path: str
    module: nn.Module
    call: int = -1
    keys: tuple[Key, ...] = ()

    def select(self, output: Any) -> Any:
        """The part of one call's ``output`` that this reference names.

        Raises:
            CamkitTypeError: If the output has no such index or key.
        """
        for depth, key in enumerate(self.keys):
            output = output[_resolved_key(output, key, self.prefix(depth))]
        return output

    def replace(self, output: Any, value: Any) -> Any:
        """A copy of ``output`` with the named part replaced by ``value`` (containers are
        copied, the tensors in them are not)."""
        return self._replace(output, value, 0)

    def _replace(self, output: Any, value: Any, depth: int) -> Any:
        if depth == len(self.keys):
            return value
        key = _resolved_key(output, self.keys[depth], self.prefix(depth))
        inner = self._replace(output[key], value, depth + 1)
        if isinstance(output, (tuple, list)):
            items = list(output)
            items[key] = inner
            if isinstance(output, list):
                return items
            return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
        mapping = copy.copy(output)  # keeps a ModelOutput's or OrderedDict's type
        mapping[key] = inner
        return mapping

    def prefix(self, depth: int) -> str:
        """The name up to (not including) key number ``depth``; the whole name at
        ``len(keys)``, written the way camkit reads it."""
        call = "" if self.call == -1 else f"@{self.call}"
        return self.path + call + "".join(format_key(k) for k in self.keys[:depth])


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> LayerRef:
    """Resolve a layer name (with its ``@call`` and ``[key]`` parts) or a module in ``model``.

    Args:
        model: The model that contains the layer.
        layer: A layer name as described in :mod:`camkit.layers`, or the module
            object (its whole output, at its last call).

    Returns:
        The resolved reference.

    Raises:
        CamkitTypeError, CamkitValueError: As :func:`find_layer`.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.LSTM(4, 8))
        >>> ref = resolve_layer(model, "0@-1[0]")
        >>> ref.path, ref.call, ref.keys
        ('0', -1, (0,))
    """
    path, module = find_layer(model, layer)
    layer = _eager_name(eager(model), layer)
    if not isinstance(layer, str) or layer == path:
        return LayerRef(path, path, module)
    _, call, keys = _parse(layer)
    return LayerRef(layer, path, module, call, keys)


def find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Look a layer's module up by name or by identity.

    Args:
        model: The model that contains the layer.
        layer: A dotted name as listed by :meth:`torch.nn.Module.named_modules`
            (``"features.relu"``, ``"layer4.1.conv2"``), optionally with the
            ``@call`` and ``[key]`` parts described in :mod:`camkit.layers`
            (which this function checks and ignores), or the module object.

    Returns:
        The module's dotted name and the module itself.

    Raises:
        CamkitTypeError: If ``model`` is not a module or ``layer`` is neither a
            string nor a module.
        CamkitValueError: If no submodule has that name (the message lists the
            closest real names), the name is empty or malformed, or the module
            object is not part of ``model``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> find_layer(model, "1")
        ('1', ReLU())
    """
    if not isinstance(model, nn.Module):
        raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = eager(model)
    layer = _eager_name(model, layer)
    names = {name: module for name, module in model.named_modules() if name}
    if isinstance(layer, nn.Module):
        for name, module in names.items():
            if module is layer:
                return name, module
        raise CamkitValueError(
            f"layer: the module {type(layer).__name__} is not a submodule of the "
            f"model; pass one of the model's own submodules or its dotted name"
        )
    if not isinstance(layer, str):
        raise CamkitTypeError(
            f"layer: expected a dotted module name (str) or an nn.Module, "
            f"got {type(layer).__name__}"
        )
    if layer in names:
        return layer, names[layer]
    path, _, _ = _parse(layer)
    if path in names:
        return path, names[path]
    if not path:
        raise CamkitValueError(
            f"layer: got an empty name in {layer!r}, which is the model itself; name one of its "
            f"submodules, such as {_preview(list(names), names)}"
        )
    close = difflib.get_close_matches(path, names, n=_SUGGESTIONS, cutoff=0.4)
    close += [n for n in names if _named_like(n, names[n], path) and n not in close]
    hint = "closest names" if close else "the model's submodules include"
    raise CamkitValueError(
        f"layer: the model has no submodule named {path!r}; {hint}: "
        f"{_preview(close or list(names), names)}"
    )


def _eager_name(model: nn.Module, layer: str | nn.Module) -> str | nn.Module:
    """A name from a ``torch.compile``'d model's ``named_modules`` (``"_orig_mod.layer4"``)
    as a name in the eager module it wraps (``"layer4"``)."""
    compiled = isinstance(layer, str) and layer.startswith(COMPILED_PREFIX)
    if compiled and not hasattr(model, COMPILED_PREFIX[:-1]):
        return cast(str, layer)[len(COMPILED_PREFIX) :]
    return layer


def _parse(layer: str) -> tuple[str, int, tuple[Key, ...]]:
    """A layer name's module path, call (``-1``: the last) and keys."""
    match = _SPEC.match(layer)
    if match is None:
        raise CamkitValueError(
            f"layer: cannot read {layer!r}; a layer name is a dotted module name, "
            f"optionally followed by @call (such as @0) and [index] or [key] parts, "
            f"such as 'encoder@0' or 'backbone.body[0]'"
        )
    keys = tuple(_parse_key(k, layer) for k in _KEY.findall(match["keys"]))
    return match["path"], -1 if match["call"] is None else int(match["call"]), keys


def _parse_key(text: str, layer: str) -> Key:
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if re.fullmatch(r"[A-Za-z_][\w.\-]*", text):
        return text
    raise CamkitValueError(
        f"layer: cannot read the key [{text}] in {layer!r}; write an index such as [0] "
        f"or [-1], or a key such as [pool] or ['pool']"
    )


def elements(output: Any) -> list[tuple[Key, Any]]:
    """The ``(key, value)`` pairs of a tuple, list or dict output; none for anything else."""
    if isinstance(output, Mapping):
        return list(output.items())
    if isinstance(output, (tuple, list)):
        return list(enumerate(output))
    return []


def format_key(key: Key) -> str:
    """``key`` as a layer name writes it: ``[0]`` or ``['pool']``."""
    return f"[{key}]" if isinstance(key, int) else f"[{key!r}]"


def _resolved_key(output: Any, key: Key, where: str) -> Any:
    """The index or key of ``output`` that ``key`` names (see :func:`_item`)."""
    if isinstance(output, Mapping):
        if key in output:
            return key
        if isinstance(key, int) and str(key) in output:
            return str(key)
        if isinstance(key, int) and hasattr(output, "to_tuple"):  # a ModelOutput, by position
            fields = list(output.keys())
            if -len(fields) <= key < len(fields):
                return fields[key]
        raise CamkitTypeError(
            f"layer: {where!r} returned a {type(output).__name__} without the key {key!r}; "
            f"its keys are {list(output.keys())}"
        )
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        if isinstance(key, int) and -len(output) <= key < len(output):
            return key
        raise CamkitTypeError(
            f"layer: {where!r} returned a {type(output).__name__} of {len(output)} elements; "
            f"index it with an int from {-len(output)} to {len(output) - 1}, not {key!r}"
        )
    got = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, Tensor) else None
    raise CamkitTypeError(
        f"layer: {where!r} returned {got or type(output).__name__}, which has no "
        f"element {key!r}; drop the [{key}] part"
    )


def _named_like(name: str, module: nn.Module, wanted: str) -> bool:
    last = wanted.rsplit(".", 1)[-1].lower()
    return name.endswith("." + wanted) or type(module).__name__.lower() == last


def _preview(candidates: list[str], names: dict[str, nn.Module]) -> str:
    shown = [f"{n!r} ({type(names[n]).__name__})" for n in candidates[:_SUGGESTIONS]]
    return ", ".join(shown) or "(the model has no submodules)"


LAYOUTS = ("channels_first", "channels_last", "tokens")


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
    """

    def __init__(
        self,
        kind: str,
        prefix_tokens: int = 1,
        grid: tuple[int, ...] | None = None,
        token_order: tuple[int, ...] | None = None,
    ):
        if kind not in LAYOUTS:
            raise CamkitValueError(f"layout: got {kind!r}; allowed: {', '.join(LAYOUTS)}")
        if prefix_tokens < 0:
            raise CamkitValueError(f"prefix_tokens: got {prefix_tokens}; must be >= 0")
        if grid is not None and (not grid or any(int(g) < 1 for g in grid)):
            raise CamkitValueError(f"grid: got {grid}; give positive sizes such as (14, 14)")
        axes = len(grid) if grid is not None else 2
        if token_order is not None and sorted(token_order) != list(range(axes)):
            raise CamkitValueError(
                f"token_order: got {token_order!r}; allowed: an order of the grid's axes "
                f"0 to {axes - 1}, such as {(*range(1, axes), 0)}"
            )
        self.kind = kind
        self.prefix_tokens = prefix_tokens
        self.grid = grid
        self.token_order = None if token_order is None else tuple(token_order)

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
        if self.token_order is None:
            return tokens.reshape(len(t), *grid, t.shape[2]).movedim(-1, 1)
        order = self.token_order
        stored = tokens.reshape(len(t), *(grid[a] for a in order), t.shape[2])
        return stored.permute(0, -1, *(1 + order.index(a) for a in range(len(order))))

    def from_channels_first(self, t: Tensor, original: Tensor) -> Tensor:
        """Inverse of :meth:`to_channels_first`; dropped prefix tokens come from ``original``."""
        if self.kind == "channels_first":
            return t
        moved = t.movedim(1, -1)
        if self.kind == "channels_last":
            return moved
        if self.token_order is not None:
            moved = moved.permute(0, *(1 + a for a in self.token_order), -1)
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

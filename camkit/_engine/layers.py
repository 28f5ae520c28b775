"""Layers, in one place: their names (parsing ``"path@call[key]"``, finding the module,
picking the tensor); their layouts are in :mod:`camkit._engine.layout`.

The syntax is documented in :mod:`camkit.layers`.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

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

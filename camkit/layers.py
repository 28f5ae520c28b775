"""Naming the layer to explain inside any :class:`torch.nn.Module`.

A layer is named by a string that fits everywhere a layer name goes::

    "features.relu"            the module's output, at its last call
    "encoder@0"                its first call (@1 the second, @-1 the last)
    "backbone.body[0]"         element 0 of a tuple or list output, or entry "0" of a dict
    "backbone.fpn['pool']"     an entry of a dict or ModelOutput, by key
    "vit.encoder.layer.11[0]"  the hidden states a Hugging Face block returns first
    "encoder@1[0]"             both: element 0 of the second call's output

The part before ``@`` or ``[`` is a dotted name of
:meth:`torch.nn.Module.named_modules`; a name the model really has is taken as
it is, even if it contains ``@`` or ``[``.

:func:`list_layers` runs a model once on an input and lists every layer a CAM
can explain, with its output's shape and the layout options it needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from camkit._engine.hooks import Hooks
from camkit._engine.layers import Key, LayerRef, elements, find_layer, format_key, resolve_layer
from camkit._engine.model import check_input, eager, eval_mode, forward
from camkit.errors import CamkitTypeError

__all__ = ["LayerInfo", "LayerRef", "find_layer", "list_layers", "resolve_layer"]

_MAX_RATIO_SPREAD = 1.25
"""How far the input-to-layer size ratios of the spatial axes may differ (odd sizes, padding)."""

_MAX_PREFIX_TOKENS = 2
"""The most leading tokens (CLS, distillation) :func:`list_layers` looks for."""


@dataclass(frozen=True)
class LayerInfo:
    """A layer a CAM can explain, as :func:`list_layers` found it.

    Attributes:
        name: The layer name to pass to a CAM (``"layer4"``, ``"backbone[0]"``).
        kind: The module's class name.
        shape: The shape of its output (of the last call) on the input given.
        layout: ``"channels_first"``, ``"channels_last"`` or ``"tokens"``.
        options: The keyword arguments a CAM needs for that layout, such as
            ``{"layout": "tokens", "prefix_tokens": 1, "grid": (14, 14)}``;
            empty for ``channels_first``.
        calls: How often the module ran in the forward pass: above 1, the name
            explains the last call, and ``@0``, ``@1``, ... name the others.
        grid: The layer's size along each of the input's spatial axes, the
            resolution of its maps before upsampling: ``(7, 7)`` for a ResNet's
            ``layer4`` at 224 x 224, ``(1, 7, 7)`` (time, height, width) for a
            video network whose layer has pooled the clip's 8 frames into one
            (so one map serves every frame), ``(14, 14)`` for a ViT's tokens.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    layout: str
    options: dict[str, Any] = field(default_factory=dict)
    calls: int = 1
    grid: tuple[int, ...] = ()

    def __str__(self) -> str:
        calls = f"  ({self.calls} calls: @0 to @{self.calls - 1})" if self.calls > 1 else ""
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k != "layout")
        layout = f"{self.layout} ({options})" if options else self.layout
        grid = "x".join(map(str, self.grid))
        return f"{self.name:<36} {self.kind:<22} {self.shape!s:<22} {grid:<10} {layout}{calls}"


def list_layers(
    model: nn.Module,
    x: Tensor,
    *,
    forward_args: Sequence[Any] = (),
    forward_kwargs: Mapping[str, Any] | None = None,
) -> list[LayerInfo]:
    """Run ``model`` once on ``x`` and list the layers a CAM can explain, in forward order.

    Every submodule's output is looked at, and inside tuples, lists and dicts
    (one level deep) each tensor in them. A tensor is listed when its first
    axis is the batch and the rest is a grid proportional to ``x``'s spatial
    size, in one of the layouts camkit reads: ``(N, C, *spatial)`` (CNNs),
    ``(N, *spatial, C)`` (Swin, ConvNeXt blocks) or ``(N, T, C)`` tokens with up
    to two leading tokens and the rest on a grid (ViT, DeiT, Swin). The model
    runs in eval mode without gradients and is left as it was.

    Args:
        model: The model.
        x: An input batch, as the CAM will get it.
        forward_args: Further positional inputs of the model.
        forward_kwargs: Keyword inputs of the model.

    Returns:
        One :class:`LayerInfo` per layer, ready as
        ``GradCAM(model, info.name, **info.options)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> [info.name for info in list_layers(model, torch.randn(1, 1, 8, 8))]
        ['0', '1']
    """
    if not isinstance(model, nn.Module):
        raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = eager(model)  # a torch.compile'd model: the layers of the module it wraps
    batch_size = check_input(x)
    modules = [(name, module) for name, module in model.named_modules() if name]
    survey = _Survey(modules, batch_size, tuple(x.shape[2:]))
    with eval_mode(model), torch.no_grad(), survey:
        forward(model, x, forward_args, forward_kwargs)
    return [info for infos in survey.found.values() for info in infos]


class _Survey(Hooks):
    """Hooks that note, per module, the explainable tensors of its last call (modules in the
    order of their first call)."""

    def __init__(
        self, modules: Sequence[tuple[str, nn.Module]], batch_size: int, size: tuple[int, ...]
    ) -> None:
        super().__init__(modules)
        self.batch_size = batch_size
        self.size = size
        self.found: dict[int, list[LayerInfo]] = {}

    def on_output(self, index: int, output: Any) -> None:
        path, module = self.modules[index]
        self.found[index] = [
            LayerInfo(
                path + "".join(format_key(k) for k in keys),
                type(module).__name__,
                tuple(tensor.shape),
                *layout,
                calls=self.calls[index],
                grid=_grid_of(tuple(tensor.shape), *layout),
            )
            for keys, tensor in _tensors(output)
            if (layout := _layout(tensor, self.batch_size, self.size)) is not None
        ]


def _tensors(output: Any) -> list[tuple[tuple[Key, ...], Tensor]]:
    """The tensors of an output: itself, or the elements of a container (one level deep)."""
    if isinstance(output, Tensor):
        return [((), output)]
    return [((key,), value) for key, value in elements(output) if isinstance(value, Tensor)]


def _grid_of(shape: tuple[int, ...], layout: str, options: dict[str, Any]) -> tuple[int, ...]:
    """The layer's size along the input's spatial axes, in ``layout``."""
    if layout == "tokens":
        return tuple(options["grid"])
    return shape[2:] if layout == "channels_first" else shape[1:-1]


def _layout(t: Tensor, batch_size: int, size: tuple[int, ...]) -> tuple[str, dict[str, Any]] | None:
    """The layout and CAM options under which ``t`` is a map of the input, if any.

    The input's last two spatial axes (height and width) must be scaled down
    evenly; an axis before them (a clip's time, a volume's depth) may be
    scaled down by any factor, down to 1 (video networks pool time sooner).
    """
    if not t.is_floating_point() or t.dim() < 3 or t.shape[0] != batch_size:
        return None
    shape = tuple(t.shape)
    if len(shape) == len(size) + 2 and len(size) >= 3:
        first, last = _spread_2d(shape[2:], size), _spread_2d(shape[1:-1], size)
        if first <= _MAX_RATIO_SPREAD and first <= last:
            return "channels_first", {}
        if last <= _MAX_RATIO_SPREAD:
            return "channels_last", {"layout": "channels_last"}
    elif len(shape) == len(size) + 2:
        first, last = _spread(shape[2:], size), _spread(shape[1:-1], size)
        if first <= _MAX_RATIO_SPREAD and first <= last:
            return "channels_first", {}
        if last <= _MAX_RATIO_SPREAD:
            return "channels_last", {"layout": "channels_last"}
    if len(shape) == 3 and len(size) in (2, 3) and shape[2] > 1:
        for prefix in range(_MAX_PREFIX_TOKENS + 1):
            found = (
                _grid(shape[1] - prefix, size)
                if len(size) == 2
                else _grid_3d(shape[1] - prefix, size)
            )
            if found is not None:
                return "tokens", {"layout": "tokens", "prefix_tokens": prefix, "grid": found}
    return None


def _spread(spatial: Sequence[int], size: Sequence[int]) -> float:
    """How unequally the input is scaled down to ``spatial`` along its axes (1: evenly)."""
    if any(s < 2 for s in spatial):
        return math.inf
    ratios = [whole / part for whole, part in zip(size, spatial, strict=True)]
    return max(ratios) / min(ratios)


def _grid_3d(tokens: int, size: tuple[int, ...]) -> tuple[int, int, int] | None:
    """A grid ``(t, h, w)`` of ``tokens`` cells for a clip or volume of ``size``: the most
    frames ``t`` (at most the input's) whose share of the tokens forms a grid with the
    frames' aspect ratio (a video transformer's tubelets span 1 or 2 frames, 16 pixels)."""
    for frames in range(min(size[0], tokens), 0, -1):
        if tokens % frames == 0 and (grid := _grid(tokens // frames, size[1:])) is not None:
            return frames, *grid
    return None


def _spread_2d(spatial: Sequence[int], size: Sequence[int]) -> float:
    """:func:`_spread` of the last two axes, the others only no larger than the input's."""
    if any(not 1 <= part <= whole for part, whole in zip(spatial[:-2], size[:-2], strict=True)):
        return math.inf
    return _spread(spatial[-2:], size[-2:])


def _proportional(spatial: Sequence[int], size: Sequence[int]) -> bool:
    return _spread(spatial, size) <= _MAX_RATIO_SPREAD


def _grid(tokens: int, size: tuple[int, ...]) -> tuple[int, int] | None:
    """A grid ``(h, w)`` of ``tokens`` cells with the input's aspect ratio, if there is one."""
    if tokens < 4:
        return None
    aspect = size[0] / size[1]
    height = max(1, round(math.sqrt(tokens * aspect)))
    for h in (height - 1, height, height + 1):
        if h >= 2 and tokens % h == 0 and _proportional((h, tokens // h), size):
            return h, tokens // h
    return None

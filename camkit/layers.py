"""Finding the layer to explain inside any :class:`torch.nn.Module`."""

from __future__ import annotations

import difflib

from torch import nn

from camkit.errors import CamkitTypeError, CamkitValueError

__all__ = ["find_layer"]

_SUGGESTIONS = 5


def find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Look a layer up by dotted name or by identity.

    Args:
        model: The model that contains the layer.
        layer: A dotted name as listed by :meth:`torch.nn.Module.named_modules`
            (``"features.relu"``, ``"layer4.1.conv2"``) or the module object.

    Returns:
        The layer's dotted name and the module itself.

    Raises:
        CamkitTypeError: If ``model`` is not a module or ``layer`` is neither a
            string nor a module.
        CamkitValueError: If no submodule has that name (the message lists the
            closest real names), the name is empty, or the module object is not
            part of ``model``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> find_layer(model, "1")
        ('1', ReLU())
    """
    if not isinstance(model, nn.Module):
        raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
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
    if not layer:
        raise CamkitValueError(
            "layer: got an empty name, which is the model itself; name one of its "
            f"submodules, such as {_preview(list(names), names)}"
        )
    close = difflib.get_close_matches(layer, names, n=_SUGGESTIONS, cutoff=0.4)
    close += [n for n in names if _named_like(n, names[n], layer) and n not in close]
    hint = "closest names" if close else "the model's submodules include"
    raise CamkitValueError(
        f"layer: the model has no submodule named {layer!r}; {hint}: "
        f"{_preview(close or list(names), names)}"
    )


def _named_like(name: str, module: nn.Module, wanted: str) -> bool:
    last = wanted.rsplit(".", 1)[-1].lower()
    return name.endswith("." + wanted) or type(module).__name__.lower() == last


def _preview(candidates: list[str], names: dict[str, nn.Module]) -> str:
    shown = [f"{n!r} ({type(names[n]).__name__})" for n in candidates[:_SUGGESTIONS]]
    return ", ".join(shown) or "(the model has no submodules)"

"""The one place camkit touches a model: forward hooks that live for one call.

Also the copy policy: a layer's output is handed on uncopied unless the
network is known to modify it in place (see :func:`capture`).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from camkit.errors import CamkitModelError, CamkitTypeError

_H = TypeVar("_H", bound="Hooks")


class Hooks:
    """Forward hooks on some modules, removed when the ``with`` block ends.

    Hooks ignore forward passes run by other threads, so concurrent calls on
    one model never see each other's activations.
    """

    def __init__(self, modules: Sequence[tuple[str, nn.Module]]) -> None:
        self.modules = list(modules)
        self.calls = [0] * len(self.modules)
        self._thread = threading.get_ident()
        self._handles: list[RemovableHandle] = []

    def __enter__(self: _H) -> _H:
        try:
            for i, (_, module) in enumerate(self.modules):
                self._handles.append(module.register_forward_hook(self._hook_for(i)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_for(self, index: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None
            self.calls[index] += 1
            return self.on_output(index, _checked(self.modules[index][0], output))

        return _eager(hook)

    def on_output(self, index: int, output: Tensor) -> Tensor | None:
        raise NotImplementedError


def _eager(hook: Callable[[nn.Module, Any, Any], Any]) -> Callable[[nn.Module, Any, Any], Any]:
    """Under torch.compile, run ``hook`` eagerly (at a graph break) instead of tracing it.

    Only torch.compile traces hooks, and it imports ``torch._dynamo``; while that
    module is not loaded the hook is returned as it is, which spares the first
    call the (slow) import.
    """
    if "torch._dynamo" not in sys.modules:
        return hook
    eager = torch.compiler.disable(hook)  # type: ignore[no-untyped-call]
    return cast(Callable[[nn.Module, Any, Any], Any], eager)


class LayerCapture(Hooks):
    """Capture layer outputs and start autograd at the first one reached.

    Meant to wrap a forward pass run under :func:`torch.no_grad`: when the
    first hooked layer runs, the hook turns gradient recording on and makes
    its output a fresh leaf tensor, so autograd records only the part of the
    network after it. If a layer runs several times in one pass, its last
    call is the one captured.

    In-place operations after a layer (``ReLU(inplace=True)``, ``out +=
    identity``) would overwrite the captured activation. For layers marked in
    ``clone`` the output is handed on as a copy, and :attr:`modified_after`
    tells whether the network did modify that copy in place; for the others
    the output itself is handed on, and :meth:`overwritten` tells whether its
    values changed, so the caller can run again with a copy.
    """

    def __init__(self, modules: Sequence[tuple[str, nn.Module]], clone: Sequence[bool]) -> None:
        super().__init__(modules)
        self.clone = list(clone)
        self.activations: list[Tensor | None] = [None] * len(self.modules)
        self._versions: list[int] = [0] * len(self.modules)
        self._handed: list[Tensor | None] = [None] * len(self.modules)

    def on_output(self, index: int, output: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            torch.set_grad_enabled(True)
            if output.is_inference():
                output = output.clone()
            output = output.detach().requires_grad_(True)
        self.activations[index] = output
        handed = output.clone() if self.clone[index] else output
        self._handed[index] = handed
        self._versions[index] = handed._version
        return handed

    def modified_after(self) -> list[bool]:
        """Per layer: whether the tensor handed downstream was modified in place."""
        return [
            handed is not None and handed._version != version
            for handed, version in zip(self._handed, self._versions, strict=True)
        ]

    def overwritten(self) -> bool:
        """Whether an activation that was handed on uncopied has been modified in place."""
        return any(
            changed and not cloned
            for changed, cloned in zip(self.modified_after(), self.clone, strict=True)
        )


_WRITES_IN_PLACE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Layers whose output the network modifies in place, so camkit must copy it."""

_IN_PLACE_ON_LEAF = "leaf Variable that requires grad is being used in an in-place operation"
"""Autograd's error when the network writes in place to an activation camkit made a leaf."""


def capture(
    layers: Sequence[tuple[str, nn.Module]], run: Callable[[], Any]
) -> tuple[LayerCapture, Any]:
    """Run ``run()`` (the forward pass) with the layers hooked; copy outputs only where needed.

    A layer's output is copied before it flows on only if the network is known
    to modify it in place. Every call checks: if an uncopied activation was
    overwritten (its version counter moved, or autograd refused the in-place
    write to it), the forward pass runs once more with copies, and the layer
    is remembered (per module, for every CAM on it) as one to copy. Any other
    failure of the model is raised at once: the model runs once.
    """
    clone = [_WRITES_IN_PLACE.get(module, False) for _, module in layers]
    try:
        hooked, output = _run_hooked(layers, clone, run)
        rerun = hooked.overwritten()
    except CamkitModelError as error:
        if all(clone) or _IN_PLACE_ON_LEAF not in str(error.__cause__):
            raise
        rerun = True
    if rerun:  # outside the except block: a failure now is not chained to the first
        clone = [True] * len(clone)
        hooked, output = _run_hooked(layers, clone, run)
    for (_, module), copied, modified in zip(layers, clone, hooked.modified_after(), strict=True):
        if copied:
            _WRITES_IN_PLACE[module] = modified
    return hooked, output


def _run_hooked(
    layers: Sequence[tuple[str, nn.Module]], clone: list[bool], run: Callable[[], Any]
) -> tuple[LayerCapture, Any]:
    with LayerCapture(layers, clone) as hooked, torch.no_grad():
        output = run()
    return hooked, output


class ReplaceOutput(Hooks):
    """Replace one layer's output, at its ``call``-th call, by a given tensor."""

    def __init__(self, name: str, module: nn.Module, call: int, replacement: Tensor) -> None:
        super().__init__([(name, module)])
        self.call = call
        self.replacement = replacement

    def on_output(self, index: int, output: Tensor) -> Tensor | None:
        return self.replacement if self.calls[index] == self.call else None


def _checked(name: str, output: Any) -> Tensor:
    if not isinstance(output, Tensor):
        raise CamkitTypeError(
            f"layer: {name!r} returned {type(output).__name__}, not a tensor; "
            f"choose a layer whose output is a single tensor"
        )
    if not output.is_floating_point():
        raise CamkitTypeError(
            f"layer: {name!r} returned a {output.dtype} tensor; a CAM needs "
            f"a layer with floating-point activations"
        )
    return output

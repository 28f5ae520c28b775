"""The one place camkit touches a model: forward hooks that live for one call.

Also the copy policy: a layer's output is handed on uncopied unless the
network is known to modify it in place (see :func:`capture`).
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from camkit._engine.layers import LayerRef, elements, format_key
from camkit._engine.state import WRITES_IN_PLACE, WRITES_LOCK
from camkit.errors import CamkitModelError, CamkitTypeError, CamkitValueError

_H = TypeVar("_H", bound="Hooks")


class Hooks:
    """Forward hooks on some modules, removed when the ``with`` block ends.

    Hooks ignore forward passes run by other threads, so concurrent calls on
    one model never see each other's activations.
    """

    watches_inputs: ClassVar[bool] = False
    """Whether the modules also get a forward pre-hook that calls :meth:`on_input`."""

    runs_first: ClassVar[bool] = False
    """Whether the hooks run before the modules' own forward hooks (and pre-hooks), so that
    those see the output they hand on: a Hugging Face model's hidden-state recorder, say,
    then records the tensor camkit differentiates, not an untracked original."""

    def __init__(self, modules: Sequence[tuple[str, nn.Module]]) -> None:
        self.modules = list(modules)
        self.calls = [0] * len(self.modules)
        self.starts = [0] * len(self.modules)
        self._thread = threading.get_ident()
        self._handles: list[RemovableHandle] = []

    def __enter__(self: _H) -> _H:
        try:
            for i, (_, module) in enumerate(self.modules):
                first = self.runs_first
                self._handles.append(module.register_forward_hook(self._hook_for(i), prepend=first))
                if self.watches_inputs:
                    pre_hook = self._pre_hook_for(i)
                    self._handles.append(module.register_forward_pre_hook(pre_hook, prepend=first))
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
            return self.on_output(index, output)

        return _eager(hook)

    def _pre_hook_for(self, index: int) -> Callable[[nn.Module, Any], Any]:
        def pre_hook(module: nn.Module, args: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None
            self.starts[index] += 1
            return self.on_input(index, args)

        return _eager(pre_hook)

    def on_output(self, index: int, output: Any) -> Any:
        """What the module's ``index``-th hook returns: a replacement output, or ``None``."""
        raise NotImplementedError

    def on_input(self, index: int, args: tuple[Any, ...]) -> Any:
        """What the ``index``-th pre-hook returns: replacement positional inputs, or ``None``."""
        return None


_F = TypeVar("_F", bound=Callable[..., Any])


def _eager(hook: _F) -> _F:
    """Under torch.compile, run ``hook`` eagerly (at a graph break) instead of tracing it.

    Only torch.compile traces hooks, and it imports ``torch._dynamo``; while that
    module is not loaded the hook is returned as it is, which spares the first
    call the (slow) import.
    """
    if "torch._dynamo" not in sys.modules:
        return hook
    eager = torch.compiler.disable(hook)  # type: ignore[no-untyped-call]
    return cast(_F, eager)


class CapturedCall(NamedTuple):
    """One captured call of a layer: its number (0 the first), the activation autograd
    differentiates against, the tensor handed downstream, and that tensor's version."""

    number: int
    activation: Tensor
    handed: Tensor
    version: int


class LayerCapture(Hooks):
    """Capture layer outputs and start autograd at the first one reached.

    Meant to wrap a forward pass run under :func:`torch.no_grad`: when the
    first hooked layer runs, the hook turns gradient recording on, so autograd
    records only the part of the network after it. A captured tensor that
    does not already depend on recorded work becomes a fresh leaf tensor. Each
    layer is captured at the call its :class:`~camkit.layers.LayerRef` names
    (the last by default), and only the part of the output it names.

    A layer picked from a container output (``"fpn[0]"``) may feed the
    module's other outputs (an FPN's extra level is pooled from another), so
    autograd records that module's own forward as well: at the start of the
    call, gradient recording is turned on and its tensor inputs become leaves.
    The gradient then covers every path from the tensor to the score, as plain
    autograd's does.

    In-place operations after a layer (``ReLU(inplace=True)``, ``out +=
    identity``) would overwrite the captured activation. For layers marked in
    ``clone`` the output is handed on as a copy, and :attr:`modified_after`
    tells whether the network did modify that copy in place; for the others
    the output itself is handed on, and :meth:`overwritten` tells whether its
    values changed, so the caller can run again with a copy.
    """

    watches_inputs = True
    runs_first = True

    def __init__(self, layers: Sequence[LayerRef], clone: Sequence[bool]) -> None:
        super().__init__([(ref.name, ref.module) for ref in layers])
        self.layers = list(layers)
        self.clone = list(clone)
        # the calls that may be the one captured, newest last: one for @n and @-1, n for @-n
        self._kept: list[deque[CapturedCall]] = [
            deque(maxlen=1 if ref.call >= 0 else -ref.call) for ref in self.layers
        ]

    def on_input(self, index: int, args: tuple[Any, ...]) -> Any:
        ref = self.layers[index]
        if not ref.keys or (ref.call >= 0 and self.starts[index] - 1 != ref.call):
            return None
        torch.set_grad_enabled(True)
        return tuple(
            _leaf(a) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args
        )

    def on_output(self, index: int, output: Any) -> Any:
        ref = self.layers[index]
        number = self.calls[index] - 1
        if ref.call >= 0 and number != ref.call:
            return None
        part = _checked(ref, ref.select(output))
        torch.set_grad_enabled(True)
        part = _leaf(part)
        handed = part.clone() if self.clone[index] else part
        self._kept[index].append(CapturedCall(number, part, handed, handed._version))
        return ref.replace(output, handed)

    def captured(self, index: int) -> CapturedCall | None:
        """The call of layer ``index`` that its reference names, if the pass made it."""
        kept, call = self._kept[index], self.layers[index].call
        if call >= 0 or len(kept) == -call:
            return kept[0] if kept else None
        return None

    @property
    def activations(self) -> list[Tensor | None]:
        """Per layer: the captured activation, or ``None`` if that call never happened."""
        return [
            None if c is None else c.activation for c in map(self.captured, range(len(self.layers)))
        ]

    def modified_after(self) -> list[bool]:
        """Per layer: whether the tensor handed downstream was modified in place."""
        calls = [self.captured(i) for i in range(len(self.layers))]
        return [c is not None and c.handed._version != c.version for c in calls]

    def overwritten(self) -> bool:
        """Whether an activation that was handed on uncopied has been modified in place."""
        return any(
            changed and not cloned
            for changed, cloned in zip(self.modified_after(), self.clone, strict=True)
        )


_IN_PLACE_ON_LEAF = "leaf Variable that requires grad is being used in an in-place operation"
"""Autograd's error when the network writes in place to an activation camkit made a leaf."""


def reached(capture: LayerCapture, refs: Sequence[LayerRef]) -> list[CapturedCall]:
    """The captured call of each layer of ``refs``; a clear error for a layer the forward
    pass never reached, or reached fewer times than its ``@call`` asks."""
    captured = []
    for index, ref in enumerate(refs):
        call = capture.captured(index)
        if call is None and not capture.calls[index]:
            raise CamkitValueError(
                f"layer: {ref.name!r} was not reached in the forward pass; "
                f"choose a layer the model runs on this input"
            )
        if call is None:
            runs = capture.calls[index]
            raise CamkitValueError(
                f"layer: {ref.name!r} asks for call {ref.call} of {ref.path!r}, which ran "
                f"{runs} time(s) in the forward pass; allowed: @0 to @{runs - 1}, "
                f"or @-1 to @-{runs}"
            )
        captured.append(call)
    return captured


def capture(
    layers: Sequence[LayerRef], run: Callable[[], Any], record_all: bool = False
) -> tuple[LayerCapture, Any]:
    """Run ``run()`` (the forward pass) with the layers hooked; copy outputs only where needed.

    With ``record_all`` (differentiable maps, a training step), autograd
    records the whole forward pass and every layer's output is copied: the
    model runs exactly once, as it would in the caller's own step (a second
    run would update BatchNorm's running statistics twice).

    Otherwise, a layer's output is copied before it flows on only if the network is known
    to modify it in place. Every call checks: if an uncopied activation was
    overwritten (its version counter moved, or autograd refused the in-place
    write to it), the forward pass runs once more with copies, and the layer
    is remembered (per module, for every CAM on it) as one to copy. Any other
    failure of the model is raised at once: the model runs once.
    """
    if record_all:
        with LayerCapture(layers, [True] * len(layers)) as hooked, torch.enable_grad():
            output = run()
        return hooked, output
    with WRITES_LOCK:
        clone = [WRITES_IN_PLACE.get(ref.module, {}).get(ref.keys, False) for ref in layers]
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
    learnt = zip(layers, clone, hooked.modified_after(), strict=True)
    with WRITES_LOCK:
        for ref, copied, modified in learnt:
            if copied:
                WRITES_IN_PLACE.setdefault(ref.module, {})[ref.keys] = modified
    return hooked, output


def _run_hooked(
    layers: Sequence[LayerRef], clone: list[bool], run: Callable[[], Any]
) -> tuple[LayerCapture, Any]:
    with LayerCapture(layers, clone) as hooked, torch.no_grad():
        output = run()
    return hooked, output


class ReplaceOutput(Hooks):
    """Replace the part of a layer's output that ``ref`` names, at call ``number`` (0 the
    first), by a given tensor."""

    def __init__(self, ref: LayerRef, number: int, replacement: Tensor) -> None:
        super().__init__([(ref.name, ref.module)])
        self.ref = ref
        self.number = number
        self.replacement = replacement

    def on_output(self, index: int, output: Any) -> Any:
        if self.calls[index] - 1 != self.number:
            return None
        return self.ref.replace(output, self.replacement)


def _leaf(tensor: Tensor) -> Tensor:
    """``tensor`` if autograd records it already, else a fresh leaf that requires grad."""
    if tensor.requires_grad:
        return tensor
    return (tensor.clone() if tensor.is_inference() else tensor).detach().requires_grad_(True)


def _checked(ref: LayerRef, output: Any) -> Tensor:
    if not isinstance(output, Tensor):
        raise CamkitTypeError(
            f"layer: {ref.name!r} returned {type(output).__name__}, not a tensor; "
            f"{_pick_hint(ref, output)}"
        )
    if not output.is_floating_point():
        raise CamkitTypeError(
            f"layer: {ref.name!r} returned a {output.dtype} tensor; a CAM needs "
            f"a layer with floating-point activations"
        )
    return output


def _pick_hint(ref: LayerRef, output: Any) -> str:
    maps = [k for k, v in elements(output) if isinstance(v, Tensor) and v.dim() > 1][:4]
    picks = [ref.name + format_key(k) for k in maps]
    pick = f"pick a tensor in it, such as {', '.join(map(repr, picks))}, or " if picks else ""
    return (
        f"{pick}choose a layer whose output is a tensor (camkit.list_layers(model, x) lists them)"
    )

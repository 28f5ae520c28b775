"""The one place camkit touches a model: a forward hook that lives for one call."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from camkit.errors import CamkitTypeError


class LayerCapture:
    """Capture a layer's output and start autograd there.

    Meant to wrap a forward pass run under :func:`torch.no_grad`: when the
    layer runs, the hook turns gradient recording on and replaces the layer's
    output by a clone of a fresh leaf tensor. Autograd then records only the
    part of the network after the layer, gradients with respect to the leaf
    are exactly ``d score / d activation``, and in-place operations after the
    layer change the clone, never the captured activation. If the layer runs
    several times in one forward pass, its last call is the one captured.

    The hook ignores forward passes run by other threads, and it is removed
    when the ``with`` block ends, whatever happens inside it.
    """

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        self.activation: Tensor | None = None
        self.calls = 0
        self._thread = threading.get_ident()
        self._handle: RemovableHandle | None = None

    def __enter__(self) -> LayerCapture:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
        if threading.get_ident() != self._thread:
            return None
        if not isinstance(output, Tensor):
            raise CamkitTypeError(
                f"layer: {self.name!r} returned {type(output).__name__}, not a tensor; "
                f"choose a layer whose output is a single tensor"
            )
        if not output.is_floating_point():
            raise CamkitTypeError(
                f"layer: {self.name!r} returned a {output.dtype} tensor; a CAM needs "
                f"a layer with floating-point activations"
            )
        torch.set_grad_enabled(True)
        self.calls += 1
        if output.is_inference():
            output = output.clone()
        self.activation = output.detach().requires_grad_(True)
        return self.activation.clone()

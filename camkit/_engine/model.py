"""Running the user's model: input checks, eval mode shared between threads, the forward call."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from camkit._engine.state import HELD, HELD_LOCK
from camkit.errors import CamkitError, CamkitModelError, CamkitTypeError, CamkitValueError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the block; restore every module's flag afterwards.

    The bookkeeping is per module, so calls that overlap (from several threads)
    on one model, or on two models that share modules, share the eval state of
    each module: the first call to hold a module saves its flag, the last one
    to let it go restores it. Modules already in eval mode that no call holds
    are left alone (the usual case costs one pass over the modules).
    """
    with HELD_LOCK:
        held = [m for m in _modules(model) if m.training or m in HELD]
        for module in held:
            count, training = HELD.get(module, (0, module.training))
            HELD[module] = (count + 1, training)
            module.training = False
    try:
        yield
    finally:
        with HELD_LOCK:
            for module in held:
                count, training = HELD.pop(module)
                if count == 1:
                    module.training = training
                else:
                    HELD[module] = (count - 1, training)


def _modules(model: nn.Module) -> list[nn.Module]:
    """``model.modules()``, each once, by a plain walk over the children: several times
    faster than the generator (it builds no names), and a call walks the model every time."""
    found: dict[int, nn.Module] = {}
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) not in found:
            found[id(module)] = module
            stack.extend(child for child in module._modules.values() if child is not None)
    return list(found.values())


def check_input(x: object) -> int:
    """Validate the input batch; return its size."""
    if not isinstance(x, Tensor):
        raise CamkitTypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise CamkitTypeError(
            f"x: expected a floating-point tensor, got dtype {x.dtype}; convert it with x.float()"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise CamkitValueError(
            f"x: expected a non-empty batch (N, C, *spatial), got shape {tuple(x.shape)}"
        )
    return int(x.shape[0])


def check_finite_input(x: Tensor) -> None:
    """Raise if ``x`` holds NaN or infinite values (run on the error path only: it costs a pass)."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise CamkitValueError(
            f"x: contains {bad} NaN or infinite value(s); camkit explains finite inputs only"
        )


def forward(
    model: nn.Module, x: Tensor, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> Any:
    """``model(x, *args, **kwargs)``; a failure inside the model becomes a CamkitModelError."""
    try:
        return model(x, *args, **(kwargs or {}))
    except CamkitError:
        raise
    except Exception as error:
        raise CamkitModelError(
            f"model: the forward pass failed on x of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}: {type(error).__name__}: {error}"
        ) from error


def select_rows(
    values: Sequence[Any], mapping: Mapping[str, Any] | None, rows: Tensor, batch_size: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Pick ``rows`` of every tensor argument with a leading batch axis; keep the rest."""

    def pick(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch_size:
            return value[rows.to(value.device)]
        return value

    return tuple(pick(v) for v in values), {k: pick(v) for k, v in (mapping or {}).items()}


def detached(output: Any) -> Any:
    """The output with every tensor detached (tuples, named tuples, lists and dicts, and
    their subclasses, kept)."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(detached(o) for o in output))
    if isinstance(output, (tuple, list)):
        return type(output)(detached(o) for o in output)
    if type(output) is dict:
        return {k: detached(v) for k, v in output.items()}
    if isinstance(output, dict):  # a subclass (a Hugging Face ModelOutput) keeps its type
        copied = copy.copy(output)  # whatever its constructor takes
        for key, value in output.items():
            copied[key] = detached(value)
        return copied
    return output


_AUTOCAST_DEVICES = tuple(
    d
    for d in ("cpu", "cuda", "mps", "xpu", "hpu", "mtia", "xla")
    if torch.amp.is_autocast_available(d)
)


_NOTHING = nullcontext()


@dataclass(frozen=True)
class Precision:
    """The ``torch.autocast`` regions the caller had open when a call began.

    camkit's own arithmetic (weights times activations, upsampling) runs with
    them closed (:meth:`full`), so that maps are float32; every re-run of the
    model (Score-CAM's masked inputs, Ablation-CAM's tail, Smooth Grad-CAM++'s
    noisy copies) runs with them open again (:meth:`callers`), as the caller's
    own forward pass did. Every device type with autocast counts, not only
    the CPU and CUDA.
    """

    regions: tuple[tuple[str, torch.dtype], ...]

    @classmethod
    def of_caller(cls) -> Precision:
        """The regions open now."""
        return cls(
            tuple(
                (device, torch.get_autocast_dtype(device))
                for device in _AUTOCAST_DEVICES
                if torch.is_autocast_enabled(device)
            )
        )

    def full(self) -> AbstractContextManager[Any]:
        """Close the caller's autocast regions for the block."""
        if not self.regions:  # the usual case, on every call: nothing to enter
            return _NOTHING
        stack = ExitStack()
        for device, _ in self.regions:
            stack.enter_context(torch.autocast(device, enabled=False))
        return stack

    def callers(self) -> AbstractContextManager[Any]:
        """Open the caller's autocast regions again for the block."""
        if not self.regions:
            return _NOTHING
        stack = ExitStack()
        for device, dtype in self.regions:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        return stack


def eager(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``'d model wraps, or the model itself.

    camkit hooks layers and re-runs parts of the network, which a compiled graph
    does not allow; it explains the eager module instead (the same parameters,
    the same maps), and accepts its layer names with or without ``_orig_mod.``.
    """
    compiled = type(model).__name__ == "OptimizedModule"  # torch._dynamo's, not imported here
    inner = getattr(model, "_orig_mod", None) if compiled else None
    return inner if isinstance(inner, nn.Module) else model


COMPILED_PREFIX = "_orig_mod."
"""What ``torch.compile`` puts before every layer name of the model it wraps."""

"""Running the user's model: input checks, eval mode shared between threads, the forward call."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from camkit.errors import CamkitError, CamkitModelError, CamkitTypeError, CamkitValueError

_LOCK = threading.Lock()
_ACTIVE: dict[int, tuple[int, list[tuple[nn.Module, bool]]]] = {}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the block; restore every module's flag afterwards.

    Calls that overlap on one model (from several threads) share the eval
    state: the first one in saves the flags, the last one out restores them.
    """
    key = id(model)
    with _LOCK:
        count, flags = _ACTIVE.get(key, (0, []))
        if count == 0:  # only modules in train mode need switching (none, usually)
            flags = [(module, True) for module in model.modules() if module.training]
            for module, _ in flags:
                module.training = False
        _ACTIVE[key] = (count + 1, flags)
    try:
        yield
    finally:
        with _LOCK:
            count, flags = _ACTIVE[key]
            if count == 1:
                del _ACTIVE[key]
                for module, training in flags:
                    module.training = training
            else:
                _ACTIVE[key] = (count - 1, flags)


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
    """The output with every tensor detached (tuples, named tuples, lists and dicts kept)."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(detached(o) for o in output))
    if isinstance(output, (tuple, list)):
        return type(output)(detached(o) for o in output)
    if isinstance(output, dict):
        return {k: detached(v) for k, v in output.items()}
    return output

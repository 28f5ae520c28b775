"""Checks of constructor options shared by several methods, each naming the option."""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from camkit.errors import CamkitTypeError, CamkitValueError


def positive_int(value: int, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a positive int")
    return value


ROW_VALUES = 1 << 21
"""Input values in one forward pass where a ``batch_size`` is None (2 Mi: 13 images of
3 x 224 x 224, 2 volumes of 96 cubed). On a CPU a pass's time per image grows with the batch
once its activations leave the cache (resnet18 at 224 x 224 on a 2-core CPU: 17 ms an image
at 8 rows, 23 ms at 256), and on any device its memory grows with it."""

MOST_ROWS = 256
"""The most rows in one forward pass where a ``batch_size`` is None."""


def optional_batch_size(value: int | None, name: str = "batch_size") -> int | None:
    """``value`` if it is None or an int >= 1 (not a bool)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CamkitValueError(
            f"{name}: got {value!r}; allowed: a positive int, or None to size the passes to "
            f"the input"
        )
    return value


def rows_per_pass(batch_size: int | None, row: Sequence[int]) -> int:
    """``batch_size``, or for None as many rows of shape ``row`` as hold :data:`ROW_VALUES`
    values (at least 1, at most :data:`MOST_ROWS`)."""
    if batch_size is not None:
        return batch_size
    return max(1, min(MOST_ROWS, ROW_VALUES // max(1, math.prod(row))))


def non_negative(value: float, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value >= 0 and math.isfinite(value))
    ):
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a finite number >= 0")
    return float(value)


def seed_or_none(seed: int | None) -> int | None:
    """``seed`` if it is an int or ``None``."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise CamkitValueError(f"seed: got {seed!r}; allowed: an int, or None")
    return seed


def positive_number(value: float, name: str) -> float:
    """``value`` as a float if it is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value > 0 and math.isfinite(value))
    ):
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a finite number > 0")
    return float(value)


def finite_number(value: float, name: str) -> float:
    """``value`` as a float if it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a finite number")
    return float(value)


def flag(value: object, name: str) -> bool:
    """``value`` if it is a bool: an on/off option given 0, a string or None is refused, not
    read by its truthiness."""
    if not isinstance(value, bool):
        raise CamkitTypeError(f"{name}: got {value!r}; allowed: True or False")
    return bool(value)


def seed_value(value: object, name: str = "seed") -> int:
    """``value`` if it is an int (not a bool): a seed."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CamkitValueError(f"{name}: got {value!r}; allowed: an int")
    return value


def tensor_or_number(value: object, name: str) -> None:
    """Refuse anything but a tensor or a finite number (a baseline image or value)."""
    if isinstance(value, Tensor):
        return
    finite_number(value, name)  # type: ignore[arg-type]


def callable_or_none(value: object, name: str, allowed: str) -> None:
    """Refuse anything but a callable or ``None``; ``allowed`` says what the callable does."""
    if value is not None and not callable(value):
        raise CamkitTypeError(f"{name}: got {type(value).__name__}; allowed: {allowed}, or None")


def device_or_none(value: object, name: str = "device") -> object:
    """``value`` if it is ``None`` or names a device this machine has (a ``torch.device``
    or a name torch reads as one, such as ``"cuda:0"``)."""
    if value is None:
        return None
    try:
        device = torch.device(value)  # type: ignore[call-overload]
    except (RuntimeError, TypeError, ValueError) as error:
        raise CamkitValueError(
            f"{name}: got {value!r}; allowed: a torch.device or its name, such as 'cpu' or "
            f"'cuda:0', or None"
        ) from error
    missing = device_missing(device)
    if missing:
        raise CamkitValueError(f"{name}: got {value!r}, but {missing}; give a device it has")
    return value


def device_missing(device: torch.device) -> str:
    """What this machine lacks to run on ``device``, or ``""``."""
    kind, index = device.type, device.index
    if kind in ("cpu", "meta"):
        return ""
    module = getattr(torch, kind, None)
    available = module is not None and bool(getattr(module, "is_available", lambda: False)())
    count = int(getattr(module, "device_count", lambda: 1)()) if available else 0
    if not available or (index is not None and index >= count):
        have = f"{count} {kind} device(s)" if available else f"no {kind} device"
        return f"this machine has {have}"
    return ""


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer: an int, a NumPy integer or a 0-d integer tensor (a
    bool is not)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def int_sequence(values: object) -> bool:
    """Whether ``values`` is a sequence, array or 1-D tensor of integers (not a string or a
    mapping)."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Collection):
        return False
    return all(is_int(v) for v in values)


def check_colormap(cmap: object) -> None:
    """Refuse a ``cmap`` that is not the name of a matplotlib colormap."""
    import matplotlib as mpl

    if not isinstance(cmap, str) or cmap not in mpl.colormaps:
        raise CamkitValueError(
            f"cmap: got {cmap!r}; allowed: a matplotlib colormap's name, such as 'jet', "
            f"'viridis' or 'magma'"
        )

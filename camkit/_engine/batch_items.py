"""What a loader's batch holds: the input to explain and, where there are any, its labels.

A batch is a tensor ``x``, a tuple or list ``(x, labels, ...)`` (torchvision's datasets),
or a dict of named columns (Hugging Face ``datasets`` with ``with_format("torch")``, or
any collate function that returns one). For a dict, the input is ``input_key`` and the
labels ``label_key``; left ``None``, they are read from the names transformers and
datasets use, and a dict with none of them, or with two, is refused rather than guessed.
Other columns the model takes (a text model's ``input_ids``, say) are named by
``forward_keys`` and passed to it as keyword inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from camkit.errors import CamkitTypeError, CamkitValueError

INPUT_KEYS = ("pixel_values", "image", "images")
"""A dict batch's input when no ``input_key`` is given: transformers' name, then datasets'."""

LABEL_KEYS = ("labels", "label")
"""A dict batch's labels when no ``label_key`` is given."""


def check_keys(input_key: object, label_key: object, forward_keys: object = ()) -> None:
    """Refuse keys that are not strings (or ``None``), and ``forward_keys`` that are not a
    sequence of them."""
    for value, name in ((input_key, "input_key"), (label_key, "label_key")):
        if value is not None and (not isinstance(value, str) or not value):
            raise CamkitTypeError(
                f"{name}: got {value!r}; allowed: the name of a column of the loader's dict "
                f"batches (a non-empty str), or None"
            )
    if (
        isinstance(forward_keys, (str, bytes))
        or not isinstance(forward_keys, (tuple, list))
        or not all(isinstance(key, str) and key for key in forward_keys)
    ):
        raise CamkitTypeError(
            f"forward_keys: got {forward_keys!r}; allowed: a tuple or list of the dict "
            f"batches' column names, passed to the model as keyword inputs"
        )
    if input_key is not None and input_key in forward_keys:
        raise CamkitValueError(
            f"forward_keys: {input_key!r} is the input_key; the input is the model's first "
            f"positional input, not a keyword one"
        )


def forward_inputs(batch: Any, forward_keys: Sequence[str], device: Any) -> dict[str, Any]:
    """The columns ``forward_keys`` of a dict batch, moved to ``device`` where tensors."""
    if not forward_keys:
        return {}
    _dicts_only(batch, "forward_keys")
    missing = [key for key in forward_keys if key not in batch]
    if missing:
        raise CamkitValueError(
            f"forward_keys: {missing} not among the loader's dict batches' keys {_keys(batch)}"
        )
    return {
        key: batch[key].to(device) if isinstance(batch[key], Tensor) else batch[key]
        for key in forward_keys
    }


def split_batch(
    batch: Any,
    input_key: str | None = None,
    label_key: str | None = None,
    *,
    labels: bool = False,
) -> tuple[Tensor, Any]:
    """``(x, labels)`` of one batch; with ``labels=False`` the labels are not looked for
    (``None``), and with ``labels=True`` a batch without them is refused."""
    found: Any = None
    if (input_key, label_key) != (None, None):
        _dicts_only(batch, "input_key" if input_key is not None else "label_key")
    if isinstance(batch, Tensor):
        x = batch
    elif isinstance(batch, Mapping):
        x = _input_of(batch, input_key)
        found = _labels_of(batch, label_key) if labels else None
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        x, found = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        raise CamkitTypeError(
            f"loader: yielded a {type(batch).__name__}; camkit needs batches that are x, "
            f"(x, labels, ...) or a dict of columns, with x a tensor"
        )
    if labels and found is None:
        columns = " or ".join(map(repr, LABEL_KEYS))
        raise CamkitValueError(
            f"target: 'label' needs labels, and the loader's batches ({type(batch).__name__}) "
            f"have none: give batches (x, labels), or dict batches with {columns} (or name "
            f"the column with label_key=)"
        )
    return x, (found if labels else None)


def _dicts_only(batch: Any, option: str) -> None:
    """Refuse ``option``, which names dict columns, for a batch that is not a dict."""
    if not isinstance(batch, Mapping):
        raise CamkitValueError(
            f"{option}: names columns of dict batches, and the loader's batches are "
            f"{type(batch).__name__}s; leave it out"
        )


def _input_of(batch: Mapping[Any, Any], input_key: str | None) -> Tensor:
    key = input_key if input_key is not None else _one_of(batch, INPUT_KEYS, "input_key")
    if key is None:
        raise CamkitValueError(
            f"input_key: the loader's dict batches have the keys {_keys(batch)} and none of "
            f"{list(INPUT_KEYS)}; give input_key= to say which holds the input"
        )
    if key not in batch:
        raise CamkitValueError(
            f"input_key: got {key!r}; the loader's dict batches have the keys {_keys(batch)}"
        )
    x = batch[key]
    if not isinstance(x, Tensor):
        raise CamkitTypeError(
            f"input_key: the batches' {key!r} is a {type(x).__name__}; camkit needs a tensor "
            f"(for a Hugging Face dataset, use with_format('torch') and a transform that "
            f"turns images into tensors)"
        )
    return x


def _labels_of(batch: Mapping[Any, Any], label_key: str | None) -> Any:
    if label_key is None:
        key = _one_of(batch, LABEL_KEYS, "label_key")
        return None if key is None else batch[key]
    if label_key not in batch:
        raise CamkitValueError(
            f"label_key: got {label_key!r}; the loader's dict batches have the keys {_keys(batch)}"
        )
    return batch[label_key]


def _one_of(batch: Mapping[Any, Any], names: tuple[str, ...], option: str) -> str | None:
    """The one of ``names`` that ``batch`` has, ``None`` for none; two are refused."""
    present = [name for name in names if name in batch]
    if len(present) > 1:
        raise CamkitValueError(
            f"{option}: the loader's dict batches have both {present[0]!r} and "
            f"{present[1]!r}; give {option}= to say which to use"
        )
    return present[0] if present else None


def _keys(batch: Mapping[Any, Any]) -> list[str]:
    return sorted(str(key) for key in batch)

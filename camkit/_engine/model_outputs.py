"""Reading the model output: the class scores, or a named field, inside its container."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from camkit.errors import CamkitTypeError

LOGIT_KEYS = ("logits", "out")
"""Dict entries that hold class scores: Hugging Face's name, and torchvision's."""


def logits_in(output: Any) -> Any:
    """The class scores inside a model output, where there is one.

    The output itself if it is a tensor; else its ``.logits`` (a Hugging Face
    ``ModelOutput``), or its ``"logits"`` or ``"out"`` entry (a dict, such as
    torchvision's); else the output as it is, for the caller to refuse.
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping):
        for key in LOGIT_KEYS:
            if isinstance(output.get(key), Tensor):
                return output[key]
    return output


def field_of(output: Any, key: str | None, what: str) -> Tensor:
    """``output`` itself (``key=None``) or its field ``key`` (an attribute or a dict entry),
    which must be a tensor; ``what`` names the caller in the error."""
    if key is None:
        value = logits_in(output)
    elif isinstance(output, Mapping) and key in output:
        value = output[key]
    else:
        value = getattr(output, key, None)
    if not isinstance(value, Tensor):
        fields = list(output.keys()) if isinstance(output, Mapping) else []
        where = f"its field {key!r}" if key is not None else "a tensor"
        listed = f" (its fields: {fields})" if fields else ""
        raise CamkitTypeError(
            f"target: {what} needs {where} in the model output, which is a "
            f"{type(output).__name__}{listed}; pass key= to name the field to read"
        )
    return value

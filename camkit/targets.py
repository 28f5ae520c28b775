"""What to explain: turning a ``target`` argument into one score per sample.

A CAM explains a scalar score per sample. camkit accepts the target in the
forms users know from pytorch-grad-cam, TorchCAM and Captum:

* ``None``: each sample's predicted class (argmax of the model output);
* an ``int``: that class for every sample;
* a sequence of ints, or a 1-D integer tensor or array: one class per sample;
* a callable ``f(output) -> Tensor`` returning one score per sample, for
  segmentation, regression, multi-head models, or outputs that are tuples or
  dicts.

Class targets read the pre-softmax score from an ``(N, C)`` output, as the
Grad-CAM paper prescribes.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camkit.errors import CamkitTypeError, CamkitValueError

__all__ = ["ScoreFunction", "Target", "class_scores"]

ScoreFunction = Callable[[Any], Tensor]
"""A callable mapping the model output to a ``(N,)`` tensor of scores."""

Target = None | int | Sequence[int] | Tensor | np.ndarray | ScoreFunction
"""Every form the ``target`` argument of a CAM may take."""


def class_scores(output: Tensor, classes: Tensor) -> Tensor:
    """Pick one class score per sample from a classifier's ``(N, C)`` output.

    Args:
        output: The model's scores (logits), shape ``(N, C)``.
        classes: One class index per sample, shape ``(N,)``.

    Returns:
        ``output[i, classes[i]]`` for every sample, shape ``(N,)``.

    Example:
        >>> import torch
        >>> class_scores(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0]))
        tensor([2., 3.])
    """
    return output.gather(1, classes.to(output.device).view(-1, 1)).view(-1)


def check_target(target: Target, batch_size: int) -> Tensor | ScoreFunction | None:
    """Validate ``target`` before the forward pass.

    Returns ``None`` (predicted class), a CPU ``int64`` tensor of ``batch_size``
    class indices, or the user's callable.
    """
    if target is None or callable(target):
        return target
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, Tensor):
        return _check_class_tensor(target, batch_size)
    if isinstance(target, numbers.Number):
        return torch.full((batch_size,), _as_class(target, "target"))
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if len(target) != batch_size:
            raise CamkitValueError(
                f"target: got {len(target)} classes for a batch of {batch_size}; "
                f"give one class per sample, a single int, or None"
            )
        values = [_as_class(t, f"target[{i}]") for i, t in enumerate(target)]
        return torch.tensor(values, dtype=torch.int64)
    raise CamkitTypeError(
        f"target: got {type(target).__name__}; allowed: None, an int, a sequence "
        f"of ints, a 1-D integer tensor, or a callable returning one score per sample"
    )


def resolve_scores(
    checked: Tensor | ScoreFunction | None, output: Any, batch_size: int
) -> tuple[Tensor, Tensor | None]:
    """Compute each sample's score from the model output.

    Returns the ``(N,)`` scores and the class indices they belong to (``None``
    for a callable target).
    """
    if callable(checked):
        return _call_score_function(checked, output, batch_size), None
    logits = _classifier_output(output, batch_size)
    if checked is None:
        classes = logits.detach().argmax(dim=1)
    else:
        n_classes = logits.shape[1]
        bad = (checked >= n_classes).nonzero()
        if len(bad):
            i = int(bad[0, 0])
            raise CamkitValueError(
                f"target: class {int(checked[i])} (sample {i}) is out of range; the "
                f"model outputs {n_classes} classes, so allowed: 0 to {n_classes - 1}"
            )
        classes = checked.to(logits.device)
    return class_scores(logits, classes), classes


def _as_class(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CamkitTypeError(
            f"{where}: class indices must be ints, got {value!r} ({type(value).__name__})"
        )
    index = int(value)
    if index < 0:
        raise CamkitValueError(f"{where}: got {index}; class indices must be non-negative")
    return index


def _check_class_tensor(target: Tensor, batch_size: int) -> Tensor:
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise CamkitTypeError(
            f"target: a tensor of classes must have an integer dtype, got {target.dtype}"
        )
    if target.dim() == 0:
        return check_target(int(target), batch_size)  # type: ignore[return-value]
    if target.dim() != 1 or len(target) != batch_size:
        raise CamkitValueError(
            f"target: a tensor of classes must have shape ({batch_size},), one per "
            f"sample, got {tuple(target.shape)}"
        )
    if len(target) and int(target.min()) < 0:
        raise CamkitValueError(
            f"target: got class {int(target.min())}; class indices must be non-negative"
        )
    return target.detach().to("cpu", torch.int64)


def _classifier_output(output: Any, batch_size: int) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = (
            f"a tensor of shape {tuple(output.shape)}"
            if isinstance(output, Tensor)
            else type(output).__name__
        )
        raise CamkitTypeError(
            f"target: a class target needs a model output of shape (N, classes), but "
            f"the model returned {got}; pass a callable target that maps the output "
            f"to one score per sample"
        )
    if output.shape[0] != batch_size or not output.dtype.is_floating_point:
        raise CamkitValueError(
            f"target: the model output has shape {tuple(output.shape)} and dtype "
            f"{output.dtype}; a class target needs float scores of shape "
            f"({batch_size}, classes)"
        )
    return output


def _call_score_function(fn: ScoreFunction, output: Any, batch_size: int) -> Tensor:
    scores = fn(output)
    if not isinstance(scores, Tensor) or scores.shape != (batch_size,):
        got = (
            f"shape {tuple(scores.shape)}" if isinstance(scores, Tensor) else type(scores).__name__
        )
        raise CamkitValueError(
            f"target: the callable must return a tensor of shape ({batch_size},), one "
            f"score per sample, but returned {got}"
        )
    if not scores.dtype.is_floating_point:
        raise CamkitTypeError(f"target: the callable must return float scores, got {scores.dtype}")
    return scores

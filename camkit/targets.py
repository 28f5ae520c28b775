"""What to explain: turning a ``target`` argument into scores per sample.

A CAM explains a scalar score per sample. camkit accepts the target in the
forms users know from pytorch-grad-cam, TorchCAM and Captum:

* ``None``: each sample's predicted class (argmax of the model output);
* an ``int``: that class for every sample;
* a sequence of ints, or a 1-D integer tensor or array: one class per sample;
* a callable ``f(output) -> Tensor`` returning one score per sample, for
  segmentation, regression, multi-head models, or outputs that are tuples or
  dicts.

Several targets per sample at once: a 2-D integer tensor or array (or a list
of lists) of shape ``(N, k)``, or a callable returning ``(N, k)`` scores, gives
``k`` maps per sample from one forward pass, returned as ``(N, k, *spatial)``.

Class targets read the pre-softmax score from an ``(N, C)`` output, as the
Grad-CAM paper prescribes.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from camkit.errors import CamkitTypeError, CamkitValueError

__all__ = ["ScoreFunction", "Target", "class_scores"]

ScoreFunction = Callable[[Any], Tensor]
"""A callable mapping the model output to ``(N,)`` scores, or ``(N, k)`` for k targets."""

Target = None | int | Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray | ScoreFunction
"""Every form the ``target`` argument of a CAM may take."""


def class_scores(output: Tensor, classes: Tensor) -> Tensor:
    """Pick class scores per sample from a classifier's ``(N, C)`` output.

    Args:
        output: The model's scores (logits), shape ``(N, C)``.
        classes: Class indices, shape ``(N,)`` or ``(N, k)``.

    Returns:
        ``output[i, classes[i]]`` for every sample, shaped like ``classes``.

    Example:
        >>> import torch
        >>> class_scores(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0]))
        tensor([2., 3.])
    """
    index = classes.to(output.device)
    return output.gather(1, index.view(len(index), -1)).view(index.shape)


@dataclass(frozen=True)
class CheckedTarget:
    """A validated target: class indices ``(N, k)``, a callable, or the predicted class."""

    classes: Tensor | None
    function: ScoreFunction | None
    multi: bool


@dataclass(frozen=True)
class BoundTarget:
    """A target tied to the model output of the main forward pass.

    ``classes`` is ``(N, k)`` for class targets (the predicted class resolved),
    ``None`` for a callable; ``multi`` says whether results keep the ``k`` axis.
    """

    classes: Tensor | None
    function: ScoreFunction | None
    multi: bool
    k: int

    def scores(self, output: Any, rows: Tensor | None = None) -> Tensor:
        """Scores ``(M, k)`` of the target for an output whose row ``i`` is sample ``rows[i]``."""
        if self.classes is None:
            scores = cast(ScoreFunction, self.function)(output)
            return scores.view(len(scores), -1)
        classes = self.classes if rows is None else self.classes[rows.to(self.classes.device)]
        return class_scores(output, classes)


def check_target(target: Target, batch_size: int) -> CheckedTarget:
    """Validate ``target`` before the forward pass."""
    if target is None or callable(target):
        return CheckedTarget(None, target, multi=False)
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, Tensor):
        return _check_class_tensor(target, batch_size)
    if isinstance(target, numbers.Number):
        classes = torch.full((batch_size, 1), _as_class(target, "target"))
        return CheckedTarget(classes, None, multi=False)
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        if len(target) != batch_size:
            raise CamkitValueError(
                f"target: got {len(target)} classes for a batch of {batch_size}; "
                f"give one class per sample, a single int, or None"
            )
        if all(isinstance(t, Sequence) and not isinstance(t, str) for t in target):
            rows = [
                [_as_class(c, f"target[{i}][{j}]") for j, c in enumerate(cast(Sequence[Any], t))]
                for i, t in enumerate(target)
            ]
            if len({len(r) for r in rows}) != 1 or not rows[0]:
                raise CamkitValueError(
                    "target: a list of class lists must give every sample the same, "
                    f"non-zero number of classes, got lengths {[len(r) for r in rows]}"
                )
            return CheckedTarget(torch.tensor(rows, dtype=torch.int64), None, multi=True)
        values = [_as_class(t, f"target[{i}]") for i, t in enumerate(target)]
        return CheckedTarget(torch.tensor(values, dtype=torch.int64)[:, None], None, multi=False)
    raise CamkitTypeError(
        f"target: got {type(target).__name__}; allowed: None, an int, a sequence "
        f"of ints, an integer tensor, or a callable returning one score per sample"
    )


def bind_target(checked: CheckedTarget, output: Any, batch_size: int) -> BoundTarget:
    """Resolve the predicted class and check classes and callables against the output."""
    if checked.function is not None:
        scores = _call_score_function(checked.function, output, batch_size)
        k = 1 if scores.dim() == 1 else scores.shape[1]
        return BoundTarget(None, checked.function, multi=scores.dim() == 2, k=k)
    logits = _classifier_output(output, batch_size)
    if checked.classes is None:
        classes = logits.detach().argmax(dim=1, keepdim=True)
    else:
        n_classes = logits.shape[1]
        bad = (checked.classes >= n_classes).nonzero()
        if len(bad):
            i = int(bad[0, 0])
            raise CamkitValueError(
                f"target: class {int(checked.classes[tuple(bad[0])])} (sample {i}) is out of "
                f"range; the model outputs {n_classes} classes, so allowed: 0 to {n_classes - 1}"
            )
        classes = checked.classes.to(logits.device)
    return BoundTarget(classes, None, multi=checked.multi, k=classes.shape[1])


def _as_class(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CamkitTypeError(
            f"{where}: class indices must be ints, got {value!r} ({type(value).__name__})"
        )
    index = int(value)
    if index < 0:
        raise CamkitValueError(f"{where}: got {index}; class indices must be non-negative")
    return index


def _check_class_tensor(target: Tensor, batch_size: int) -> CheckedTarget:
    dtype = target.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise CamkitTypeError(
            f"target: a tensor of classes must have an integer dtype, got {target.dtype}"
        )
    try:
        classes = target.detach().to("cpu", torch.int64)
    except (RuntimeError, NotImplementedError) as error:
        raise CamkitValueError(
            f"target: cannot read the class tensor on device {target.device} ({error}); "
            f"give classes on the CPU or the model's device"
        ) from error
    if classes.dim() == 0:
        return check_target(int(classes), batch_size)
    if target.dim() > 2 or len(target) != batch_size or (target.dim() == 2 and not target.shape[1]):
        raise CamkitValueError(
            f"target: a tensor of classes must have shape ({batch_size},), one per sample, "
            f"or ({batch_size}, k), k per sample; got {tuple(target.shape)}"
        )
    if classes.numel() and int(classes.min()) < 0:
        raise CamkitValueError(
            f"target: got class {int(classes.min())}; class indices must be non-negative"
        )
    return CheckedTarget(classes.view(batch_size, -1), None, multi=target.dim() == 2)


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
    ok = (
        isinstance(scores, Tensor)
        and scores.dim() in (1, 2)
        and scores.shape[0] == batch_size
        and (scores.dim() == 1 or scores.shape[1] > 0)
    )
    if not ok:
        got = (
            f"shape {tuple(scores.shape)}" if isinstance(scores, Tensor) else type(scores).__name__
        )
        raise CamkitValueError(
            f"target: the callable must return a tensor of shape ({batch_size},), one "
            f"score per sample (or ({batch_size}, k) for k targets), but returned {got}"
        )
    if not scores.dtype.is_floating_point:
        raise CamkitTypeError(f"target: the callable must return float scores, got {scores.dtype}")
    return scores

"""Targets inside a call: checked before the forward pass, bound to its output after.

The forms a user may give are documented in :mod:`camkit.targets`.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from camkit._engine.gradients import CHUNK
from camkit._engine.model_outputs import logits_in
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.targets import ScoreFunction, Target, class_scores


@dataclass(frozen=True)
class CheckedTarget:
    """A validated target: class indices ``(N, k)`` on the CPU, a callable, or the predicted
    class; ``largest`` is the largest class index given (-1 for none), read on the host."""

    classes: Tensor | None
    function: ScoreFunction | None
    multi: bool
    largest: int = -1
    takes_samples: bool = False


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
    takes_samples: bool = False

    @property
    def backward_chunk(self) -> int:
        """How many score columns one batched backward pass takes: a callable's own
        ``backward_chunk`` where it declares one (:class:`~camkit.TokenTarget`: 1), else
        :data:`~camkit._engine.gradients.CHUNK`."""
        if self.function is None:
            return CHUNK
        return int(getattr(self.function, "backward_chunk", CHUNK))

    def scores(self, output: Any, rows: Tensor | None = None) -> Tensor:
        """Scores ``(M, k)`` of the target for an output whose row ``i`` is sample ``rows[i]``
        (``rows=None``: row ``i`` is sample ``i``, the explained forward pass)."""
        if self.classes is None:
            function = cast(ScoreFunction, self.function)
            scores: Tensor = _scores_of(function, output, rows, self.takes_samples)
            return scores.view(len(scores), -1)
        classes = self.classes if rows is None else self.classes[rows.to(self.classes.device)]
        return class_scores(logits_in(output), classes)


def check_target(target: Target, batch_size: int) -> CheckedTarget:
    """Validate ``target`` before the forward pass."""
    if target is None:
        return CheckedTarget(None, None, multi=False)
    if callable(target):
        return CheckedTarget(None, target, multi=False, takes_samples=_takes_samples(target))
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, Tensor):
        return _check_class_tensor(target, batch_size)
    if isinstance(target, numbers.Number):
        index = _as_class(target, "target")
        return CheckedTarget(torch.full((batch_size, 1), index), None, multi=False, largest=index)
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
            classes = torch.tensor(rows, dtype=torch.int64)
            return CheckedTarget(classes, None, multi=True, largest=max(map(max, rows)))
        values = [_as_class(t, f"target[{i}]") for i, t in enumerate(target)]
        classes = torch.tensor(values, dtype=torch.int64)[:, None]
        return CheckedTarget(classes, None, multi=False, largest=max(values))
    raise CamkitTypeError(
        f"target: got {type(target).__name__}; allowed: None, an int, a sequence "
        f"of ints, an integer tensor, or a callable returning one score per sample"
    )


def bind_target(checked: CheckedTarget, output: Any, batch_size: int) -> tuple[BoundTarget, Tensor]:
    """Resolve the predicted class, check classes and callables against the output, and
    score the output: the bound target and its scores ``(N, k)``."""
    if checked.function is not None:
        scores = _call_score_function(checked.function, output, batch_size, checked.takes_samples)
        k = 1 if scores.dim() == 1 else scores.shape[1]
        bound = BoundTarget(
            None, checked.function, scores.dim() == 2, k, takes_samples=checked.takes_samples
        )
        return bound, scores.view(batch_size, k)
    logits = _classifier_output(logits_in(output), batch_size)
    if checked.classes is None:
        classes = logits.detach().argmax(dim=1, keepdim=True)
    else:
        n_classes = logits.shape[1]
        if checked.largest >= n_classes:  # read on the host: no device round trip
            i = int(checked.classes.flatten().argmax()) // checked.classes.shape[1]
            raise CamkitValueError(
                f"target: class {checked.largest} (sample {i}) is out of range; the model "
                f"outputs {n_classes} classes, so allowed: 0 to {n_classes - 1}"
            )
        classes = checked.classes.to(logits.device)
    bound = BoundTarget(classes, None, multi=checked.multi, k=classes.shape[1])
    return bound, class_scores(logits, classes)


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
    low, high = classes.aminmax()
    if int(low) < 0:
        raise CamkitValueError(f"target: got class {int(low)}; class indices must be non-negative")
    return CheckedTarget(
        classes.view(batch_size, -1), None, multi=target.dim() == 2, largest=int(high)
    )


def _classifier_output(output: Any, batch_size: int) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        got = (
            f"a tensor of shape {tuple(output.shape)}"
            if isinstance(output, Tensor)
            else type(output).__name__
        )
        raise CamkitTypeError(
            f"target: a class target needs class scores of shape (N, classes): the model's "
            f"output, its .logits, or its 'logits' or 'out' entry; the model returned {got}; "
            f"pass a callable target that maps the output to one score per sample"
        )
    if output.shape[0] != batch_size or not output.dtype.is_floating_point:
        raise CamkitValueError(
            f"target: the model output has shape {tuple(output.shape)} and dtype "
            f"{output.dtype}; a class target needs float scores of shape "
            f"({batch_size}, classes)"
        )
    return output


def _takes_samples(fn: ScoreFunction) -> bool:
    """Whether ``fn`` takes a ``samples`` argument (the sample of each output row)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return "samples" in parameters


def _scores_of(fn: ScoreFunction, output: Any, rows: Tensor | None, takes_samples: bool) -> Any:
    if takes_samples:
        return cast(Callable[..., Any], fn)(output, samples=rows)
    return fn(output)


def _call_score_function(
    fn: ScoreFunction, output: Any, batch_size: int, takes_samples: bool
) -> Tensor:
    scores: Tensor = _scores_of(fn, output, None, takes_samples)
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

"""The stages every explainer's call goes through, named once and shared.

:func:`run_pass` is the one runner every explainer's ``explain`` calls: it
refuses the options the explainer does not declare, validates the input and
the target (``Request.check``) before anything runs, holds the model in eval
mode (unless the maps are to be differentiable, when the model runs as the
caller set it), runs the method's own ``compute``, makes the call's one check
that the numbers are finite (:func:`check_finite`) and shapes the
:class:`~camkit.CAMResult` (:func:`result`). Inside ``compute``, :func:`bind_and_score`
binds the target to the model output and computes the scores, and
:func:`gradients_at` finds the gradient of the scores with respect to what is
explained (a layer's output, or the input).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camkit._engine.gradients import CHUNK, score_gradients
from camkit._engine.model import (
    Precision,
    check_finite_input,
    check_input,
    detached,
    eval_mode,
    forward,
    select_rows,
)
from camkit._engine.targets import BoundTarget, CheckedTarget, bind_target, check_target
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.result import CAMResult
from camkit.targets import Target

if TYPE_CHECKING:
    from camkit.explainer import Explainer


@dataclass(frozen=True)
class CallOptions:
    """The options of one :meth:`camkit.BaseCAM.explain` call that shape each pass's maps."""

    relu: bool
    upsample: bool
    counterfactual: bool
    eigen_smooth: bool
    differentiable: bool


@dataclass(frozen=True)
class Request:
    """A validated call: the input batch, its target, the model's further inputs."""

    x: Tensor
    target: CheckedTarget
    forward_args: tuple[Any, ...]
    forward_kwargs: Mapping[str, Any] | None
    precision: Precision
    """The autocast regions the caller had open: every run of the model opens them again."""

    @classmethod
    def check(
        cls,
        x: Tensor,
        target: Target,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> Request:
        """Validate ``x`` and ``target`` before the forward pass."""
        batch_size = check_input(x)
        checked = check_target(target, batch_size)
        if isinstance(forward_args, (str, bytes)) or not isinstance(forward_args, Sequence):
            raise CamkitTypeError(
                f"forward_args: got {type(forward_args).__name__}; allowed: a tuple or list of "
                f"the model's further positional inputs"
            )
        if forward_kwargs is not None and not isinstance(forward_kwargs, Mapping):
            raise CamkitTypeError(
                f"forward_kwargs: got {type(forward_kwargs).__name__}; allowed: a dict of the "
                f"model's keyword inputs, or None"
            )
        return cls(x, checked, tuple(forward_args), forward_kwargs, Precision.of_caller())

    @property
    def batch_size(self) -> int:
        """N, the number of samples."""
        return len(self.x)

    def run(
        self, model: nn.Module, inputs: Tensor | None = None, rows: Tensor | None = None
    ) -> Any:
        """``model(inputs, *forward_args, **forward_kwargs)``; ``inputs`` defaults to ``x``.

        With ``rows`` (row ``i`` of ``inputs`` belongs to sample ``rows[i]``), the
        per-sample tensors among the further inputs are picked to match.
        """
        args, kwargs = self.forward_args, self.forward_kwargs
        if rows is not None:
            args, kwargs = select_rows(args, kwargs, rows, self.batch_size)
        with self.precision.callers():
            return forward(model, self.x if inputs is None else inputs, args, kwargs)


def bind_and_score(request: Request, output: Any) -> tuple[BoundTarget, Tensor]:
    """The target bound to ``output``, and its scores ``(N, k)`` (in the autograd graph)."""
    return bind_target(request.target, output, request.batch_size)


def gradients_at(
    scores: Tensor,
    tensors: Sequence[Tensor],
    names: Sequence[str],
    *,
    create_graph: bool = False,
    chunk: int = CHUNK,
) -> list[Tensor]:
    """``d scores / d t`` ``(N, k, *t.shape[1:])`` for each tensor; a clear error naming the
    tensor the scores do not depend on (a constant target, a layer after the score). With
    ``create_graph`` the gradients are themselves in the autograd graph.

    Of several tensors (the layers of one CAM, such as the levels of a feature
    pyramid), only some need to reach the scores: the others get a zero
    gradient (a detector's box head reads each box from one level only).
    """
    gradients = score_gradients(scores, tensors, create_graph=create_graph, chunk=chunk)
    if len(tensors) > 1 and any(g is not None for g in gradients):
        n, k = scores.shape
        return [
            g if g is not None else t.new_zeros(n, k, *t.shape[1:])
            for g, t in zip(gradients, tensors, strict=True)
        ]
    for name, gradient in zip(names, gradients, strict=True):
        if gradient is None:
            raise CamkitValueError(
                f"target: the score does not depend on {name}; explain a layer the score "
                f"is computed from, with a target computed from the model output"
            )
    return [g for g in gradients if g is not None]


def check_finite(x: Tensor, scores: Tensor, maps: Mapping[str, Tensor]) -> None:
    """Raise if a score or a map is NaN or infinite.

    A successful call reads one number from the device here, and nowhere
    else: the sum of every score and map (a NaN or an infinity anywhere makes
    it non-finite). Only then are the parts looked at one by one, to name the
    culprit (or find that the sum merely overflowed).
    """
    total = scores.detach().sum(dtype=torch.float32)
    for values in maps.values():  # differentiable maps: read without joining their graph
        total = total + (values.detach() if values.requires_grad else values).sum()
    if math.isfinite(float(total)):  # one read; Tensor.isfinite adds four operations
        return
    check_scores_finite(x, scores)
    for name, values in maps.items():
        _raise_if_not_finite(values, f"layer: the map of {name!r}", None)


def check_scores_finite(x: Tensor, scores: Tensor) -> None:
    """Raise if a score is NaN or infinite (naming a non-finite input first, if ``x`` is one).

    For error paths: a method whose weights fail on NaN activations is better
    explained by the NaN input or score behind them.
    """
    _raise_if_not_finite(scores.detach(), "target: the score", x)


def _raise_if_not_finite(values: Tensor, what: str, x: Tensor | None) -> None:
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        if x is not None:
            check_finite_input(x)
        samples = sorted({int(i) for i in bad.nonzero()[:, 0]})[:5]
        raise CamkitValueError(
            f"{what} is NaN or infinite for sample(s) {samples}; the model overflows or "
            f"produces NaN on this input (in float16, try float32)"
        )


def result(
    maps: Tensor,
    layer_maps: dict[str, Tensor],
    output: Any,
    target: BoundTarget,
    scores: Tensor,
    differentiable: bool = False,
) -> CAMResult:
    """The call's result; the ``k`` axis of maps, scores and classes is dropped unless the
    target asked for several per sample. Output and scores are detached unless the maps
    are ``differentiable``."""
    classes = target.classes
    if not differentiable:
        output, scores = detached(output), scores.detach()
    if not target.multi:
        maps, scores = maps[:, 0], scores[:, 0]
        classes = None if classes is None else classes[:, 0]
        layer_maps = {name: m[:, 0] for name, m in layer_maps.items()}
    return CAMResult(maps, output, scores, classes, layer_maps)


@dataclass(frozen=True)
class Explained:
    """What an explainer's own computation produced for one call: maps ``(N, k, ...)``
    (finished: upsampled and scaled as asked), each layer's own (or each term's), and the
    output, target and scores of the forward pass."""

    maps: Tensor
    layer_maps: dict[str, Tensor]
    output: Any
    target: BoundTarget
    scores: Tensor


def run_pass(
    explainer: Explainer,
    x: Tensor,
    target: Target,
    compute: Callable[[Request], Explained],
    *,
    upsample: bool = True,
    differentiable: bool = False,
    forward_args: Sequence[Any] = (),
    forward_kwargs: Mapping[str, Any] | None = None,
) -> CAMResult:
    """One call of ``explainer``: the shared stages around its own ``compute(request)``.

    Refuses the options ``explainer`` does not declare, validates ``x`` and
    ``target``, holds the model in eval mode (not for differentiable maps,
    which follow the caller's mode), runs ``compute`` outside the caller's
    autocast regions (every run of the model through :meth:`Request.run`
    opens them again), checks once that scores and maps are finite, and
    shapes the result.
    """
    explainer.check_options(upsample=upsample, differentiable=differentiable)
    with torch.inference_mode(False):  # a target made here must not be an inference tensor
        request = Request.check(x, target, forward_args, forward_kwargs)
        mode = nullcontext() if differentiable else eval_mode(explainer.model)
        with mode, request.precision.full():  # camkit's own arithmetic gives float32 maps
            done = compute(request)
    check_finite(x, done.scores, done.layer_maps or {"maps": done.maps})
    return result(done.maps, done.layer_maps, done.output, done.target, done.scores, differentiable)

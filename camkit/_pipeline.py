"""The stages every explainer's call goes through, named once and shared.

``Request.check`` validates the input and the target before anything runs;
:func:`scored` binds the target to the model output and computes the scores;
:func:`explained_by` finds the gradient of the scores with respect to what is
explained (a layer's output, or the input); :func:`check_finite` makes the
call's one check that the numbers are finite; :func:`result` shapes the
:class:`~camkit.CAMResult`. :class:`~camkit.BaseCAM` and the guided methods
read as these stages in order, around their own hooked forward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import torch
from torch import Tensor, nn

from camkit._gradients import score_gradients
from camkit._model import check_finite_input, check_input, detached, forward, select_rows
from camkit._targets import BoundTarget, CheckedTarget, bind_target, check_target
from camkit.errors import CamkitValueError
from camkit.result import CAMResult
from camkit.targets import Target

_P = ParamSpec("_P")
_E = TypeVar("_E")


def maps_only(
    explain: Callable[Concatenate[_E, _P], CAMResult],
) -> Callable[Concatenate[_E, _P], Tensor]:
    """An explainer's ``__call__``, made from its ``explain``: the same arguments, declared
    once, and only the maps returned."""

    def call(self: _E, /, *args: _P.args, **kwargs: _P.kwargs) -> Tensor:
        explained: CAMResult = getattr(self, "explain")(*args, **kwargs)  # noqa: B009
        return explained.maps

    # help(), IDEs and Sphinx show explain's arguments, and the maps as what comes back
    signature = inspect.signature(explain).replace(return_annotation="Tensor")
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__annotations__ = {**explain.__annotations__, "return": "Tensor"}
    call.__module__ = explain.__module__
    call.__name__ = "__call__"
    call.__qualname__ = explain.__qualname__.replace("explain", "__call__")
    call.__doc__ = (
        "Return only the maps: ``explain(...).maps``, with the same arguments as :meth:`explain`."
    )
    return call


@dataclass(frozen=True)
class Request:
    """A validated call: the input batch, its target, the model's further inputs."""

    x: Tensor
    target: CheckedTarget
    forward_args: tuple[Any, ...] = ()
    forward_kwargs: Mapping[str, Any] | None = None

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
        return cls(x, check_target(target, batch_size), tuple(forward_args), forward_kwargs)

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
        return forward(model, self.x if inputs is None else inputs, args, kwargs)


def scored(request: Request, output: Any) -> tuple[BoundTarget, Tensor]:
    """The target bound to ``output``, and its scores ``(N, k)`` (in the autograd graph)."""
    return bind_target(request.target, output, request.batch_size)


def explained_by(
    scores: Tensor,
    tensors: Sequence[Tensor],
    names: Sequence[str],
    *,
    create_graph: bool = False,
) -> list[Tensor]:
    """``d scores / d t`` ``(N, k, *t.shape[1:])`` for each tensor; a clear error naming the
    tensor the scores do not depend on (a constant target, a layer after the score). With
    ``create_graph`` the gradients are themselves in the autograd graph.

    Of several tensors (the layers of one CAM, such as the levels of a feature
    pyramid), only some need to reach the scores: the others get a zero
    gradient (a detector's box head reads each box from one level only).
    """
    gradients = score_gradients(scores, tensors, create_graph=create_graph)
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
    sums = torch.stack([scores.detach().float().sum(), *(m.sum() for m in maps.values())])
    if bool(sums.sum().isfinite()):
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

"""Re-running the model for one layer of one call: what a method's weights may ask for.

A :class:`Rescoring` holds, explicitly, the state of one explained pass that a
re-run needs (the request, the layer's output and gradients as recorded, the
bound target and its scores, the call's options) and offers the four ways a
:class:`~camkit.LayerContext` re-runs the model: other inputs
(:meth:`~Rescoring.score_inputs`), the layer's output replaced
(:meth:`~Rescoring.score_activations`, through the network after the layer
where :mod:`torch.fx` splits it off), second derivatives
(:meth:`~Rescoring.hessian_times`) and a whole new pass
(:meth:`~Rescoring.rerun`). Every run of the model opens the caller's autocast
regions again (see :class:`camkit._engine.model.Precision`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, fx, nn

from camkit._engine.hooks import ReplaceOutput, capture
from camkit._engine.layers import LayerRef
from camkit._engine.layout import Layout
from camkit._engine.network_after import TailRunner, split
from camkit._engine.pipeline import CallOptions, Request, bind_and_score, gradients_at
from camkit._engine.targets import BoundTarget, CheckedTarget
from camkit.errors import CamkitModelError, CamkitValueError

if TYPE_CHECKING:
    from camkit.context import LayerContext

_UNTRIED = object()
"""The network after the layer has not been split off yet (it is, on first use)."""


class RescoredLayer(NamedTuple):
    """What re-runs need to know of the explainer for one of its layers.

    Attributes:
        model: The model.
        ref: The layer.
        layout: How the layer lays out its output.
        graph: The model traced by :mod:`torch.fx` with the layer kept whole, or
            ``None`` (the whole model re-runs instead of the network after the layer).
        needs_gradients: Whether a new pass takes the gradients at the layer.
        context_of: The layer's :class:`~camkit.LayerContext` for a new pass, given its
            request, the layer's output and call, the bound target, the scores and the
            gradients.
    """

    model: nn.Module
    ref: LayerRef
    layout: Layout
    graph: fx.Graph | None
    needs_gradients: bool
    context_of: Callable[[Request, Tensor, int, BoundTarget, Tensor, Tensor | None], LayerContext]


class Rescoring:
    """The re-runs of the model for one layer in one explained pass.

    ``recorded`` is the layer's output at call ``call`` as the forward pass made
    it (in the autograd graph when the pass recorded it), ``gradients`` the
    scores' gradients at it before any layout change (with a graph for
    methods that need second derivatives).
    """

    def __init__(
        self,
        layer: RescoredLayer,
        request: Request,
        recorded: Tensor,
        call: int,
        target: BoundTarget,
        scores: Tensor,
        gradients: Tensor | None,
        options: CallOptions,
    ) -> None:
        self.layer, self.request, self.call = layer, request, call
        self.recorded, self.gradients = recorded, gradients
        self.target, self.scores, self.options = target, scores, options
        self.ref = layer.ref
        self._tail: Any = _UNTRIED

    @torch.no_grad()
    def score_inputs(self, inputs: Tensor, samples: Tensor) -> Tensor:
        """The target scores ``(M, k)`` of the model on other inputs, row ``i`` for sample
        ``samples[i]``."""
        output = self.request.run(self.layer.model, inputs, samples)
        scores = self.target.scores(output, samples).float()
        if len(scores) != len(inputs):
            raise CamkitValueError(
                f"model: gave scores for {len(scores)} rows on {len(inputs)} copies of the "
                f"input; a method that re-runs the model on copies needs every input to "
                f"follow the batch: pass the model's other inputs (a text's input_ids) as "
                f"forward_kwargs, whose rows camkit picks for each copy, not fixed in a wrapper"
            )
        return scores

    @torch.no_grad()
    def score_activations(self, replacement: Tensor, samples: Tensor) -> Tensor:
        """The target scores ``(M, k)`` with the layer's output replaced by ``replacement``
        ``(M, C, *spatial)`` (channels first), row ``i`` for sample ``samples[i]``."""
        self.layer.layout.check_replaceable(self.ref.name, "replace its output by copies")
        rows = self.recorded.detach()[samples]
        swapped = self.layer.layout.from_channels_first(replacement, rows).to(rows.dtype)
        with self.request.precision.callers():  # the network after the layer is the model's
            tail = self._network_after() if self.layer.graph is not None else None
            if tail is not None:
                output = tail.run(swapped, samples)
            else:
                with ReplaceOutput(self.ref, self.call, swapped):
                    output = self.request.run(self.layer.model, self.request.x[samples], samples)
        return self.target.scores(output, samples).float()

    def hessian_times(self, vectors: Tensor) -> Tensor:
        """Second derivatives of each target's score at the layer times ``vectors``
        ``(N, C, *spatial)``: ``(N, k, C, *spatial)``, in the layout of the activations."""
        gradients, recorded, name = self.gradients, self.recorded, self.ref.name
        if gradients is None or not gradients.requires_grad:
            raise CamkitValueError(
                f"hessian_times: the gradients of layer {name!r} were taken without a "
                f"graph; set needs_hessian = True on the method"
            )
        self.layer.layout.check_replaceable(name, "take second derivatives at it")
        v = self.layer.layout.from_channels_first(vectors, recorded).to(recorded.dtype)
        products = []
        with torch.enable_grad():
            for t in range(gradients.shape[1]):
                (product,) = torch.autograd.grad(
                    gradients[:, t], recorded, v, retain_graph=True, allow_unused=True
                )
                products.append(torch.zeros_like(v) if product is None else product.detach())
        sign = -1.0 if self.options.counterfactual else 1.0
        stacked = self.layer.layout.gradients(torch.stack(products, dim=1), name)
        return sign * stacked.to(context_dtype(recorded, self.options.differentiable))

    def rerun(self, inputs: Tensor) -> LayerContext:
        """The context of the same layer and target classes for other inputs, from a new
        forward (and backward) pass."""
        fixed = self.request.target  # a callable, scored anew; else the classes explained
        if self.target.classes is not None:
            fixed = CheckedTarget(self.target.classes, None, multi=True)
        other = replace(self.request, x=inputs, target=fixed)
        hooked, output = capture([self.ref], lambda: other.run(self.layer.model))
        captured = hooked.captured(0)
        if captured is None:
            raise CamkitValueError(
                f"layer: {self.ref.name!r} was not reached in the forward pass on the re-run inputs"
            )
        with torch.enable_grad():
            other_target, other_scores = bind_and_score(other, output)
            other_gradients = (
                gradients_at(other_scores, [captured.activation], [f"layer {self.ref.name!r}"])[0]
                if self.layer.needs_gradients
                else None
            )
        return self.layer.context_of(
            other, captured.activation, captured.number, other_target, other_scores, other_gradients
        )

    def _network_after(self) -> TailRunner | None:
        """The network after the layer's call, checked against the pass's scores; ``None``
        where it cannot be split off (see :mod:`camkit._engine.network_after`). Split on
        first use."""
        if self._tail is _UNTRIED:
            self._tail = self._split()
        tail: TailRunner | None = self._tail
        return tail

    def _split(self) -> TailRunner | None:
        graph = self.layer.graph
        found = None if graph is None else split(self.layer.model, graph, self.ref, self.call)
        if found is None:
            return None
        try:
            values = self.request.run(found.prefix)
        except CamkitModelError:
            return None
        runner = TailRunner(found, self.ref, tuple(values), self.request.batch_size)
        return runner if runner.agrees(self.target.scores, self.scores.detach()) else None


def context_dtype(recorded: Tensor, differentiable: bool) -> torch.dtype:
    """The dtype a method computes in: float32, or float64 for a float64 layer in
    differentiable mode (for gradcheck)."""
    wide = differentiable and recorded.dtype == torch.float64
    return torch.float64 if wide else torch.float32

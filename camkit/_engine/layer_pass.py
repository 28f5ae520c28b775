"""One hooked pass of a CAM: the model run with its layers hooked, the target scored, the
gradients taken at the layers, and each layer's signed map made from the method's weights.

:func:`layer_pass` is what :class:`~camkit.BaseCAM` runs for ``x`` and again for
each augmented copy; :func:`layer_context` builds the
:class:`~camkit.LayerContext` a method's :meth:`~camkit.BaseCAM.weights` reads,
for this pass or for a new one that a re-run starts (see
:mod:`camkit._engine.rescoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camkit._engine import detection
from camkit._engine.finishing import rectified_and_resized
from camkit._engine.hooks import capture, reached
from camkit._engine.pipeline import (
    CallOptions,
    Request,
    bind_and_score,
    check_scores_finite,
    gradients_at,
)
from camkit._engine.rescoring import RescoredLayer, Rescoring, context_dtype
from camkit._engine.targets import BoundTarget
from camkit.context import LayerContext

if TYPE_CHECKING:
    from camkit.base import BaseCAM


@dataclass(frozen=True)
class LayerPass:
    """What one pass produced: each layer's map ``(N, k, *spatial)``, rectified and resized
    as asked but unscaled, and the output, target and scores of its forward pass."""

    layer_maps: dict[str, Tensor]
    output: Any
    target: BoundTarget
    scores: Tensor


def layer_pass(cam: BaseCAM, request: Request, options: CallOptions) -> LayerPass:
    """One forward (and backward) pass of ``cam`` on ``request``: each layer's map."""
    differentiable = options.differentiable
    with ExitStack() as modes:
        # a training step (differentiable) runs the model as the caller set it
        if cam._box_heads and not differentiable:
            modes.enter_context(detection.rowwise_box_heads(cam._box_heads))
        hooked, output = capture(
            cam.layers, lambda: request.run(cam.model), record_all=differentiable
        )
        captured = reached(hooked, cam.layers)
        natives = [c.activation for c in captured]
        with torch.enable_grad():
            target, scores = bind_and_score(request, output)
            gradients: Sequence[Tensor | None] = (
                gradients_at(
                    scores,
                    natives,
                    [f"layer {n!r}" for n in cam.layer_names],
                    create_graph=differentiable or cam.needs_hessian,
                    chunk=target.backward_chunk,
                )
                if cam.needs_gradients
                else [None] * len(natives)
            )
        signed: dict[str, Tensor] = {}
        with torch.set_grad_enabled(differentiable):
            for index, (native, grads) in enumerate(zip(natives, gradients, strict=True)):
                context = layer_context(
                    cam, request, index, native, captured[index].number, target, scores, grads,
                    options,
                )  # fmt: skip
                try:
                    signed[context.layer] = cam._layer_map(context, options.eigen_smooth)
                except Exception:
                    check_scores_finite(request.x, scores)  # a NaN input explains it better
                    raise
        size = tuple(request.x.shape[2:]) if options.upsample else None
        layer_maps = {
            name: rectified_and_resized(maps, options.relu, size, differentiable).to(
                request.x.device
            )
            for name, maps in signed.items()
        }
    return LayerPass(layer_maps, output, target, scores)


def layer_context(
    cam: BaseCAM,
    request: Request,
    index: int,
    native: Tensor,
    call: int,
    target: BoundTarget,
    scores: Tensor,
    gradients: Tensor | None,
    options: CallOptions,
) -> LayerContext:
    """Layer ``index``'s tensors in the channels-first layout, and the ways to re-run the
    model (``native`` is the layer's output at call ``call``, 0 the first, the one explained)."""
    ref = cam.layers[index]

    def context_of(
        other: Request,
        output: Tensor,
        number: int,
        bound: BoundTarget,
        rescores: Tensor,
        grads: Tensor | None,
    ) -> LayerContext:
        return layer_context(cam, other, index, output, number, bound, rescores, grads, options)

    graph = cam._traced.get(id(ref)) if cam.split_tail else None
    layer = RescoredLayer(cam.model, ref, cam.layout, graph, cam.needs_gradients, context_of)
    rescoring = Rescoring(layer, request, native, call, target, scores, gradients, options)
    dtype = context_dtype(native, options.differentiable)
    if not options.differentiable:
        native = native.detach()
    activations = cam.layout.activations(native, ref.name, request.x, options.upsample)
    if gradients is not None:
        gradients = cam.layout.gradients(gradients, ref.name).to(dtype)
        if options.counterfactual:
            gradients = -gradients
    return LayerContext(
        layer=ref.name,
        activations=activations.to(dtype)[:, None],
        scores=scores.detach().float(),
        inputs=request.x,
        classes=target.classes,
        gradients=gradients,
        score_inputs=rescoring.score_inputs,
        score_activations=rescoring.score_activations,
        hessian_times=rescoring.hessian_times,
        rerun=rescoring.rerun,
    )

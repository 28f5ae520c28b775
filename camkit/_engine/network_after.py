"""Re-running only the part of a network after a layer: a :mod:`torch.fx` split at the layer.

A method that re-scores the model with a layer's output replaced (Ablation-CAM
zeroes one channel per copy) needs only the network *after* the layer. Where
``torch.fx`` can trace the model, the traced graph is cut at the layer's call:

* the *prefix* computes the layer's output and every earlier value the rest
  still reads (a ResNet block's identity branch, the input itself), once per
  call of the explainer;
* the *tail* takes those values and runs everything after the layer.

The split is checked before it is used: the tail, fed the prefix's values
with the samples in reverse order, must reproduce the model's scores. A model
fx cannot trace, a layer inside a traced-through function, or a failed check
means ``None``: the caller re-runs the whole model, with the same maps. The
model is traced once, when the explainer is built (see :func:`trace`); each
call cuts the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from camkit._engine.layers import LayerRef
from camkit._engine.state import TRACING

Score = Callable[[Any, Tensor], Tensor]
"""``score(output, samples) -> (M, k)``: the target scores of a model output."""


class _LeafAt(fx.Tracer):
    """fx's tracer, with the explained module kept whole (a ``Sequential`` is otherwise
    traced through, leaving no node for it)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.path or super().is_leaf_module(
            m, module_qualified_name
        )


@dataclass(frozen=True)
class Split:
    """A model cut at one call of a layer.

    Attributes:
        prefix: Takes the model's inputs; returns the layer's output first, then
            every earlier value the tail reads.
        tail: Takes those values; returns the model's output.
    """

    prefix: fx.GraphModule
    tail: fx.GraphModule


def trace(model: nn.Module, ref: LayerRef) -> fx.Graph | None:
    """``model``'s fx graph with ``ref``'s module kept whole, or ``None`` where fx cannot
    trace it.

    Call it when an explainer is built, not during a call: while it traces, fx
    patches ``torch.nn.Module.__call__`` for the whole process, so a forward pass
    in another thread at that moment would be traced too (and fail). A lock keeps
    camkit's own traces one at a time.
    """
    if not ref.path:
        return None
    with TRACING:
        try:
            return _LeafAt(ref.path).trace(model)
        except Exception:  # any tracing failure means: re-run the whole model
            return None


def split(model: nn.Module, graph: fx.Graph, ref: LayerRef, number: int) -> Split | None:
    """Cut ``model``'s traced ``graph`` at call ``number`` (0 the first) of ``ref``'s module,
    or ``None`` where the graph has no such call."""
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target == ref.path]
    if number >= len(calls):
        return None
    cut = nodes.index(calls[number])
    after = set(nodes[cut + 1 :])
    live = [calls[number]] + [
        n for n in nodes[:cut] if n.op != "get_attr" and any(user in after for user in n.users)
    ]
    if not any(user in after for user in calls[number].users):
        return None  # the output does not depend on the layer
    return Split(_prefix(model, nodes[: cut + 1], live), _tail(model, nodes, cut, live))


def _prefix(model: nn.Module, nodes: list[fx.Node], live: list[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        env[node] = graph.node_copy(node, env.__getitem__)
    graph.output(tuple(env[n] for n in live))
    return fx.GraphModule(model, graph)


def _tail(model: nn.Module, nodes: list[fx.Node], cut: int, live: list[fx.Node]) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: graph.placeholder(f"live_{i}") for i, n in enumerate(live)}
    after = nodes[cut + 1 :]
    needed = {arg for n in after for arg in n.all_input_nodes}
    for node in nodes[:cut]:
        if node.op == "get_attr" and node in needed:  # parameters and constants the tail reads
            env[node] = graph.node_copy(node, env.__getitem__)
    for node in after:
        env[node] = graph.node_copy(node, env.__getitem__)
    return fx.GraphModule(model, graph)


class TailRunner:
    """The tail of a :class:`Split`, bound to one call's inputs.

    Args:
        split: The cut model.
        ref: The explained layer (its ``keys`` pick the tensor out of the module's output).
        values: The prefix's outputs for the call's ``N`` samples.
        batch_size: ``N``; tensors with a leading axis of that length are per-sample.
    """

    def __init__(self, split: Split, ref: LayerRef, values: tuple[Any, ...], batch_size: int):
        self.split = split
        self.ref = ref
        self.values = values
        self.batch_size = batch_size

    def run(self, replacement: Tensor, samples: Tensor) -> Any:
        """The model's output with the layer's (selected) output replaced by ``replacement``
        rows, row ``i`` for sample ``samples[i]``."""
        layer = replacement
        if self.ref.keys:  # the module's output holds more than the tensor replaced
            layer = self.ref.replace(_rows(self.values[0], samples, self.batch_size), replacement)
        rest = (_rows(v, samples, self.batch_size) for v in self.values[1:])
        return self.split.tail(layer, *rest)

    def agrees(self, score: Score, scores: Tensor) -> bool:
        """Whether the tail, fed the samples in reverse order, gives ``scores`` (``(N, k)``,
        from the full model) in reverse order: a check that every per-sample value was
        recognised as one."""
        samples = torch.arange(self.batch_size - 1, -1, -1, device=scores.device)
        try:
            layer = self.ref.select(_rows(self.values[0], samples, self.batch_size))
            output = self.run(layer, samples)
        except Exception:  # a tail that fails is a tail not to use
            return False
        got = score(output, samples).float()  # the target's own errors are the caller's
        expected = scores[samples].float()
        if got.shape != expected.shape:
            return False
        scale = expected.abs().max().clamp_min(1.0)
        close = (got - expected).abs() <= 1e-4 * (expected.abs() + scale)
        return bool(close.all())  # the one read of a device value the split adds


def _rows(value: Any, samples: Tensor, batch_size: int) -> Any:
    """``value`` with the rows of ``samples`` picked from every per-sample tensor in it."""
    if isinstance(value, Tensor):
        if value.dim() and value.shape[0] == batch_size:
            return value[samples.to(value.device)]
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_rows(v, samples, batch_size) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, samples, batch_size) for v in value)
    if isinstance(value, Mapping):
        return {k: _rows(v, samples, batch_size) for k, v in value.items()}
    return value

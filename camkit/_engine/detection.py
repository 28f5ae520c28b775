"""Two-stage detectors: the box head's backward pass, for the boxes a score reads only.

torchvision's Faster R-CNN and Mask R-CNN pool features for every proposal
(1,000 per image by default) and run the box head on all of them, but a
detection score reads a handful of rows. Autograd still runs RoIAlign's
backward and the box head's backward over every row, zero or not, and on the
CPU that is most of the cost of a CAM. While a CAM runs, the box head's output
is wrapped so that its backward pass recomputes the pooling and the head for
the rows whose gradient is not zero, and differentiates those alone: the same
gradient (the head works row by row: each row is one box), at a fraction of
the cost. Nothing changes in the forward pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

Rerun = Callable[[Sequence[Tensor], Tensor], Tensor]
"""``rerun(features, rows)``: the box head's output rows ``rows``, from the given features."""


def box_heads(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The box pooling and box head of each torchvision ``RoIHeads`` in ``model`` (found by
    duck typing: camkit does not import torchvision); an explainer looks them up once, when
    it is built, so that a call need not walk the model for them."""
    found = []
    for module in model.modules():
        kind = type(module)  # checked first: it is cheap, and most modules are not RoIHeads
        if kind.__name__ != "RoIHeads" or not kind.__module__.startswith("torchvision."):
            continue
        pool, head = getattr(module, "box_roi_pool", None), getattr(module, "box_head", None)
        if isinstance(pool, nn.Module) and isinstance(head, nn.Module):
            found.append((pool, head))
    return found


@contextmanager
def rowwise_box_heads(heads: list[tuple[nn.Module, nn.Module]]) -> Iterator[None]:
    """For the length of the block, back-propagate through each torchvision box head of
    ``heads`` (from :func:`box_heads`) only for the rows (boxes) whose gradient is not zero."""
    handles: list[RemovableHandle] = []
    try:
        for pool, head in heads:
            handles += _wrap(pool, head)
        yield
    finally:
        for handle in handles:
            handle.remove()


def _wrap(pool: nn.Module, head: nn.Module) -> list[RemovableHandle]:
    seen: dict[str, Any] = {}
    thread = threading.get_ident()  # forward passes of other threads are left alone

    def remember(module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() == thread:
            seen["args"] = args  # (features, proposals, image_shapes)

    def wrap(module: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != thread:
            return None
        args = seen.pop("args", None)
        if seen.get("rerunning") or args is None:  # the backward's own recomputation
            return None
        if not isinstance(output, Tensor) or not output.requires_grad:
            return None
        features, proposals, shapes = args
        if not isinstance(features, Mapping):
            return None
        keys = [k for k, v in features.items() if isinstance(v, Tensor)]

        def rerun(tensors: Sequence[Tensor], rows: Tensor) -> Tensor:
            chosen, start = [], 0
            for boxes in proposals:
                mine = rows[(rows >= start) & (rows < start + len(boxes))] - start
                chosen.append(boxes[mine])
                start += len(boxes)
            seen["rerunning"] = True
            try:
                pooled = pool(dict(zip(keys, tensors, strict=True)), chosen, shapes)
                rerun_output: Tensor = head(pooled)
            finally:
                seen["rerunning"] = False
            return rerun_output

        return _Rowwise.apply(rerun, output.detach(), *(features[k] for k in keys))

    return [pool.register_forward_pre_hook(remember), head.register_forward_hook(wrap)]


class _Rowwise(torch.autograd.Function):
    """Identity forward; the backward differentiates ``rerun`` for the rows that need it."""

    @staticmethod
    def forward(ctx: Any, rerun: Rerun, output: Tensor, *features: Tensor) -> Tensor:
        ctx.rerun = rerun
        ctx.save_for_backward(*features)
        return output.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        features = ctx.saved_tensors
        rows = grad.flatten(1).ne(0).any(1).nonzero()[:, 0]
        leaves = [f.detach().requires_grad_(f.requires_grad) for f in features]
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        found: dict[int, Tensor | None] = {}
        if len(rows) and wanted:
            with torch.enable_grad():
                recomputed = ctx.rerun(leaves, rows)
                grads = torch.autograd.grad(recomputed, wanted, grad[rows], allow_unused=True)
            found = {id(leaf): g for leaf, g in zip(wanted, grads, strict=True)}
        return (None, None, *(found.get(id(leaf)) for leaf in leaves))

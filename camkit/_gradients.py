"""Gradients of the target scores, by :func:`torch.autograd.grad` (never ``backward()``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

_VMAP_UNSUPPORTED = re.compile(r"\bvmap\b|[Bb]atching rule")
"""What autograd's batched backward (vmap) says when some backward step cannot be batched."""


def score_gradients(scores: Tensor, tensors: Sequence[Tensor]) -> list[Tensor | None]:
    """``d scores / d t`` for each tensor ``t``, as ``(N, k, *t.shape[1:])``.

    Row ``i`` of ``scores`` ``(N, k)`` must depend on row ``i`` of each tensor
    only (a model in eval mode). ``None`` marks a tensor the scores do not
    depend on.
    """
    if not scores.requires_grad:
        return [None] * len(tensors)
    if scores.shape[1] == 1:
        grads = torch.autograd.grad(scores.sum(), tensors, allow_unused=True)
        return [None if g is None else g[:, None] for g in grads]
    return _batched(scores, tensors)


def _batched(scores: Tensor, tensors: Sequence[Tensor]) -> list[Tensor | None]:
    """The ``k`` score columns in one batched backward pass, or one pass per column where
    some backward step of the model cannot be batched."""
    n, k = scores.shape
    eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
    try:
        grads = torch.autograd.grad(
            scores,
            tensors,
            grad_outputs=eye[:, None, :].expand(k, n, k),
            is_grads_batched=True,
            retain_graph=True,  # a failed batched pass must leave the graph for the fallback
            allow_unused=True,
        )
        return [None if g is None else g.movedim(0, 1) for g in grads]
    except RuntimeError as error:
        if isinstance(error, torch.OutOfMemoryError) or not _VMAP_UNSUPPORTED.search(str(error)):
            raise
    columns = [
        torch.autograd.grad(scores[:, j].sum(), tensors, retain_graph=j < k - 1, allow_unused=True)
        for j in range(k)
    ]
    return [
        None if columns[0][i] is None else torch.stack([c[i] for c in columns], dim=1)
        for i in range(len(tensors))
    ]

"""Gradients of the target scores, by :func:`torch.autograd.grad` (never ``backward()``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

_VMAP_UNSUPPORTED = re.compile(r"\bvmap\b|[Bb]atching rule")
"""What autograd's batched backward (vmap) says when some backward step cannot be batched."""

CHUNK = 16
"""The most targets one batched backward pass takes: its memory grows with the number of
targets (a detector's box head, replayed for 100 detections, needs gigabytes)."""


def score_gradients(
    scores: Tensor, tensors: Sequence[Tensor], create_graph: bool = False, chunk: int = CHUNK
) -> list[Tensor | None]:
    """``d scores / d t`` for each tensor ``t``, as ``(N, k, *t.shape[1:])``, the ``k``
    columns in batched backward passes of up to ``chunk`` (1: one pass per column).

    Row ``i`` of ``scores`` ``(N, k)`` should depend on row ``i`` of each
    tensor only (a model in eval mode): what is computed is the gradient of
    each score column summed over the batch, which includes, in train mode,
    the paths through batch statistics after the layer (as a training loop's
    own ``autograd.grad`` would). ``None`` marks a tensor the scores do not
    depend on. With ``create_graph`` the gradients can be differentiated again.
    """
    if not scores.requires_grad:
        return [None] * len(tensors)
    if scores.shape[1] == 1:
        grads = torch.autograd.grad(
            scores.sum(), tensors, allow_unused=True, create_graph=create_graph
        )
        return [None if g is None else g[:, None] for g in grads]
    if chunk > 1:
        batched = _batched(scores, tensors, create_graph, chunk)
        if batched is not None:
            return batched
    return _by_column(scores, tensors, create_graph)


def _batched(
    scores: Tensor, tensors: Sequence[Tensor], create_graph: bool, chunk: int
) -> list[Tensor | None] | None:
    """The ``k`` score columns in batched backward passes of up to ``chunk`` columns; ``None``
    where some backward step of the model cannot be batched."""
    n, k = scores.shape
    eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
    try:
        chunks = []
        for start in range(0, k, chunk):
            rows = eye[start : start + chunk]
            chunks.append(
                torch.autograd.grad(
                    scores,
                    tensors,
                    grad_outputs=rows[:, None, :].expand(len(rows), n, k),
                    is_grads_batched=True,
                    retain_graph=True,  # for the next chunk, or the fallback after a failure
                    create_graph=create_graph,
                    allow_unused=True,
                )
            )
        return [
            None if chunks[0][i] is None else torch.cat([c[i] for c in chunks]).movedim(0, 1)
            for i in range(len(tensors))
        ]
    except RuntimeError as error:
        if isinstance(error, torch.OutOfMemoryError) or not _VMAP_UNSUPPORTED.search(str(error)):
            raise
    return None


def _by_column(
    scores: Tensor, tensors: Sequence[Tensor], create_graph: bool
) -> list[Tensor | None]:
    """The ``k`` score columns in one backward pass each."""
    k = scores.shape[1]
    columns = [
        torch.autograd.grad(
            scores[:, j].sum(),
            tensors,
            retain_graph=create_graph or j < k - 1,
            create_graph=create_graph,
            allow_unused=True,
        )
        for j in range(k)
    ]
    return [
        None if columns[0][i] is None else torch.stack([c[i] for c in columns], dim=1)
        for i in range(len(tensors))
    ]

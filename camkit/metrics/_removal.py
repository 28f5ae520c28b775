"""What the removal metrics share: pixel orders, baseline values, and scoring many copies
of a batch with some pixels replaced, in as few forward passes as the batch size allows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from camkit._engine.model import eval_mode, forward
from camkit._engine.model_outputs import logits_in
from camkit.errors import CamkitValueError
from camkit.metrics._sorting import stable_order

ORDERS = ("first", "quantus")
"""How pixels that tie in the map are ordered: ``"first"`` takes them in row-major
order (the result does not depend on a sorting algorithm); ``"quantus"`` in the order
of ``np.argsort(-a)``, an unstable sort, as Quantus 0.6 does."""


AREAS = ("fraction", "quantus")
"""How a curve is summarised: ``"fraction"``, the trapezoid area with the unperturbed
point first and the x-axis the share of pixels (or regions) removed, on [0, 1];
``"quantus"``, Quantus 0.6's ``np.trapz(curve, dx=1)`` over the perturbed points only."""


def check_area(area: str) -> None:
    """``area`` one of :data:`AREAS`, else a clear error naming the argument ``auc``."""
    if area not in AREAS:
        raise CamkitValueError(f"auc: got {area!r}; allowed: {', '.join(map(repr, AREAS))}")


def check_count(name: str, value: object) -> int:
    """A positive int, else a clear error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a positive int")
    return value


def check_ties(ties: str) -> None:
    if ties not in ORDERS:
        raise CamkitValueError(f"ties: got {ties!r}; allowed: {', '.join(map(repr, ORDERS))}")


def order(weights: Tensor, ties: str) -> Tensor:
    """Each row's indices, highest first (ties as ``ties`` says), ``(N, P)`` int64 on the CPU."""
    if ties == "quantus":
        return torch.from_numpy(np.argsort(-weights.cpu().numpy(), axis=1)).long()
    return stable_order(weights.cpu(), descending=True)


def baseline_values(x: Tensor, baseline: str | float) -> Tensor:
    """The value a removed pixel gets, per sample and channel, ``(N, C)``: ``"black"`` (each
    input's smallest value), ``"mean"`` (its mean) or a number, as Quantus's baselines."""
    n, channels = x.shape[:2]
    flat = x.detach().flatten(1)
    if baseline == "black":
        value = flat.amin(dim=1)
    elif baseline == "mean":
        value = flat.mean(dim=1)
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        value = torch.full((n,), float(baseline), dtype=x.dtype, device=x.device)
    else:
        raise CamkitValueError(
            f"baseline: got {baseline!r}; allowed: 'black' (the input's smallest value), "
            f"'mean', or a number"
        )
    return value[:, None].expand(n, channels).to(x.dtype)


def baseline_image(fill: Tensor, x: Tensor) -> Tensor:
    """The baseline image: each sample's ``fill`` ``(N, C)`` at every position of ``x``."""
    return fill.view(*fill.shape, *([1] * (x.dim() - 2))).expand_as(x)


def groups(ranked: Tensor, features_in_step: int) -> list[Tensor]:
    """The columns of ``ranked`` ``(N, P)`` in consecutive groups of ``features_in_step``
    (the last may be shorter)."""
    width = ranked.shape[1]
    return [ranked[:, s : s + features_in_step] for s in range(0, width, features_in_step)]


@torch.no_grad()
def scores(model: nn.Module, x: Tensor, classes: Tensor, softmax: bool, batch_size: int) -> Tensor:
    """The explained class's logit (or probability) for each row, float64 on the CPU."""
    parts = []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            out = logits_in(forward(model, x[start : start + batch_size])).double()
            if softmax:
                out = out.softmax(dim=1)
            picked = classes[start : start + batch_size].to(out.device)
            parts.append(out[torch.arange(len(out)), picked].cpu())
    return torch.cat(parts)


def removed_scores(
    model: nn.Module,
    x: Tensor,
    classes: Tensor,
    removals: Sequence[tuple[Tensor, Tensor]],
    softmax: bool,
    batch_size: int,
) -> Tensor:
    """Score one copy of the batch per removal ``(pixels, fill)``: ``pixels`` ``(N, k)`` pixel
    indices (all channels) set to ``fill`` ``(N, C)`` in the intact input. ``(len(removals),
    N)`` float64 scores; copies are scored ``batch_size`` rows at a time."""
    n = len(x)
    flat = x.detach().flatten(2)  # (N, C, P)
    per_pass = max(1, batch_size // n)
    out = []
    channels = flat.shape[1]
    for first in range(0, len(removals), per_pass):
        part = removals[first : first + per_pass]
        count = len(part)
        if len({pixels.shape[1] for pixels, _ in part}) == 1:  # one scatter for the pass
            index = torch.cat([pixels for pixels, _ in part]).to(x.device, torch.int64)
            fills = torch.cat([fill for _, fill in part]).to(x.device, x.dtype)  # (count * N, C)
            k = index.shape[1]
            batch = flat.repeat(count, 1, 1).scatter_(
                2, index[:, None, :].expand(-1, channels, -1), fills[:, :, None].expand(-1, -1, k)
            )
        else:  # subsets of several sizes: one copy at a time
            rows = torch.arange(n, device=x.device)[:, None]
            copies = []
            for pixels, fill in part:
                removed = flat.clone()
                index = pixels.to(x.device)
                removed[rows, :, index] = fill.to(x.dtype)[:, None, :].expand(
                    -1, index.shape[1], -1
                )
                copies.append(removed)
            batch = torch.cat(copies)
        scored = scores(
            model, batch.view(count * n, *x.shape[1:]), classes.repeat(count), softmax, batch_size
        )
        out.append(scored.view(count, n))
    return torch.cat(out)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """The Pearson correlation of each row pair (NaN where either row is constant)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(1) / norms.clamp_min(1e-300), torch.nan)


def cumulative_scores(
    model: nn.Module,
    start: Tensor,
    end: Tensor,
    step_of: Tensor,
    steps: int,
    classes: Tensor,
    softmax: bool,
    batch_size: int,
) -> Tensor:
    """Scores along a path from ``start`` to ``end`` (both ``(N, C, *spatial)``): after step
    ``s`` every pixel whose ``step_of`` ``(N, P)`` is ``<= s`` holds its ``end`` value, the
    rest their ``start`` values. ``(N, steps)`` float64; copies scored ``batch_size`` rows at a
    time."""
    n = len(start)
    start_flat, end_flat = start.detach().flatten(2), end.detach().flatten(2)
    step_of = step_of.to(start.device)[:, None]  # (N, 1, P)
    per_pass = max(1, batch_size // n)
    out = []
    for first in range(0, steps, per_pass):
        done = torch.arange(first, min(first + per_pass, steps), device=start.device)
        # every copy of the pass in one where: (copies, N, C, P)
        taken = step_of[None] <= done.view(-1, 1, 1, 1)
        copies = torch.where(taken, end_flat, start_flat).view(-1, *start.shape[1:])
        scored = scores(model, copies, classes.repeat(len(done)), softmax, batch_size)
        out.append(scored.view(len(done), n))
    return torch.cat(out).T


def steps_of(ranked: Tensor, features_in_step: int) -> Tensor:
    """For pixels taken in the order ``ranked`` ``(N, P)``, ``features_in_step`` per step: the
    step at which each pixel is taken, ``(N, P)``."""
    position = torch.empty_like(ranked)
    position.scatter_(1, ranked, torch.arange(ranked.shape[1]).expand_as(ranked).contiguous())
    return position // features_in_step

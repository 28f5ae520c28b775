"""What the metrics share: results, class probabilities in batches, maps from CAMs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.model import check_finite_input, check_input, eval_mode, forward
from camkit._engine.model_outputs import logits_in
from camkit._engine.option_checks import optional_batch_size, rows_per_pass
from camkit._engine.targets import check_target
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
from camkit.targets import Target

Maps = Tensor | Explainer | Callable[[Tensor, Tensor], Tensor]
"""Maps ``(N, *spatial)`` in [0, 1], or what computes them from ``(x, classes)``: a camkit
explainer, or any function ``maps(x, classes)``."""


@dataclass(frozen=True)
class MetricResult:
    """Per-sample values of a metric and their summary.

    Attributes:
        name: The metric's name.
        values: One value per sample, ``(N,)`` (``(N, P)`` for metrics measured
            at several points, such as ROAD's percentages).
        summary: The dataset-level number: the mean over samples (``NaN``
            samples, such as pointing-game images with an empty mask, left out).
        curves: Per-sample curves where the metric has them (deletion and
            insertion: ``(N, steps + 1)`` probabilities), else ``None``.
        fractions: The x-axis of ``curves`` or the columns of ``values``.
        unit: ``"sample"``, or ``"batch"`` for a metric that describes a batch as a
            whole (Sensitivity-n's correlation over the samples: ``values`` holds
            one value per ``n``; over a dataset, :func:`~camkit.metrics.evaluate`
            gives one row per batch, ``(batches, P)``).
    """

    name: str
    values: Tensor
    summary: float | list[float]
    curves: Tensor | None = None
    fractions: Tensor | None = field(default=None)
    unit: str = "sample"


def summarize(name: str, values: Tensor, **extra: Any) -> MetricResult:
    """Build a :class:`MetricResult` whose summary is the NaN-ignoring mean over samples."""
    mean = values.double().nanmean(dim=0)
    summary: float | list[float] = float(mean) if mean.dim() == 0 else mean.tolist()
    return MetricResult(name, values, summary, **extra)


def classes_of(model: nn.Module, x: Tensor, target: Target, batch_size: int) -> Tensor:
    """Class indices ``(N,)`` for ``target`` (``None``: the predicted class)."""
    checked = check_target(target, len(x))
    if checked.multi or checked.function is not None:
        raise CamkitValueError(
            "target: metrics score softmax probabilities of one class per sample; give None, "
            "an int, or one class per sample"
        )
    if checked.classes is not None:
        return checked.classes[:, 0]
    output = logits(model, x, batch_size)
    return output.argmax(dim=1).cpu()


@torch.no_grad()
def logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """The model's class scores on ``x`` in eval mode, ``batch_size`` rows at a time."""
    with eval_mode(model):
        parts = [
            logits_in(forward(model, x[i : i + batch_size])) for i in range(0, len(x), batch_size)
        ]
    if not all(isinstance(p, Tensor) and p.dim() == 2 for p in parts):
        got = tuple(parts[0].shape) if isinstance(parts[0], Tensor) else type(parts[0]).__name__
        raise CamkitTypeError(
            f"model: metrics need (N, classes) logits (the output, its .logits, or its "
            f"'logits' or 'out' entry), got {got}"
        )
    return torch.cat(parts)


def probabilities(model: nn.Module, x: Tensor, classes: Tensor, batch_size: int) -> Tensor:
    """Softmax probability of ``classes[i]`` for each row ``x[i]``, float64 on the CPU."""
    probs = logits(model, x, batch_size).double().softmax(dim=1)
    return probs[torch.arange(len(x)), classes.to(probs.device)].cpu()


_F = TypeVar("_F", bound=Callable[..., Any])


def reruns_explainer(function: _F) -> _F:
    """Mark a metric that calls the explainer again (on other inputs or classes):
    :func:`~camkit.metrics.evaluate` hands it the explainer, not the batch's maps."""
    function.reruns_explainer = True  # type: ignore[attr-defined]
    return function


def needs_explainer(metric: object) -> bool:
    """Whether ``metric`` (or the function a :func:`functools.partial` wraps) re-runs the
    explainer."""
    while isinstance(metric, functools.partial):
        metric = metric.func
    return bool(getattr(metric, "reruns_explainer", False))


def explainer_of(maps: Maps, metric: str) -> Maps:
    """``maps`` if it can be re-run; a clear error for a tensor of maps, which a metric that
    re-runs the explainer would silently reuse."""
    if isinstance(maps, Tensor):
        raise CamkitTypeError(
            f"maps: {metric} calls the explainer again, on other inputs or classes; give the "
            f"explainer (or a function maps(x, classes)), not a tensor of maps"
        )
    return maps


def maps_for(maps: Maps, x: Tensor, classes: Tensor) -> Tensor:
    """Maps ``(N, *x spatial)`` in [0, 1], computed by an explainer or a function, or given;
    checked for their shape and their range (maps at a layer's resolution are upsampled)."""
    return maps_and_logits(maps, x, classes, None)[0]


def maps_and_logits(
    maps: Maps, x: Tensor, classes: Tensor, model: nn.Module | None
) -> tuple[Tensor, Tensor | None]:
    """:func:`maps_for`'s maps, and ``model``'s ``(N, classes)`` logits on ``x`` where the
    explainer's own forward pass gave them (a camkit explainer of this very ``model`` that
    declares :attr:`~camkit.Explainer.reports_output`): a pass the caller need not run
    again. ``None`` for the logits otherwise."""
    found = None
    if isinstance(maps, Tensor):
        result = maps.detach()
    elif isinstance(maps, Explainer):
        if maps.input_channels:
            raise CamkitValueError(
                f"maps: {type(maps).__name__}'s maps have the input's channels, (N, C, "
                f"*spatial); metrics need one value per position: reduce them first (such as "
                f"the largest absolute value over channels, scaled to [0, 1])"
            )
        explained = maps.explain(x, classes)
        result = explained.maps
        if model is not None and maps.model is model and maps.reports_output:
            output = logits_in(explained.output)
            if isinstance(output, Tensor) and output.dim() == 2 and len(output) == len(x):
                found = output
    elif callable(maps):
        result = maps(x, classes)
    else:
        raise CamkitTypeError(
            f"maps: got {type(maps).__name__}; allowed: a tensor of maps (N, *spatial), a "
            f"camkit explainer, or a function maps(x, classes)"
        )
    if result.dim() != x.dim() - 1 or result.shape[0] != len(x):
        raise CamkitValueError(
            f"maps: got shape {tuple(result.shape)}; expected one map per sample, "
            f"({len(x)}, *spatial) with the input's {x.dim() - 2} spatial dims"
        )
    low, high = (float(v) for v in torch.stack([result.amin(), result.amax()]).cpu())
    if not 0.0 <= low <= high <= 1.0:  # NaN fails too
        raise CamkitValueError(
            f"maps: values must lie in [0, 1], got {low:.4g} to {high:.4g}; scale each map "
            f"to [0, 1] (camkit's explainers do, with normalize=True)"
        )
    if tuple(result.shape[1:]) != tuple(x.shape[2:]):
        result = map_ops.upsample(result.float(), tuple(x.shape[2:]))
    return result.to(x.device, torch.float32), found


def check_batch(x: object, batch_size: int | None) -> tuple[int, int]:
    """Validate the input batch and the batch size; return N and the rows per forward pass
    (``batch_size``, or for None as many as :func:`rows_per_pass` picks). An input holding
    NaN or infinite values is refused: every score of it would be NaN or meaningless."""
    n = check_input(x)
    check_finite_input(x)  # type: ignore[arg-type]
    optional_batch_size(batch_size)
    return n, rows_per_pass(batch_size, x.shape[1:])  # type: ignore[attr-defined]


def check_finite_maps(maps: Tensor) -> None:
    """Refuse maps holding NaN or infinite values: a score of them would be NaN, or a number
    that means nothing (a ranking with NaN in it)."""
    bad = int((~torch.isfinite(maps.detach())).sum())
    if bad:
        raise CamkitValueError(
            f"maps: contain {bad} NaN or infinite value(s); allowed: finite maps"
        )

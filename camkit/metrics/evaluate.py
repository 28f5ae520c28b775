"""Dataset-level evaluation: every metric over a DataLoader, maps computed once per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from camkit._engine.batch_items import check_keys, split_batch
from camkit._engine.distributed import Batches, Rank, gather, process_group, rank_share
from camkit._engine.option_checks import device_or_none
from camkit.errors import CamkitValueError
from camkit.metrics._common import (
    Maps,
    MetricResult,
    classes_of,
    maps_for,
    needs_explainer,
    summarize,
)

__all__ = ["evaluate"]

Metric = Callable[..., MetricResult]


def evaluate(
    model: nn.Module,
    explainer: Maps,
    loader: Iterable[Any],
    metrics: Mapping[str, Metric],
    *,
    target: str = "predicted",
    device: torch.device | str | None = None,
    progress: bool = True,
    input_key: str | None = None,
    label_key: str | None = None,
) -> dict[str, MetricResult]:
    """Score an explainer with several metrics over a dataset.

    For each batch of ``loader`` (``x``, ``(x, labels, ...)`` or a dict): the classes to explain
    (the model's prediction, or the label), the maps (once), then every metric
    as ``metric(model, x, maps, classes)``. Per-sample values are concatenated
    and summarized over the whole dataset; a metric of whole batches
    (``unit="batch"``, Sensitivity-n) gives one row per batch, and its summary
    is the mean of every row.

    Args:
        model: The classifier; left unchanged.
        explainer: A camkit explainer, or a function ``maps(x, classes)``; its maps
            are checked (one per sample, in [0, 1]) once per batch.
        loader: Yields ``x``, tuples whose first two items are ``x`` and labels, or
            dicts of columns (see ``input_key``); under torchrun, a
            :class:`~torch.utils.data.DataLoader` with a ``batch_size``.
        metrics: Name to metric function, e.g.
            ``{"deletion": camkit.metrics.deletion}``; use
            :func:`functools.partial` to set a metric's options.
        target: ``"predicted"`` or ``"label"``.
        device: Where to move each batch; by default where it is.
        progress: Show a progress bar over the batches.
        input_key: For dict batches, the input's column; by default
            ``"pixel_values"``, ``"image"`` or ``"images"``, whichever the batches have.
        label_key: For dict batches and ``target="label"``, the labels' column; by
            default ``"labels"`` or ``"label"``.

    Returns:
        One :class:`MetricResult` per metric, over the whole dataset.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> from camkit.metrics import average_drop
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> data = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))] * 2
        >>> results = evaluate(model, GradCAM(model, "1"), data, {"drop": average_drop},
        ...                    progress=False)
        >>> results["drop"].values.shape
        torch.Size([8])
    """
    if target not in ("predicted", "label"):
        raise CamkitValueError(f"target: got {target!r}; allowed: 'predicted', 'label'")
    if not metrics:
        raise CamkitValueError("metrics: give at least one metric")
    device_or_none(device)
    check_keys(input_key, label_key)
    keys = (input_key, label_key)
    with process_group() as team:
        batches, numbers = loader, None
        if team.size > 1:
            split = Batches.of(loader)
            numbers = rank_share(range(split.count), team)
            batches = split.loader_for(numbers)
        collected = _collect(model, explainer, batches, metrics, target, device, keys, progress,
                             team)  # fmt: skip
        if numbers is not None:
            collected = _in_order(team, numbers, collected)
    return {name: _concatenate(name, parts) for name, parts in collected.items()}


def _collect(
    model: nn.Module,
    explainer: Maps,
    loader: Iterable[Any],
    metrics: Mapping[str, Metric],
    target: str,
    device: torch.device | str | None,
    keys: tuple[str | None, str | None],
    progress: bool,
    team: Rank,
) -> dict[str, list[MetricResult]]:
    """Each metric's result per batch of ``loader``, in order."""
    collected: dict[str, list[MetricResult]] = {name: [] for name in metrics}
    for batch in tqdm(
        loader,
        desc="evaluating",
        unit="batch",
        disable=not (progress and team.main),
        mininterval=0.5,
    ):
        x, labels = split_batch(batch, *keys, labels=target == "label")
        if device is not None:
            x = x.to(device)
        if target == "label":
            classes = torch.as_tensor(labels).cpu()
        else:
            classes = classes_of(model, x, None, len(x))
        maps = maps_for(explainer, x, classes)
        for name, metric in metrics.items():
            given = explainer if needs_explainer(metric) else maps
            collected[name].append(metric(model, x, given, classes))
    return collected


def _in_order(
    team: Rank, numbers: list[int], collected: dict[str, list[MetricResult]]
) -> dict[str, list[MetricResult]]:
    """Every rank's per-batch results, gathered and put back in batch order."""
    on_host = {name: [_to_cpu(r) for r in parts] for name, parts in collected.items()}
    everything = gather(team, (numbers, on_host))
    ordered: dict[str, list[MetricResult]] = {name: [] for name in collected}
    batches = sorted(
        (number, rank, position)
        for rank, (ranks_numbers, _) in enumerate(everything)
        for position, number in enumerate(ranks_numbers)
    )
    for _, rank, position in batches:
        for name in ordered:
            ordered[name].append(everything[rank][1][name][position])
    return ordered


def _to_cpu(result: MetricResult) -> MetricResult:
    def host(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.cpu()

    values = result.values.cpu()
    return MetricResult(
        result.name,
        values,
        result.summary,
        host(result.curves),
        host(result.fractions),
        result.unit,
    )


def _concatenate(name: str, parts: list[MetricResult]) -> MetricResult:
    if not parts:
        raise CamkitValueError("loader: yielded no batches")
    if parts[0].unit == "batch":  # one row per batch, the summary the mean of them all
        rows = torch.stack([p.values for p in parts])
        summary = float(rows.double().nanmean())
        return MetricResult(name, rows, summary, fractions=parts[0].fractions, unit="batch")
    values = torch.cat([p.values for p in parts])
    curves = None
    if all(p.curves is not None for p in parts):
        curves = torch.cat([p.curves for p in parts if p.curves is not None])
    return summarize(name, values, curves=curves, fractions=parts[0].fractions)

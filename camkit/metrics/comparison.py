"""Which method, at which layer, to trust: candidates scored side by side, with confidence
intervals, ranks that say when two candidates cannot be told apart, and a random baseline.

:func:`compare` runs :func:`~camkit.metrics.evaluate` for every candidate (an
explainer, or a function ``maps(x, classes)``) on the same data, always adds
a baseline of uniformly random maps, and returns a :class:`Comparison`: per
candidate and metric the mean with a bootstrap confidence interval (samples
drawn with replacement, the same draws for every candidate, so that the
comparison is paired), the candidates ranked per metric, a table (CSV, JSON)
and a figure. A metric of whole batches (Sensitivity-n, a correlation over a
batch's samples) is bootstrapped over the batches instead.

Every candidate is scored on the same samples: a sample where some candidate's
value is undefined (``NaN``: a correlation with a constant map, a relative
change of an all-zero map) is left out for all of them, on that metric. Left
out for that candidate alone, it would compare one candidate's easy samples
with another's whole set: a method whose maps go blank on hard images would
look better for it. The table says, per metric, on how many samples the
candidates were compared and, per candidate, on how many its value is defined.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camkit._engine.batch_items import check_keys
from camkit._engine.option_checks import device_or_none, finite_number, seed_value
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.metrics._common import Maps
from camkit.metrics.evaluate import Metric, evaluate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["BASELINE", "Cell", "Comparison", "RandomMaps", "compare"]

BASELINE = "random maps"
"""The name of the baseline candidate :func:`compare` adds: uniformly random maps."""

_HIGHER = {
    "increase_in_confidence": True,
    "insertion": True,
    "pointing_game": True,
    "energy_pointing_game": True,
    "auc": True,
    "relevance_rank_accuracy": True,
    "top_k_intersection": True,
    "faithfulness_estimate": True,
    "monotonicity": True,
    "sparseness": True,
    "average_drop": False,
    "deletion": False,
    "max_sensitivity": False,
    "avg_sensitivity": False,
    "complexity": False,
    "effective_complexity": False,
    "random_logit": False,
    "faithfulness_correlation": True,
    "monotonicity_correlation": True,
    "selectivity": False,
    "irof": True,
    "infidelity": False,
    "non_sensitivity": False,
    "sufficiency": True,
    "consistency": True,
    "local_lipschitz_estimate": False,
    "continuity": False,
    "relative_input_stability": False,
    "relative_output_stability": False,
    "relative_representation_stability": False,
    "sensitivity_n": True,
}
"""Whether a higher value is better, for camkit's metrics (by function name)."""


class RandomMaps:
    """A baseline explainer: uniformly random maps in [0, 1], each drawn from a generator
    seeded with the CRC-32 of ``seed`` and the sample's own values. A sample's map
    therefore depends on nothing else: not on its batch, the order of the batches, or
    how many processes share them under ``torchrun``, so a comparison gives the same
    numbers whatever the run."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, x: Tensor, classes: Tensor) -> Tensor:
        """Random maps ``(N, *spatial)`` for the batch ``x``."""
        maps = []
        for sample in x.detach().cpu():
            data = sample.contiguous().view(-1).view(torch.uint8).numpy()
            # the CPU generator keeps 32 bits of a seed: the seed starts the checksum
            key = zlib.crc32(data, zlib.crc32(str(self.seed).encode()))
            generator = torch.Generator().manual_seed(key)
            maps.append(torch.rand(x.shape[2:], generator=generator))
        return torch.stack(maps).to(x.device)


@dataclass(frozen=True)
class Cell:
    """One candidate's score on one metric.

    Attributes:
        mean: The mean over the samples compared: those where every candidate's
            value is defined (see :attr:`Comparison.compared`).
        low: The lower end of the bootstrap confidence interval.
        high: The upper end.
        rank: 1 for the best; candidates that cannot be told apart from the one
            ranked above them share its rank.
        values: Every sample's value, ``NaN`` where undefined (a metric with
            several values per sample, such as ROAD's percentages, is averaged per
            sample); per batch for a metric of whole batches (``unit="batch"``,
            Sensitivity-n).
    """

    mean: float
    low: float
    high: float
    rank: int
    values: Tensor


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found.

    Attributes:
        candidates: The candidates' names, the baseline last.
        metrics: The metrics' names.
        higher_is_better: Per metric, whether higher values are better.
        cells: Per ``(candidate, metric)``, the :class:`Cell`.
        confidence: The confidence level of the intervals (0.95 by default).
        resamples: How many bootstrap resamples made them.
        units: Per metric, what its values and their resamples are of:
            ``"sample"``, or ``"batch"`` for a metric of whole batches.
        compared: Per metric, on how many samples (or batches) the candidates were
            compared: those where every candidate's value is defined.
    """

    candidates: list[str]
    metrics: list[str]
    higher_is_better: dict[str, bool]
    cells: dict[tuple[str, str], Cell]
    confidence: float
    resamples: int
    units: dict[str, str] = field(default_factory=dict)
    compared: dict[str, int] = field(default_factory=dict)

    def ranking(self, metric: str) -> list[str]:
        """The candidates from best to worst on ``metric``."""
        return sorted(self.candidates, key=lambda c: (self.cells[c, metric].rank,
                                                      self._signed(c, metric)))  # fmt: skip

    def coverage(self, metric: str) -> tuple[int, int]:
        """On how many samples (or batches) the candidates were compared on ``metric``, and
        how many were scored: fewer compared where some candidate's value is undefined."""
        total = len(self.cells[self.candidates[0], metric].values)
        return self.compared.get(metric, total), total

    def _signed(self, candidate: str, metric: str) -> float:
        mean = self.cells[candidate, metric].mean
        return -mean if self.higher_is_better[metric] else mean

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate and metric: mean, interval, rank, direction, on how many
        samples (or batches, for a metric of whole batches: see ``unit``) the candidate's
        value is defined, and on how many the candidates were compared."""
        return [
            {
                "candidate": candidate,
                "metric": metric,
                "mean": cell.mean,
                "low": cell.low,
                "high": cell.high,
                "rank": cell.rank,
                "better": "higher" if self.higher_is_better[metric] else "lower",
                "samples": int((~cell.values.isnan()).sum()),
                "compared": self.coverage(metric)[0],
                "unit": self.units.get(metric, "sample"),
            }
            for metric in self.metrics
            for candidate in self.ranking(metric)
            for cell in [self.cells[candidate, metric]]
        ]

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`table` as CSV; return the path."""
        rows = self.table()
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return Path(path)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`table`, the confidence level and the resamples as JSON."""
        text = json.dumps(
            {"confidence": self.confidence, "resamples": self.resamples, "rows": self.table()},
            indent=1,
        )
        Path(path).write_text(text)
        return Path(path)

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """A panel per metric: each candidate's mean and interval, best at the top, the
        baseline in grey; saved to ``path`` if given."""
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(
            1, len(self.metrics), figsize=(3.6 * len(self.metrics), 0.45 * len(self.candidates)
                                           + 1.2), squeeze=False,
        )  # fmt: skip
        for axis, metric in zip(axes[0], self.metrics, strict=True):
            order = self.ranking(metric)[::-1]
            for y, candidate in enumerate(order):
                cell = self.cells[candidate, metric]
                color = "0.6" if candidate == BASELINE else "C0"
                axis.errorbar(cell.mean, y, xerr=[[cell.mean - cell.low], [cell.high - cell.mean]],
                              fmt="o", color=color, capsize=3)  # fmt: skip
            axis.set_yticks(range(len(order)))
            axis.set_yticklabels([f"{self.cells[c, metric].rank}. {c}" for c in order])
            arrow = "higher is better" if self.higher_is_better[metric] else "lower is better"
            compared, total = self.coverage(metric)
            if compared < total:  # say that undefined values left samples out
                arrow += f"; {compared} of {total} {self.units.get(metric, 'sample')}s"
            axis.set_title(f"{metric}\n({arrow})", fontsize=10)
            axis.grid(axis="x", alpha=0.3)
        figure.suptitle(f"means with {100 * self.confidence:.0f} % bootstrap intervals",
                        fontsize=10)  # fmt: skip
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
        return figure


def compare(
    model: nn.Module,
    loader: Iterable[Any],
    candidates: Mapping[str, Maps],
    metrics: Mapping[str, Metric],
    *,
    better: Mapping[str, str] | None = None,
    target: str = "predicted",
    baseline: bool = True,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    input_key: str | None = None,
    label_key: str | None = None,
) -> Comparison:
    """Score several candidates (methods, layers) with several metrics on the same data, and
    rank them, saying which cannot be told apart.

    Each candidate runs through :func:`~camkit.metrics.evaluate`. A baseline of
    uniformly random maps (:class:`RandomMaps`) is scored beside them unless
    ``baseline=False``: a candidate that does not beat it on a metric has
    not shown anything on that metric. The confidence intervals are
    percentile intervals of the mean over ``resamples`` bootstrap resamples of
    the samples. Per metric, the candidates are ordered by their means and
    taken in groups: a candidate whose paired bootstrap difference from the
    best of the current group has an interval containing 0 cannot be told apart
    from it and shares its rank; otherwise it starts a new group, ranked by its
    place. (Comparing with the best of the group, not with the one just above,
    keeps a chain of small steps from tying candidates that differ clearly.)

    Args:
        model: The classifier; left unchanged.
        loader: Batches ``x``, ``(x, labels, ...)`` or dicts of columns, in the same
            order on every pass (a DataLoader that does not shuffle).
        candidates: Name to explainer (or function ``maps(x, classes)``).
        metrics: Name to metric, as for :func:`~camkit.metrics.evaluate`.
        better: Per metric name, ``"higher"`` or ``"lower"``; camkit's own metrics
            (also under :func:`functools.partial`) are known.
        target: ``"predicted"`` or ``"label"``.
        baseline: Add the random-map baseline (named :data:`BASELINE`).
        resamples: Bootstrap resamples.
        confidence: The intervals' confidence level.
        seed: Seeds the bootstrap and the baseline's maps.
        device: Where to move each batch.
        progress: Show progress bars.
        input_key: For dict batches, the input's column (as for
            :func:`~camkit.metrics.evaluate`).
        label_key: For dict batches and ``target="label"``, the labels' column.

    Returns:
        The :class:`Comparison`.

    Raises:
        CamkitValueError: For no candidates or metrics, a candidate named like the
            baseline, a metric whose direction is unknown (give ``better``), or
            options out of range.

    Example:
        >>> import torch
        >>> from functools import partial
        >>> from torch import nn
        >>> from camkit import GradCAM, LayerCAM
        >>> from camkit.metrics import deletion
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> data = [(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))]
        >>> result = compare(model, data, {"Grad-CAM": GradCAM(model, "1"),
        ...                                "LayerCAM": LayerCAM(model, "1")},
        ...                  {"deletion": partial(deletion, step=8)}, progress=False,
        ...                  resamples=200)
        >>> result.candidates
        ['Grad-CAM', 'LayerCAM', 'random maps']
    """
    if not candidates:
        raise CamkitValueError("candidates: give at least one explainer")
    if not metrics:
        raise CamkitValueError("metrics: give at least one metric")
    if BASELINE in candidates:
        raise CamkitValueError(f"candidates: {BASELINE!r} is the baseline's name; rename yours")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 10:
        raise CamkitValueError(f"resamples: got {resamples!r}; allowed: an int >= 10")
    if not 0 < finite_number(confidence, "confidence") < 1:
        raise CamkitValueError(f"confidence: got {confidence!r}; allowed: between 0 and 1")
    if better is not None and not isinstance(better, Mapping):
        raise CamkitTypeError(
            f"better: got {type(better).__name__}; allowed: a dict of metric names to 'higher' "
            f"or 'lower', or None"
        )
    seed_value(seed)
    device_or_none(device)
    check_keys(input_key, label_key)
    directions = {name: _direction(name, metric, better or {}) for name, metric in metrics.items()}
    scored: dict[str, Maps] = dict(candidates)
    if baseline:
        scored[BASELINE] = RandomMaps(seed)
    values: dict[tuple[str, str], Tensor] = {}
    units: dict[str, str] = {}
    for name, explainer in scored.items():
        results = evaluate(model, explainer, loader, metrics, target=target, device=device,
                           progress=progress, input_key=input_key, label_key=label_key)  # fmt: skip
        for metric, result in results.items():
            per_unit = result.values.double()
            if per_unit.dim() > 1:
                per_unit = per_unit.flatten(1).nanmean(dim=1)
            values[name, metric] = per_unit
            units[metric] = result.unit
    names = list(scored)
    _unit_counts(names, metrics, values, units)
    kept = {  # the samples every candidate's value is defined on
        metric: torch.stack([~values[name, metric].isnan() for name in names]).all(dim=0)
        for metric in metrics
    }
    compared = {metric: int(kept[metric].sum()) for metric in metrics}
    generator = torch.Generator().manual_seed(seed)
    draws_of: dict[int, Tensor] = {}  # the same draws for every metric with as many units
    for count in compared.values():
        if count not in draws_of:  # none compared: no draws, and NaN means and intervals
            draws_of[count] = torch.randint(0, max(count, 1), (resamples, count),
                                            generator=generator)  # fmt: skip
    tail = (1 - confidence) / 2
    cells: dict[tuple[str, str], Cell] = {}
    for metric in metrics:
        draws = draws_of[compared[metric]]
        sign = -1.0 if directions[metric] else 1.0  # sort ascending: best first
        shared = {name: values[name, metric][kept[metric]] for name in names}
        boot = {name: shared[name][draws].mean(dim=1) for name in names}
        means = {name: float(shared[name].mean()) for name in names}
        order = sorted(names, key=lambda n: (_key(sign * means[n]), names.index(n)))
        ranks: dict[str, int] = {}
        leader = order[0]  # the best of the current group of candidates that share a rank
        for position, name in enumerate(order):
            if position == 0:
                ranks[name] = 1
                continue
            difference = (boot[name] - boot[leader]).nan_to_num(0.0)
            low, high = torch.quantile(
                difference, torch.tensor([tail, 1 - tail], dtype=torch.float64)
            )
            if bool(low <= 0 <= high):  # cannot be told apart from the group's best
                ranks[name] = ranks[leader]
            else:
                ranks[name], leader = position + 1, name
        for name in names:
            interval = boot[name][~boot[name].isnan()]
            if len(interval):
                low, high = (float(v) for v in torch.quantile(
                    interval, torch.tensor([tail, 1 - tail], dtype=torch.float64)))  # fmt: skip
            else:
                low = high = math.nan
            cells[name, metric] = Cell(means[name], low, high, ranks[name], values[name, metric])
    return Comparison(names, list(metrics), directions, cells, confidence, resamples, units,
                      compared)  # fmt: skip


def _unit_counts(
    names: list[str],
    metrics: Mapping[str, Metric],
    values: Mapping[tuple[str, str], Tensor],
    units: Mapping[str, str],
) -> dict[str, int]:
    """How many samples (or batches) each metric scored, the same for every candidate."""
    counts = {}
    for metric in metrics:
        lengths = {len(values[name, metric]) for name in names}
        if len(lengths) != 1:
            raise CamkitValueError(
                "loader: the candidates were scored on different numbers of samples; give a "
                "loader that yields the same batches on every pass"
            )
        counts[metric] = lengths.pop()
        if units[metric] == "batch" and counts[metric] < 2:
            raise CamkitValueError(
                f"metrics: {metric!r} scores whole batches (one value per batch), and the "
                f"loader gave {counts[metric]}; compare resamples the batches, so give a "
                f"loader with several (smaller batches)"
            )
    return counts


def _key(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _direction(name: str, metric: Metric, better: Mapping[str, str]) -> bool:
    """Whether higher is better for ``metric`` (named ``name``)."""
    if name in better:
        if better[name] not in ("higher", "lower"):
            raise CamkitValueError(
                f"better: got {better[name]!r} for {name!r}; allowed: 'higher', 'lower'"
            )
        return better[name] == "higher"
    function = metric.func if isinstance(metric, functools.partial) else metric
    function_name = getattr(function, "__name__", "")
    keywords = metric.keywords if isinstance(metric, functools.partial) else {}
    if function_name == "road":  # most relevant first: lower is better; least first: higher
        return bool(keywords.get("order", "morf") == "lerf")
    if function_name == "region_perturbation":  # the drop: high most relevant first
        return bool(keywords.get("order_by", "morf") == "morf")
    known = _HIGHER.get(function_name)
    if known is None:
        raise CamkitValueError(
            f"better: camkit does not know whether higher or lower is better for {name!r}; "
            f"give better={{{name!r}: 'higher'}} or 'lower'"
        )
    return known

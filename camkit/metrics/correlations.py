"""Faithfulness as a correlation: does the map's mass over some pixels predict what
removing those pixels does to the model's score?

:func:`faithfulness_correlation` (Bhatt et al., 2020) removes random subsets;
:func:`monotonicity_correlation` (Nguyen and Martínez, 2020) one group at a time,
many times over with random values; :func:`sensitivity_n` (Ancona et al., 2018)
the top ``n`` pixels of every map, and correlates over the samples.

All three follow Quantus 0.6 by default (its defaults, its baselines, logits or
probabilities as it scores them). A pixel is a feature with all its channels;
Quantus, which broadcasts the map to the input's shape, counts each channel
value as a feature (the two agree for one-channel inputs). Where camkit
differs otherwise, the function's text says so, with the option that gives
Quantus's number.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from camkit._engine.option_checks import finite_number, non_negative, seed_value
from camkit.errors import CamkitValueError
from camkit.metrics._common import Maps, MetricResult, check_batch, classes_of, maps_for, summarize
from camkit.metrics._removal import (
    baseline_image,
    baseline_values,
    check_count,
    check_ties,
    cumulative_scores,
    groups,
    order,
    pearson,
    removed_scores,
    scores,
    steps_of,
)
from camkit.metrics.sanity import spearman
from camkit.targets import Target

__all__ = ["faithfulness_correlation", "monotonicity_correlation", "sensitivity_n"]


def faithfulness_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    runs: int = 100,
    subset_size: int = 224,
    baseline: str | float = "black",
    softmax: bool = False,
    subsets: Tensor | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Faithfulness Correlation: the correlation of a random subset's map mass with the
    score's drop when that subset is removed.

    Bhatt, Weller and Moura, *Evaluating and Aggregating Feature-based Model
    Explanations*, IJCAI 2020, https://arxiv.org/abs/2005.00631. ``runs`` times,
    a random set :math:`S` of ``subset_size`` pixels is set to the baseline, and
    the drop :math:`f(x) - f(x_{S \leftarrow b})` of the explained class's score
    is paired with :math:`\sum_{i \in S} e_i`; the metric is the Pearson
    correlation of the pairs. Near 1 when the map's mass predicts what removing
    pixels costs; near 0 for a map unrelated to the model. A sample whose
    masses or drops are constant is ``NaN`` and left out of the mean. As in
    Quantus 0.6 (``quantus.FaithfulnessCorrelation``): 100 runs, 224 pixels, the
    "black" baseline, the logit.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        runs: How many random subsets per sample.
        subset_size: Pixels per subset (at most the number of pixels).
        baseline: ``"black"`` (each input's smallest value), ``"mean"`` or a number.
        softmax: Score softmax probabilities instead of logits.
        subsets: Your own subsets, ``(runs, N, subset_size)`` pixel indices into the
            flattened spatial grid (such as another library's draws); by default
            drawn from a generator seeded with ``seed``.
        seed: The seed of the default subsets (the same subsets on every call).
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The correlation per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> result = faithfulness_correlation(model, torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4),
        ...                                   0, runs=10, subset_size=4)
        >>> result.values.shape
        torch.Size([2])
    """
    n, batch_size = check_batch(x, batch_size)
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)
    pixels = weights.shape[1]
    if subsets is None:
        check_count("runs", runs)
        if isinstance(subset_size, bool) or not isinstance(subset_size, int) or not (
            1 <= subset_size <= pixels
        ):  # fmt: skip
            raise CamkitValueError(
                f"subset_size: got {subset_size!r}; allowed: an int from 1 to the {pixels} pixels"
            )
        generator = torch.Generator().manual_seed(seed_value(seed))
        # one draw for every run (the same numbers as a draw per run), one batched topk;
        # a subset is a set, so its order is left as the selection gives it (30 % faster)
        draws = torch.rand(runs, n, pixels, generator=generator)
        subsets = draws.topk(subset_size, dim=2, sorted=False).indices
    elif (
        not isinstance(subsets, Tensor)
        or subsets.dim() != 3
        or subsets.shape[1] != n
        or subsets.dtype != torch.int64
        or not bool(((subsets >= 0) & (subsets < pixels)).all())
    ):
        raise CamkitValueError(
            f"subsets: got {_described(subsets)}; allowed: int64 "
            f"pixel indices from 0 to {pixels - 1}, (runs, {n}, subset_size)"
        )
    fill = baseline_values(x, baseline)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    removed = removed_scores(model, x, classes, [(s, fill) for s in subsets], softmax, batch_size)
    drops = (intact[None] - removed).T  # (N, runs)
    masses = torch.stack([weights.gather(1, s.to(weights.device)).sum(1) for s in subsets], 1)
    return summarize("faithfulness_correlation", pearson(masses.cpu(), drops))


def monotonicity_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    features_in_step: int = 1,
    samples: int = 100,
    baseline: str | float = "uniform",
    eps: float = 1e-5,
    softmax: bool = True,
    ties: str = "first",
    fills: Tensor | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Monotonicity Correlation: the rank correlation of each group's map mass with the
    variance its removal causes.

    Nguyen and Martínez, *On Quantitative Aspects of Model Interpretability*,
    2020, https://arxiv.org/abs/2007.07584. The pixels are taken in the map's
    order, lowest first, in groups of ``features_in_step``; each group alone
    is replaced ``samples`` times by a random value (one per sample and draw,
    uniform on [0, 1], as Quantus 0.6's ``"uniform"`` baseline), and the mean
    squared change of the score, divided by the squared score (when
    :math:`|f(x)| \geq` ``eps``), is paired with the group's map mass. The
    metric is the Spearman correlation of the pairs: near 1 when the pixels the
    map ranks higher matter more. As in ``quantus.MonotonicityCorrelation``;
    it costs ``samples * ceil(P / features_in_step)`` passes of the batch, so
    set ``features_in_step`` to a row or more on images.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        features_in_step: Pixels per group.
        samples: Random replacements per group.
        baseline: ``"uniform"`` (a random value in [0, 1] per sample and draw),
            ``"black"``, ``"mean"`` or a number (then every draw is the same).
        eps: Scores smaller in magnitude are not divided by.
        softmax: Score softmax probabilities (Quantus's default here) or logits.
        ties: How tied pixels are ordered, ``"first"`` or ``"quantus"`` (see
            :data:`~camkit.metrics._removal.ORDERS`).
        fills: Your own replacement values, ``(steps, samples, N)`` (such as
            another library's draws), in place of the baseline.
        seed: The seed of the ``"uniform"`` draws.
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The correlation per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> result = monotonicity_correlation(model, torch.rand(2, 1, 4, 4), torch.rand(2, 4, 4),
        ...                                   0, features_in_step=4, samples=3)
        >>> result.values.shape
        torch.Size([2])
    """
    n, batch_size = check_batch(x, batch_size)
    check_count("features_in_step", features_in_step)
    check_count("samples", samples)
    check_ties(ties)
    non_negative(eps, "eps")
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)
    steps = math.ceil(weights.shape[1] / features_in_step)
    channels = x.shape[1]
    if fills is None:
        if baseline == "uniform":
            generator = torch.Generator().manual_seed(seed_value(seed))
            fills = torch.rand(steps, samples, n, generator=generator, dtype=torch.float64)
        else:
            fills = baseline_values(x, baseline)[:, 0].cpu().double().expand(steps, samples, n)
    elif not isinstance(fills, Tensor) or tuple(fills.shape) != (steps, samples, n):
        raise CamkitValueError(
            f"fills: got {_described(fills)}; allowed: (steps, samples, N) = "
            f"({steps}, {samples}, {n})"
        )
    lowest_first = order(-weights, ties)
    chunks = groups(lowest_first, features_in_step)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    removals = [
        (chunks[s], fills[s, d][:, None].expand(n, channels))
        for s in range(steps)
        for d in range(samples)
    ]
    removed = removed_scores(model, x, classes, removals, softmax, batch_size)
    removed = removed.view(steps, samples, n)
    inverse = torch.where(intact.abs() >= eps, 1 / intact.abs(), 1.0) ** 2
    variances = ((removed - intact) ** 2).mean(dim=1) * inverse  # (steps, N)
    masses = torch.stack([weights.gather(1, g.to(weights.device)).sum(1) for g in chunks], 1)
    return summarize("monotonicity_correlation", spearman(masses.cpu(), variances.T))


def sensitivity_n(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    features_in_step: int = 1,
    largest: float = 0.8,
    baseline: str | float = "black",
    softmax: bool = True,
    mass: str = "removed",
    ties: str = "first",
    batch_size: int | None = None,
) -> MetricResult:
    r"""Sensitivity-n: for each ``n``, the correlation over the samples of the mass of the
    ``n`` top pixels with the score's drop when they are removed.

    Ancona et al., *Towards Better Understanding of Gradient-based Attribution
    Methods for Deep Neural Networks*, ICLR 2018,
    https://arxiv.org/abs/1711.06104. For :math:`n = k \cdot` ``features_in_step``
    up to ``largest`` of the pixels, each map's top :math:`n` pixels
    :math:`S_n` are set to the baseline, and the drop :math:`f(x) - f(x_{S_n
    \leftarrow b})` is paired with :math:`\sum_{i \in S_n} e_i`; the metric at
    ``n`` is the Pearson correlation of the pairs over the batch (so it needs
    several samples), the summary their mean. As in Quantus 0.6
    (``quantus.SensitivityN``), which takes the top pixels in place of the
    paper's random subsets.

    camkit differs from Quantus 0.6 in one place, deliberately: Quantus pairs
    the drop from removing all of :math:`S_n` with the mass of the last group
    alone (``att_sums.append(a_batch[np.arange(batch_size)[:, None],
    a_ix].sum(axis=-1))``, with ``a_ix`` the step's indices); the paper pairs it
    with the mass of :math:`S_n`, which camkit does. ``mass="step"`` gives
    Quantus's number.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs, ``N >= 2``.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        features_in_step: Pixels added to :math:`S_n` per step.
        largest: The largest ``n``, as a share of the pixels (Quantus's
            ``n_max_percentage``).
        baseline: ``"black"`` (each input's smallest value), ``"mean"`` or a number.
        softmax: Score softmax probabilities (Quantus's default here) or logits.
        mass: ``"removed"`` (the mass of :math:`S_n`, the paper's) or ``"step"``
            (of the step's group, Quantus 0.6's).
        ties: As in :func:`faithfulness_estimate`.
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        ``values``: the correlation at each ``n`` (one per step, not per sample);
        ``fractions``: each ``n`` as a share of the pixels; ``summary``: their mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> result = sensitivity_n(model, torch.rand(8, 1, 4, 4), torch.rand(8, 4, 4), 0,
        ...                        features_in_step=4)
        >>> result.values.shape  # n = 4, 8, 12: up to 80% of 16 pixels
        torch.Size([3])
    """
    n, batch_size = check_batch(x, batch_size)
    if n < 2:
        raise CamkitValueError(
            f"x: got {n} sample; Sensitivity-n correlates over the samples, give 2 or more"
        )
    check_count("features_in_step", features_in_step)
    check_ties(ties)
    if not 0 < finite_number(largest, "largest") <= 1:
        raise CamkitValueError(f"largest: got {largest!r}; allowed: a share in (0, 1]")
    if mass not in ("removed", "step"):
        raise CamkitValueError(f"mass: got {mass!r}; allowed: 'removed', 'step'")
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)
    pixels = weights.shape[1]
    steps = int(largest * pixels // features_in_step)  # Quantus's count
    if steps < 1:
        raise CamkitValueError(
            f"largest: {largest} of {pixels} pixels is less than one step of "
            f"{features_in_step}; raise it or lower features_in_step"
        )
    ranked = order(weights, ties)
    fill = baseline_values(x, baseline)
    image = baseline_image(fill, x)
    step_of = steps_of(ranked, features_in_step)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    curve = cumulative_scores(model, x, image, step_of, steps, classes, softmax, batch_size)
    drops = intact[:, None] - curve  # (N, steps)
    # each pixel's mass into its step's bin (pixels never removed into one more, dropped)
    bins = step_of.clamp(max=steps).to(weights.device)
    per_step = torch.zeros(n, steps + 1, dtype=torch.float64, device=weights.device)
    per_step = per_step.scatter_add_(1, bins, weights)[:, :steps].cpu()
    masses = per_step.cumsum(dim=1) if mass == "removed" else per_step
    counts = torch.arange(1, steps + 1, dtype=torch.float64) * features_in_step
    correlations = pearson(masses.T, drops.T)
    return summarize("sensitivity_n", correlations, fractions=counts / pixels, unit="batch")


def _described(value: object) -> str:
    """A tensor's dtype and shape, or another value's type, for an error message."""
    if isinstance(value, Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return type(value).__name__

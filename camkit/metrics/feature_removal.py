"""Faithfulness by removing or restoring features one group at a time, in the map's order.

:func:`faithfulness_estimate` (Alvarez-Melis and Jaakkola, 2018) removes the
pixels in groups, in the order of the map (highest first), each group from the
intact input, and correlates the map's mass in each group with the drop of the
model's score. It follows Quantus 0.6 (``quantus.FaithfulnessEstimate``): the
model's logit by default (``softmax=False``), the "black" baseline (each
input's smallest value), groups of ``features_in_step`` pixels.

:func:`monotonicity` (Arya et al., 2019) restores the input's pixels into the
baseline in the map's order, lowest first, and asks whether the model's
probability never falls. :func:`non_sensitivity` (Nguyen and Martínez, 2020)
removes each pixel alone and counts where the model's reaction and the map
disagree about whether it matters.

Pixels that tie in the map (an upsampled CAM is zero over much of the image)
have no order of their own. camkit takes them in row-major order (``ties="first"``:
the result does not depend on a sorting algorithm); ``ties="quantus"``
takes them in the order of ``np.argsort(-a)``, an unstable sort, as Quantus
does. A pixel is a feature with all its channels; Quantus, which broadcasts
the map to the input's shape, counts each channel value as a feature (the two
agree for one-channel inputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from camkit._engine.option_checks import positive_number
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
from camkit.targets import Target

__all__ = ["faithfulness_estimate", "monotonicity", "non_sensitivity"]


def faithfulness_estimate(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    features_in_step: int = 1,
    baseline: str | float = "black",
    softmax: bool = False,
    ties: str = "first",
    batch_size: int | None = None,
) -> MetricResult:
    r"""Faithfulness Estimate: the correlation of each group's map mass with the score's
    drop when that group alone is removed.

    Alvarez-Melis and Jaakkola, *Towards Robust Interpretability with
    Self-Explaining Neural Networks*, NeurIPS 2018,
    https://arxiv.org/abs/1806.07538. The pixels are taken in the map's
    order, highest first, in groups of ``features_in_step``; group :math:`g` is
    set to the baseline in the intact input, and the drop
    :math:`f(x) - f(x_{\setminus g})` of the explained class's score is
    paired with the map's sum over :math:`g`. The metric is the Pearson
    correlation of the pairs: near 1 when the map's mass predicts what
    removing a region costs. A sample whose map or drops are constant is
    ``NaN`` and left out of the mean.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        features_in_step: Pixels per group (``ceil(P / features_in_step)`` forward
            passes per sample).
        baseline: ``"black"`` (each input's smallest value, Quantus's default),
            ``"mean"`` (each input's mean) or a number.
        softmax: Score softmax probabilities instead of logits.
        ties: How tied pixels are ordered: ``"first"`` or ``"quantus"`` (see
            :data:`~camkit.metrics._removal.ORDERS`).
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The correlation per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> maps = torch.rand(2, 4, 4)
        >>> faithfulness_estimate(model, x, maps, 0, features_in_step=4).values.shape
        torch.Size([2])
    """
    _, batch_size = check_batch(x, batch_size)
    check_count("features_in_step", features_in_step)
    check_ties(ties)
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)  # (N, P)
    ranked = order(weights, ties)
    fill = baseline_values(x, baseline)  # (N, C) per-sample values
    chunks = groups(ranked, features_in_step)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    removed = removed_scores(model, x, classes, [(g, fill) for g in chunks], softmax, batch_size)
    drops = (intact[None] - removed).T  # (N, steps)
    masses = torch.stack([weights.gather(1, g.to(weights.device)).sum(1) for g in chunks], dim=1)
    return summarize("faithfulness_estimate", pearson(masses.cpu(), drops))


def monotonicity(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    features_in_step: int = 1,
    baseline: str | float = "black",
    softmax: bool = True,
    ties: str = "first",
    batch_size: int | None = None,
) -> MetricResult:
    r"""Monotonicity (Arya et al.): does the score never fall as pixels return, least
    important first?

    Arya et al., *One Explanation Does Not Fit All*, 2019,
    https://arxiv.org/abs/1909.03012. Starting from the baseline image, the
    input's pixels are put back in groups of ``features_in_step``, in the map's
    order, lowest first; the sample scores 1 when the explained class's score
    never decreases along the way (from the first group put back, as Quantus
    counts it), else 0. The summary is the share of samples that score 1.

    Quantus 0.6's ``quantus.Monotonicity`` differs, and not by choice: its loop
    puts the *baseline* back at the chosen pixels (``x_baseline =
    self.perturb_func(arr=x_baseline, indices=a_ix)``, which replaces them by
    the baseline they already hold), so its image never changes and every map,
    a random one included, scores True. camkit puts the input's values back, as
    the paper defines it (tested against Quantus's loop with that line fixed).

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        features_in_step: Pixels per group.
        baseline: As in :func:`faithfulness_estimate`.
        softmax: Score softmax probabilities (Quantus's default here) or logits.
        ties: As in :func:`faithfulness_estimate` (here the lowest come first).
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        1.0 (monotonic) or 0.0 per sample, and the share of 1.0.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]))
        ...     _ = model[1].bias.zero_()
        >>> x = torch.tensor([[[[0.5, 0.6], [0.7, 0.8]]]])
        >>> monotonicity(model, x, torch.rand(1, 2, 2), 0).values.tolist()  # any order rises
        [1.0]
    """
    _, batch_size = check_batch(x, batch_size)
    check_count("features_in_step", features_in_step)
    check_ties(ties)
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)
    lowest_first = order(-weights, ties)
    fill = baseline_values(x, baseline)
    steps = math.ceil(weights.shape[1] / features_in_step)
    curve = cumulative_scores(
        model, baseline_image(fill, x), x, steps_of(lowest_first, features_in_step), steps, classes,
        softmax, batch_size,
    )  # fmt: skip
    rising = (curve.diff(dim=1) >= 0).all(dim=1)
    return summarize("monotonicity", rising.double())


def non_sensitivity(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    eps: float = 1e-5,
    features_in_step: int = 1,
    baseline: str | float = "black",
    softmax: bool = True,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Non-Sensitivity: how many pixels break "zero in the map exactly where the model does
    not react"; lower is better, 0 is the axiom.

    Nguyen and Martínez, *On Quantitative Aspects of Model Interpretability*,
    2020, https://arxiv.org/abs/2007.07584. Each group of ``features_in_step``
    pixels is set to the baseline alone; the model is insensitive to it when
    the explained class's score moves by less than ``eps``, and the map calls
    it irrelevant when its largest map value is below ``eps``. The value counts
    the groups where the two disagree: pixels the map ignores that the model
    reacts to, and pixels the map marks that the model ignores. As Quantus
    0.6's ``quantus.NonSensitivity`` with one pixel per group (tested equal;
    Quantus compares a map of one value per feature with scores of one per
    group, so it needs ``features_in_step=1``). An upsampled CAM is rarely
    exactly 0, so few of its pixels count as irrelevant; the value then counts
    mostly the pixels the model ignores.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        eps: The threshold of both "no reaction" and "irrelevant".
        features_in_step: Pixels per group.
        baseline: ``"black"`` (each input's smallest value), ``"mean"`` or a number.
        softmax: Score softmax probabilities (Quantus's default here) or logits.
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The count per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
        >>> maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # only pixel 0 matters: no breach
        >>> x = torch.rand(1, 1, 2, 2) + 1
        >>> non_sensitivity(model, x, maps, 0, baseline=0.0).values.tolist()
        [0.0]
    """
    n, batch_size = check_batch(x, batch_size)
    check_count("features_in_step", features_in_step)
    positive_number(eps, "eps")
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1).cpu()
    pixels = weights.shape[1]
    fill = baseline_values(x, baseline)
    positions = torch.arange(pixels).expand(n, -1)
    chunks = groups(positions, features_in_step)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    removed = removed_scores(model, x, classes, [(g, fill) for g in chunks], softmax, batch_size)
    insensitive = ((removed - intact[None]).abs() < eps).T  # (N, steps)
    irrelevant = torch.stack([weights.gather(1, g).amax(dim=1) < eps for g in chunks], dim=1)
    return summarize("non_sensitivity", (insensitive ^ irrelevant).sum(dim=1).double())

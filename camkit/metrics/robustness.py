"""Robustness: how much a map changes when the input changes a little.

An explanation that changes a lot under a perturbation too small to change the
model's output says more about the explainer than about the model (Yeh et al.,
2019). These metrics re-run the explainer (through the explainer contract:
any camkit :class:`~camkit.Explainer`, or a function ``maps(x, classes)``) on
noisy copies of the input, explaining the same classes, and compare the maps.
They follow Quantus 0.6 (``quantus.MaxSensitivity``, ``quantus.AvgSensitivity``):
uniform noise in ``[-radius, radius]`` on every input value, the Frobenius norm
of the difference of the maps over the norm of the map, 200 noisy copies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from camkit.errors import CamkitValueError
from camkit.metrics._common import (
    Maps,
    MetricResult,
    check_batch,
    classes_of,
    explainer_of,
    logits,
    maps_and_logits,
    reruns_explainer,
    summarize,
)
from camkit.targets import Target

__all__ = ["Noise", "avg_sensitivity", "max_sensitivity"]

Noise = Callable[[Tensor, int], Tensor]
"""``noise(x, step)``: the ``step``-th noisy copy of the batch ``x`` (the same shape)."""


@reruns_explainer
def max_sensitivity(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    samples: int = 200,
    radius: float = 0.2,
    noise: Noise | None = None,
    seed: int = 0,
    nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Max-Sensitivity: the largest relative change of the map over noisy copies of the input.

    Yeh et al., *On the (In)fidelity and Sensitivity of Explanations*, NeurIPS
    2019, https://arxiv.org/abs/1901.09392. For each of ``samples`` copies
    :math:`x' = x + \delta`, :math:`\delta \sim U[-r, r]` on every value,
    :math:`\|e(x') - e(x)\|_F / \|e(x)\|_F`, with :math:`e` the maps of the
    same class; the metric is the largest. Lower is more robust.

    Args:
        model: The model (for the predicted classes, and with
            ``nan_when_prediction_changes``).
        x: ``(N, C, *spatial)`` inputs.
        maps: The explainer, or a function ``maps(x, classes)`` returning
            ``(N, *spatial)`` maps in [0, 1] (re-run on every copy).
        target: The classes explained (``None``: each sample's predicted class).
        samples: How many noisy copies.
        radius: The noise's half-width, in the units of ``x``.
        noise: Your own perturbation, ``noise(x, step)``; by default uniform noise
            from a generator seeded with ``seed`` (the same copies on every call).
        seed: The seed of the default noise.
        nan_when_prediction_changes: Leave out the copies whose predicted class
            differs from the input's; a sample with no copy left is ``NaN``. (Quantus's
            ``return_nan_when_prediction_changes`` makes the sample ``NaN`` when any
            copy's prediction changed: ``self.max_func = np.max if
            return_nan_when_prediction_changes else np.nanmax``.)
        batch_size: Rows per forward pass for the predictions; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The largest relative change per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> x = torch.randn(2, 1, 8, 8)
        >>> result = max_sensitivity(model, x, GradCAM(model, "1"), samples=5)
        >>> result.values.shape
        torch.Size([2])
    """
    changes = _relative_changes(
        model, x, maps, target, samples, radius, noise, seed, nan_when_prediction_changes,
        batch_size,
    )  # fmt: skip
    largest = torch.where(changes.isnan(), -torch.inf, changes).amax(dim=1)
    return summarize("max_sensitivity", torch.where(largest.isinf(), torch.nan, largest))


@reruns_explainer
def avg_sensitivity(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    samples: int = 200,
    radius: float = 0.2,
    noise: Noise | None = None,
    seed: int = 0,
    nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Avg-Sensitivity: the mean relative change of the map over noisy copies of the input.

    Yeh et al. (2019), as :func:`max_sensitivity`, with the mean over the copies
    in place of the largest. Lower is more robust.

    Args:
        model: As in :func:`max_sensitivity`.
        x: As in :func:`max_sensitivity`.
        maps: As in :func:`max_sensitivity`.
        target: As in :func:`max_sensitivity`.
        samples: As in :func:`max_sensitivity`.
        radius: As in :func:`max_sensitivity`.
        noise: As in :func:`max_sensitivity`.
        seed: As in :func:`max_sensitivity`.
        nan_when_prediction_changes: As in :func:`max_sensitivity`.
        batch_size: As in :func:`max_sensitivity`.

    Returns:
        The mean relative change per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> result = avg_sensitivity(model, torch.randn(2, 1, 8, 8), GradCAM(model, "1"),
        ...                          samples=5)
        >>> bool((result.values >= 0).all())
        True
    """
    changes = _relative_changes(
        model, x, maps, target, samples, radius, noise, seed, nan_when_prediction_changes,
        batch_size,
    )  # fmt: skip
    return summarize("avg_sensitivity", changes.nanmean(dim=1))


def uniform_noise(low: float, high: float, seed: int) -> Noise:
    """Noise ``U[low, high]`` on every value, from a CPU generator seeded with ``seed``; the
    copies are drawn in order, so call it with steps 0, 1, 2, ..."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def noise(x: Tensor, step: int) -> Tensor:
        delta = torch.rand(x.shape, generator=generator, dtype=x.dtype) * (high - low) + low
        return x + delta.to(x.device)

    return noise


def gaussian_noise(std: float, seed: int) -> Noise:
    """Noise ``N(0, std^2)`` on every value, seeded as :func:`uniform_noise`."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def noise(x: Tensor, step: int) -> Tensor:
        return x + (torch.randn(x.shape, generator=generator, dtype=x.dtype) * std).to(x.device)

    return noise


Objective = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None"], Tensor]
"""``objective(x, noisy, e, e_noisy, scores)``: one value per sample for one copy, ``(N,)``;
the maps ``e`` flattened ``(N, P)`` float64; ``scores`` the model's logits on the copy where
they are known (asked for by :func:`over_copies`'s ``wants_logits``, or read from the
explainer's own pass), else ``None``."""


def over_copies(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target,
    samples: int,
    noise: Noise,
    nan_when_prediction_changes: bool,
    batch_size: int | None,
    objective: Objective,
    wants_logits: bool = False,
) -> Tensor:
    """``(N, samples)``: ``objective`` on each noisy copy of ``x`` and its maps (re-run for the
    same classes); NaN for a copy left out because its prediction changed."""
    _, batch_size = check_batch(x, batch_size)
    explainer_of(maps, "a robustness metric")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise CamkitValueError(f"samples: got {samples!r}; allowed: a positive int")
    classes = classes_of(model, x, target, batch_size)
    # a camkit explainer of this model gives its forward pass's logits with the maps: the
    # predictions come from there, and no second pass runs per copy
    reference, scores = maps_and_logits(maps, x, classes, model)
    reference = reference.double().flatten(1)
    predicted = None
    if nan_when_prediction_changes:
        predicted = (scores if scores is not None else logits(model, x, batch_size)).argmax(1)
        predicted = predicted.cpu()
    values = torch.full((len(x), samples), torch.nan, dtype=torch.float64)
    for step in range(samples):
        noisy = noise(x, step)
        changed, scores = maps_and_logits(maps, noisy, classes, model)
        changed = changed.double().flatten(1)
        if scores is None and (predicted is not None or wants_logits):
            scores = logits(model, noisy, batch_size)
        value = objective(x, noisy, reference, changed, scores).cpu()
        if predicted is not None and scores is not None:
            value = torch.where(scores.argmax(1).cpu() == predicted, value, torch.nan)
        values[:, step] = value
    return values


def _relative_changes(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target,
    samples: int,
    radius: float,
    noise: Noise | None,
    seed: int,
    nan_when_prediction_changes: bool,
    batch_size: int | None,
) -> Tensor:
    """``(N, samples)``: ``||e(x') - e(x)||_F / ||e(x)||_F`` per sample and copy (NaN for a
    copy left out)."""
    if not radius >= 0:
        raise CamkitValueError(f"radius: got {radius!r}; allowed: a number >= 0")

    def relative(
        x: Tensor, noisy: Tensor, e: Tensor, e_noisy: Tensor, scores: Tensor | None
    ) -> Tensor:
        change: Tensor = torch.linalg.vector_norm(e_noisy - e, dim=1)
        size: Tensor = torch.linalg.vector_norm(e, dim=1)
        return change / size

    return over_copies(
        model, x, maps, target, samples, noise or uniform_noise(-radius, radius, seed),
        nan_when_prediction_changes, batch_size, relative,
    )  # fmt: skip

"""Random Logit: does the map of the explained class differ from the map of another class?

A map that looks the same whatever class it explains shows the image, not the
model's reasons for its answer (Sixt et al., 2020). :func:`random_logit`
explains, for each sample, a class drawn at random among the others, and
compares its map with the explained class's map. It follows Quantus 0.6
(``quantus.RandomLogit``): the off class is drawn as Quantus draws it
(``numpy.random.RandomState(seed).randint``, seed 42, so the same classes as
Quantus for the same batch), and the maps are compared by SSIM. One
difference, by choice: camkit compares the two maps as images
(:func:`~camkit.metrics.ssim`, a Gaussian window), where Quantus computes SSIM
over the maps flattened into one long row (a window of 7 consecutive values,
across row ends); pass ``similarity=`` for another comparison, Quantus's
included.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from camkit._engine.option_checks import callable_or_none
from camkit.errors import CamkitValueError
from camkit.metrics._common import (
    Maps,
    MetricResult,
    check_batch,
    classes_of,
    explainer_of,
    logits,
    maps_for,
    reruns_explainer,
    summarize,
)
from camkit.metrics.sanity import ssim
from camkit.targets import Target

__all__ = ["off_classes", "random_logit"]

Similarity = Callable[[Tensor, Tensor], Tensor]
"""``similarity(a, b)``: one value per pair of ``(N, *spatial)`` maps, ``(N,)``."""


def off_classes(classes: Tensor, num_classes: int, seed: int = 42) -> Tensor:
    """For each sample, a class other than ``classes[i]``, drawn as Quantus 0.6 draws it:
    ``RandomState(seed).randint(0, num_classes - 1, N)`` indexes the other classes in
    increasing order.

    Example:
        >>> import torch
        >>> others = off_classes(torch.tensor([0, 1, 2]), 3)
        >>> bool((others != torch.tensor([0, 1, 2])).all())
        True
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise CamkitValueError(
            f"num_classes: got {num_classes!r}; allowed: an int >= 2 (another class must exist)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise CamkitValueError(f"seed: got {seed!r}; allowed: an int from 0 to 2**32 - 1")
    picks = torch.from_numpy(
        np.random.RandomState(seed).randint(0, num_classes - 1, len(classes))
    ).long()
    # the pick-th class among those other than classes[i]: skip classes[i] itself
    return picks + (picks >= classes.cpu()).long()


@reruns_explainer
def random_logit(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    num_classes: int | None = None,
    seed: int = 42,
    similarity: Similarity | None = None,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Random Logit: the similarity of the explained class's map to another class's.

    Sixt et al., *When Explanations Lie: Why Many Modified BP Attributions
    Fail*, ICML 2020, https://arxiv.org/abs/1912.09818. For each sample a class
    other than the explained one is drawn (:func:`off_classes`), explained on
    the same input, and the two maps are compared. Lower is better: the map
    depends on the class.

    Args:
        model: The model (for the predicted classes and the number of classes).
        x: ``(N, C, *spatial)`` inputs.
        maps: The explainer, or a function ``maps(x, classes)`` (re-run for the
            other classes).
        target: The classes explained (``None``: each sample's predicted class).
        num_classes: How many classes the model has (read from its output by
            default).
        seed: The seed of the draw (Quantus's default, 42).
        similarity: ``similarity(a, b)`` per pair of maps; by default
            :func:`~camkit.metrics.ssim` over 2-D maps (``data_range`` 1: the maps
            lie in [0, 1]), or the Spearman correlation for other shapes.
        batch_size: Rows per forward pass for the classes; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The similarity per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> result = random_logit(model, torch.randn(2, 1, 8, 8), GradCAM(model, "1"))
        >>> result.values.shape
        torch.Size([2])
    """
    _, batch_size = check_batch(x, batch_size)
    explainer_of(maps, "random_logit")
    callable_or_none(similarity, "similarity", "a function similarity(a, b) of two map batches")
    classes = classes_of(model, x, target, batch_size)
    if num_classes is None:
        num_classes = int(logits(model, x[:1], batch_size).shape[1])
    others = off_classes(classes, num_classes, seed)
    first = maps_for(maps, x, classes)
    second = maps_for(maps, x, others.to(classes.device))
    if similarity is None:
        from camkit.metrics.sanity import spearman

        similarity = ssim if first.dim() == 3 else spearman
    values = similarity(first.double(), second.double())
    return summarize("random_logit", torch.as_tensor(values, dtype=torch.float64).cpu())

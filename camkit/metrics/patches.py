"""Faithfulness by regions: patches of a grid, or segments, removed one after another.

:func:`region_perturbation` (Samek et al., 2017) and :func:`selectivity`
(Montavon et al., 2018) remove the patches of a grid in the order of their map
mass; :func:`irof` (Rieger and Hansen, 2020) removes segments in the order of
their mean map value; :func:`infidelity` (Yeh et al., 2019) removes the
patches in raster order and compares each change of the score with the map's
prediction of it.

The grid is Quantus 0.6's: where a side is not a multiple of the patch size,
the grid is shifted by half the shortfall (Quantus pads the input by it, with
the edge's values, and the map with zeros), so the patches at the borders are
smaller. A patch is removed with all its channels. The curves equal
Quantus's (tested); where camkit summarises them differently the function's
text says so, and ``auc="quantus"`` gives Quantus's number.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from camkit.errors import CamkitValueError
from camkit.metrics._common import Maps, MetricResult, check_batch, classes_of, maps_for, summarize
from camkit.metrics._removal import (
    baseline_image,
    baseline_values,
    check_area,
    check_count,
    check_ties,
    cumulative_scores,
    order,
    scores,
)
from camkit.targets import Target

__all__ = ["infidelity", "irof", "patch_grid", "region_perturbation", "selectivity"]


def patch_grid(spatial: tuple[int, ...], patch_size: int) -> Tensor:
    """The patch of each position of a grid of ``spatial`` shape, ``(prod(spatial),)`` int64
    (row-major), with patches of ``patch_size`` along every dim, numbered row-major,
    aligned as Quantus 0.6 pads (half the shortfall before, the rest after).

    Example:
        >>> patch_grid((3, 4), 2).view(3, 4)  # 3 rows: 1 short, padded after
        tensor([[0, 0, 1, 1],
                [0, 0, 1, 1],
                [2, 2, 3, 3]])
    """
    check_count("patch_size", patch_size)
    label = torch.zeros((), dtype=torch.int64)
    for size in spatial:
        shortfall = (patch_size - size % patch_size) % patch_size
        blocks = (size + shortfall) // patch_size
        coordinate = (torch.arange(size) + shortfall // 2) // patch_size
        label = label[..., None] * blocks + coordinate
    return label.reshape(-1)


def _regions(weights: Tensor, labels: Tensor, count: int, reduce: str) -> Tensor:
    """Each region's sum (or mean) of the map, ``(N, count)`` float64."""
    n = len(weights)
    index = labels.to(weights.device).expand(n, -1)
    sums = torch.zeros(n, count, dtype=torch.float64, device=weights.device)
    sums.scatter_add_(1, index, weights)
    if reduce == "mean":
        sizes = torch.zeros_like(sums).scatter_add_(1, index, torch.ones_like(weights))
        sums = sums / sizes.clamp_min(1)
    return sums.cpu()


def _step_of(labels: Tensor, ranked: Tensor) -> Tensor:
    """The step at which each pixel is removed, ``(N, P)``, for regions taken in the order
    ``ranked`` ``(N, regions)`` (a region's pixels go when it does)."""
    step_of_region = torch.empty_like(ranked)
    position = torch.arange(ranked.shape[1]).expand_as(ranked).contiguous()
    step_of_region.scatter_(1, ranked, position)
    return step_of_region.gather(1, labels.expand(len(ranked), -1))


def _area(curve: Tensor, area: str) -> Tensor:
    """``(N,)`` area under ``curve`` ``(N, 1 + steps)`` (the first point unperturbed)."""
    if area == "quantus":
        return torch.trapezoid(curve[:, 1:], dx=1.0, dim=1)
    steps = curve.shape[1] - 1
    return torch.trapezoid(curve, dx=1.0 / steps, dim=1)


def region_perturbation(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    patch_size: int = 8,
    regions: int = 100,
    order_by: str = "morf",
    baseline: str | float = "black",
    softmax: bool = True,
    ties: str = "first",
    seed: int = 0,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Region perturbation: the score's drop as patches are removed one after another,
    and its area over the perturbation curve (AOPC).

    Samek et al., *Evaluating the Visualization of What a Deep Neural Network
    Has Learned*, IEEE TNNLS 2017, https://arxiv.org/abs/1509.06321. The
    patches of a grid (see :func:`patch_grid`) are set to the baseline in the
    order of their map mass, most relevant first (``"morf"``), least relevant
    first (``"lerf"``) or at random, up to ``regions`` of them; the curve is
    :math:`f(x) - f(x^{(k)})` after each patch :math:`k`, as Quantus 0.6's
    ``quantus.RegionPerturbation`` returns it (tested equal). The value is the
    paper's AOPC, :math:`\frac{1}{L+1}\sum_{k=0}^{L} (f(x) - f(x^{(k)}))`:
    high for a faithful map with ``"morf"``, low with ``"lerf"``.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        patch_size: The patches' side.
        regions: How many patches are removed (at most all of them).
        order_by: ``"morf"``, ``"lerf"`` or ``"random"`` (a seeded permutation).
        baseline: ``"black"`` (each input's smallest value), ``"mean"`` or a number.
        softmax: Score softmax probabilities (Quantus's default here) or logits.
        ties: How patches of equal mass are ordered, ``"first"`` or ``"quantus"``.
        seed: The seed of ``"random"``.
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The AOPC per sample and its mean; ``curves``: the drops ``(N, regions)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
        >>> result = region_perturbation(model, torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8), 0,
        ...                              patch_size=4)
        >>> result.curves.shape  # four patches
        torch.Size([2, 4])
    """
    n, batch_size = check_batch(x, batch_size)
    check_count("regions", regions)
    check_ties(ties)
    if order_by not in ("morf", "lerf", "random"):
        raise CamkitValueError(f"order_by: got {order_by!r}; allowed: 'morf', 'lerf', 'random'")
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)
    labels = patch_grid(tuple(x.shape[2:]), patch_size)
    count = int(labels.max()) + 1
    masses = _regions(weights, labels, count, "sum")
    if order_by == "random":
        generator = torch.Generator().manual_seed(seed)
        ranked = torch.stack([torch.randperm(count, generator=generator) for _ in range(n)])
    else:
        ranked = order(masses if order_by == "morf" else -masses, ties)
    steps = min(regions, count)
    fill = baseline_values(x, baseline)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    curve = cumulative_scores(
        model,
        x,
        baseline_image(fill, x),
        _step_of(labels, ranked),
        steps,
        classes,
        softmax,
        batch_size,
    )
    drops = intact[:, None] - curve
    aopc = drops.sum(dim=1) / (steps + 1)  # the k = 0 term is 0
    return summarize("region_perturbation", aopc, curves=drops)


def selectivity(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    patch_size: int = 8,
    baseline: str | float = "black",
    softmax: bool = True,
    ties: str = "first",
    auc: str = "fraction",
    batch_size: int | None = None,
) -> MetricResult:
    r"""Selectivity: the area under the score as patches are removed, most relevant first;
    lower is better.

    Montavon, Samek and Müller, *Methods for Interpreting and Understanding Deep
    Neural Networks*, Digital Signal Processing 2018,
    https://arxiv.org/abs/1706.07979. Every patch of a grid (see
    :func:`patch_grid`) is set to the baseline in turn, in the order of its map
    mass, and the explained class's probability recorded after each, as
    Quantus 0.6's ``quantus.Selectivity`` (curves tested equal). A faithful map
    makes the score fall fast: a small area.

    camkit's area is on [0, 1], the unperturbed score first and the x-axis the
    share of patches removed (comparable across image sizes); Quantus's
    (``get_auc_score``: ``utils.calculate_auc(np.array(curve))``, which is
    ``np.trapz(curve, dx=1)``) leaves out the unperturbed point and counts
    patches. ``auc="quantus"`` gives Quantus's number.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        patch_size: The patches' side.
        baseline: ``"black"`` (each input's smallest value), ``"mean"`` or a number.
        softmax: Score softmax probabilities (Quantus's default here) or logits.
        ties: How patches of equal mass are ordered, ``"first"`` or ``"quantus"``.
        auc: ``"fraction"`` or ``"quantus"`` (see :data:`~camkit.metrics._removal.AREAS`).
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The area per sample and its mean; ``curves``: the scores ``(N, patches)``
        after each patch; ``fractions``: the share of patches removed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
        >>> selectivity(model, torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8), 0,
        ...             patch_size=4).curves.shape
        torch.Size([2, 4])
    """
    _, batch_size = check_batch(x, batch_size)
    check_ties(ties)
    check_area(auc)
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)
    labels = patch_grid(tuple(x.shape[2:]), patch_size)
    count = int(labels.max()) + 1
    ranked = order(_regions(weights, labels, count, "sum"), ties)
    fill = baseline_values(x, baseline)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    curve = cumulative_scores(
        model,
        x,
        baseline_image(fill, x),
        _step_of(labels, ranked),
        count,
        classes,
        softmax,
        batch_size,
    )
    area = _area(torch.cat([intact[:, None], curve], dim=1), auc)
    fractions = torch.arange(1, count + 1, dtype=torch.float64) / count
    return summarize("selectivity", area, curves=curve, fractions=fractions)


def irof(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    segments: Tensor | None = None,
    patch_size: int = 8,
    baseline: str | float = "mean",
    softmax: bool = True,
    ties: str = "first",
    auc: str = "fraction",
    batch_size: int | None = None,
) -> MetricResult:
    r"""IROF, iterative removal of features: the area over the relative score as segments
    are removed, highest mean map value first; higher is better.

    Rieger and Hansen, *IROF: a low resource evaluation metric for explanation
    methods*, ICLR 2020 workshop, https://arxiv.org/abs/2003.08747. Each
    segment's mean map value orders the segments; they are set to the baseline
    one after another, and :math:`f(x^{(k)}) / f(x)` is recorded after each; the
    value is the area over that curve. As Quantus 0.6's ``quantus.IROF``, whose
    curve camkit's equals (tested with the same segments), but for two choices:

    * Segments: Quantus makes SLIC superpixels (scikit-image), which camkit does
      not depend on. Pass your own ``segments`` (such as
      ``quantus.helpers.utils.get_superpixel_segments``'s, or a segmentation
      model's); by default the patches of :func:`patch_grid`.
    * The "mean" baseline is each input's own mean. Quantus 0.6 fills with the
      mean of the whole batch as perturbed so far
      (``baseline_replacement_by_mask`` calls ``get_baseline_value`` without
      ``batched=True``), so a sample's value depends on the others in its batch.

    The area is on [0, 1] as in :func:`selectivity`: ``1 -`` the area under the
    curve with the unperturbed point (1) first; ``auc="quantus"`` gives
    Quantus's, the number of segments minus ``np.trapz(curve, dx=1)``.

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        segments: ``(N, *spatial)`` int labels ``0 .. K - 1`` (every label used),
            or ``None`` for the patches of a grid.
        patch_size: The patches' side when ``segments`` is ``None``.
        baseline: ``"mean"`` (each input's mean), ``"black"`` or a number.
        softmax: Score softmax probabilities (Quantus's default here) or logits.
        ties: How segments of equal mean are ordered, ``"first"`` or ``"quantus"``.
        auc: ``"fraction"`` or ``"quantus"`` (see :data:`~camkit.metrics._removal.AREAS`).
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The area per sample and its mean; ``curves``: the relative scores ``(N, K)``
        (a sample with fewer segments than the largest ``K`` is padded with 0, as
        Quantus does).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
        >>> irof(model, torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8), 0, patch_size=4).values.shape
        torch.Size([2])
    """
    n, batch_size = check_batch(x, batch_size)
    check_ties(ties)
    check_area(auc)
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)
    if segments is None:
        labels = patch_grid(tuple(x.shape[2:]), patch_size).expand(n, -1)
    else:
        labels = _check_segments(segments, x)
    counts = labels.amax(dim=1) + 1  # (N,) segments per sample
    count = int(counts.max())
    means = _regions(weights, labels.to(weights.device), count, "mean")
    present = torch.arange(count) < counts[:, None]
    means = torch.where(present, means, -torch.inf)  # padding segments go last
    ranked = order(means, ties)
    fill = baseline_values(x, baseline)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    step_of = torch.stack([_step_of(labels[i], ranked[i : i + 1])[0] for i in range(n)])
    curve = cumulative_scores(model, x, baseline_image(fill, x), step_of, count, classes, softmax,
                              batch_size)  # fmt: skip
    relative = torch.where(present, curve / intact[:, None], 0.0)
    if auc == "quantus":
        area = counts.double() - torch.trapezoid(relative, dx=1.0, dim=1)
    else:
        padded = torch.cat([torch.ones(n, 1, dtype=torch.float64), relative], dim=1)
        area = torch.stack(
            [1 - torch.trapezoid(padded[i, : int(counts[i]) + 1], dx=1 / int(counts[i]))
             for i in range(n)]
        )  # fmt: skip
    return summarize("irof", area, curves=relative)


def _check_segments(segments: Tensor, x: Tensor) -> Tensor:
    """``(N, P)`` int64 labels, each sample's labels ``0 .. K - 1`` all used."""
    if (
        not isinstance(segments, Tensor)
        or segments.is_floating_point()
        or segments.is_complex()
        or tuple(segments.shape) != (x.shape[0], *x.shape[2:])
    ):
        got = (
            f"{segments.dtype} of shape {tuple(segments.shape)}"
            if isinstance(segments, Tensor)
            else type(segments).__name__
        )
        raise CamkitValueError(
            f"segments: got {got}; allowed: int labels of the inputs' shape without channels, "
            f"{(x.shape[0], *x.shape[2:])}"
        )
    labels = segments.detach().cpu().long().flatten(1)
    for i, row in enumerate(labels):
        used = torch.unique(row)
        if int(used[0]) != 0 or len(used) != int(used[-1]) + 1:
            raise CamkitValueError(
                f"segments: sample {i}'s labels are not 0 .. K - 1 all used (got "
                f"{len(used)} labels from {int(used[0])} to {int(used[-1])}); number them "
                f"so, such as with torch.unique(s, return_inverse=True)"
            )
    return labels


def infidelity(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    patch_sizes: tuple[int, ...] = (4,),
    baseline: str | float = "black",
    softmax: bool = False,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Infidelity: how far the map's prediction of each perturbation's effect is from
    the effect; lower is better.

    Yeh et al., *On the (In)fidelity and Sensitivity of Explanations*, NeurIPS
    2019, https://arxiv.org/abs/1901.09392, as Quantus 0.6
    (``quantus.Infidelity``) makes the perturbations: the patches of a grid are
    set to the baseline one after another in row-major order, and after each,
    with :math:`I = x - x'` the change so far, the drop :math:`f(x) - f(x')` is
    compared with the map's prediction :math:`\sum_i e_i I_i` (over every value,
    the map repeated over the channels). The value is the mean squared
    difference over the patches, averaged over ``patch_sizes``. The map is used
    as given (no scaling), so the value depends on its scale as well as its
    shape. The logit is scored by default.

    Quantus 0.6 repeats this deterministic computation ``n_perturb_samples``
    times and averages (the same number); camkit computes it once. Quantus's
    indices come from the padded grid but index the unpadded input, so its
    value is right only when the patch size divides the image's sides; camkit
    clips the border patches (:func:`patch_grid`), and equals Quantus where the
    sides are multiples (tested).

    Args:
        model: The model.
        x: ``(N, C, *spatial)`` inputs.
        maps: ``(N, *spatial)`` maps, or the explainer (or function) that makes them.
        target: The classes explained (``None``: each sample's predicted class).
        patch_sizes: The patches' sides, one pass of the grid each.
        baseline: ``"black"`` (each input's smallest value), ``"mean"`` or a number.
        softmax: Score softmax probabilities instead of logits.
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The mean squared difference per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
        >>> infidelity(model, torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8), 0).values.shape
        torch.Size([2])
    """
    n, batch_size = check_batch(x, batch_size)
    if not isinstance(patch_sizes, (tuple, list)) or not patch_sizes:
        raise CamkitValueError(
            f"patch_sizes: got {patch_sizes!r}; allowed: a non-empty tuple of positive ints"
        )
    for size in patch_sizes:
        check_count("patch_sizes", size)
    classes = classes_of(model, x, target, batch_size)
    weights = maps_for(maps, x, classes).double().flatten(1)  # (N, P)
    fill = baseline_values(x, baseline)
    image = baseline_image(fill, x)
    intact = scores(model, x.detach(), classes, softmax, batch_size)
    # the map's prediction of removing pixel i: e_i (x_i - b) summed over the channels
    per_pixel = weights * (x.detach().double() - image.double()).flatten(2).sum(1)
    losses = []
    for size in patch_sizes:
        labels = patch_grid(tuple(x.shape[2:]), size)
        count = int(labels.max()) + 1
        step_of = labels.expand(n, -1)  # row-major: patch k goes at step k
        curve = cumulative_scores(model, x, image, step_of, count, classes, softmax, batch_size)
        drops = intact[:, None] - curve
        predicted = _regions(per_pixel, labels, count, "sum").cumsum(dim=1)
        losses.append(((drops - predicted) ** 2).mean(dim=1))
    return summarize("infidelity", torch.stack(losses, dim=1).mean(dim=1))

"""Two refinements of the model-parameter randomisation test (Hedström et al., 2023).

:func:`efficient_mprt` compares the complexity (the histogram entropy) of the
maps of the model with that of a fully randomised copy, in one step: a method
that explains the model gives noisier maps for a random one. :func:`smooth_mprt`
runs the cascading test of :func:`~camkit.metrics.randomization_test` on maps
averaged over noisy copies of the input, so that the noise of the method itself
does not hide or fake a change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from camkit._engine.option_checks import non_negative, seed_value
from camkit.errors import CamkitValueError
from camkit.metrics._common import MetricResult, check_batch, classes_of, summarize
from camkit.metrics._removal import check_count
from camkit.metrics._weights import chosen_layers, parameterized_layers, randomize, reduce_channels
from camkit.metrics.sanity import RandomizationResult, randomization_test
from camkit.targets import Target

__all__ = ["discrete_entropy", "efficient_mprt", "smooth_mprt"]

Method = Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]]


def discrete_entropy(maps: Tensor, bins: int = 100) -> Tensor:
    """The entropy (in nats) of each map's histogram of ``bins`` equal bins from its
    smallest to its largest value, ``(N,)`` float64; numpy's ``np.histogram`` binning
    (the largest value in the last bin), as Quantus's ``discrete_entropy``.

    Example:
        >>> import torch
        >>> discrete_entropy(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), bins=2)  # two equal bins
        tensor([0.6931], dtype=torch.float64)
    """
    check_count("bins", bins)
    flat = maps.detach().double().flatten(1).cpu()
    low = flat.amin(dim=1, keepdim=True)
    high = flat.amax(dim=1, keepdim=True)
    constant = high == low  # numpy's range for a constant map: the value +- 0.5
    low, high = torch.where(constant, low - 0.5, low), torch.where(constant, high + 0.5, high)
    index = ((flat - low) * (bins / (high - low))).long()
    index[index == bins] -= 1
    # numpy then corrects for rounding against the edges np.linspace(low, high, bins + 1)
    edges = low + torch.arange(bins + 1, dtype=torch.float64) * ((high - low) / bins)
    edges[:, -1:] = high
    index -= (flat < edges.gather(1, index)).long()
    index += ((flat >= edges.gather(1, index + 1)) & (index != bins - 1)).long()
    counts = torch.zeros(len(flat), bins, dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones_like(flat))
    p = counts / counts.sum(dim=1, keepdim=True)
    return -(torch.where(p > 0, p * p.log(), 0.0)).sum(dim=1)


def efficient_mprt(
    model: nn.Module,
    method: Method,
    x: Tensor,
    target: Target = None,
    *,
    bins: int = 100,
    layers: str | list[str] | None = None,
    seed: int = 42,
    reseed: str = "each",
) -> MetricResult:
    r"""Efficient MPRT (eMPRT): the relative rise of the maps' complexity when every layer
    of the model is randomised; higher is better.

    Hedström et al., *Sanity Checks Revisited: An Exploration to Repair the
    Model Parameter Randomisation Test*, XAI in Action workshop, NeurIPS 2023,
    https://openreview.net/forum?id=vVpefYmnsG. With :math:`H` the entropy of a
    map's histogram (:func:`discrete_entropy`), the value is
    :math:`(H(e_{\text{random}}) - H(e)) / H(e)`: a method whose maps depend on the
    model's weights gives noisier maps for a random model. As Quantus 0.6's
    ``quantus.EfficientMPRT`` (100 bins, seed 42; tested equal with
    ``reseed="quantus"``). The model itself is never changed: a deep copy is
    randomised.

    Args:
        model: The model.
        method: Builds the explainer for a model, e.g. ``lambda m: GradCAM(m, "layer4")``.
        x: Inputs ``(N, C, *spatial)``.
        target: ``None`` (the original model's predicted class), an int, or one
            class per sample; both models explain the same classes.
        bins: The histogram's bins.
        layers: The layers to randomise, one name or a list; by default every module
            that owns parameters the forward pass uses.
        seed: The seed of the re-initialisation.
        reseed: ``"each"``: layer ``i`` re-initialised from ``seed + i``;
            ``"quantus"``: every layer from ``seed + 1``, as Quantus 0.6 does
            (``torch.manual_seed(seed=seed + 1)`` before each layer, so layers of
            the same shape get the same weights).

    Returns:
        The relative rise per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> efficient_mprt(model, lambda m: GradCAM(m, "1"), torch.randn(2, 1, 8, 8)).values.shape
        torch.Size([2])
    """
    check_batch(x, 1)
    if reseed not in ("each", "quantus"):
        raise CamkitValueError(f"reseed: got {reseed!r}; allowed: 'each', 'quantus'")
    seed_value(seed)
    classes = classes_of(model, x, target, 256)
    order = parameterized_layers(model, x)
    chosen = chosen_layers(layers, order)
    original = reduce_channels(method(model)(x, classes).detach(), x)
    twin = copy.deepcopy(model)
    for i, name in enumerate(chosen):
        randomize(twin.get_submodule(name), seed + 1 if reseed == "quantus" else seed + i)
    randomised = reduce_channels(method(twin)(x, classes).detach(), x)
    before, after = discrete_entropy(original, bins), discrete_entropy(randomised, bins)
    return summarize("efficient_mprt", (after - before) / before)


def smooth_mprt(
    model: nn.Module,
    method: Method,
    x: Tensor,
    target: Target = None,
    *,
    samples: int = 50,
    noise: float = 0.1,
    layers: str | list[str] | None = None,
    seed: int = 0,
    reseed: str = "each",
    progress: bool = False,
) -> RandomizationResult:
    r"""Smooth MPRT (sMPRT): the cascading randomisation test on maps averaged over noisy
    copies of the input.

    Hedström et al. (2023), as :func:`efficient_mprt`. Every map, of the model
    and of each randomised copy, is the mean of the maps of ``samples`` inputs:
    ``samples - 1`` noisy copies :math:`x + \epsilon`, :math:`\epsilon \sim
    N(0, \sigma^2)` with :math:`\sigma` = ``noise`` times each input's range,
    and the input itself, as Quantus 0.6's ``quantus.SmoothMPRT`` does. The noise
    is drawn once (seeded) and used at every step, so the steps differ only by
    the weights. The rest is :func:`~camkit.metrics.randomization_test` in
    ``"cascading"`` mode: its ``spearman`` at the last step is the fully
    randomised model's (Quantus's ``return_last_correlation``).

    Quantus 0.6's ``SmoothMPRT`` computes its maps with ``quantus.explain``,
    not with the ``explain_func`` it is given, so it cannot score a camkit
    explainer; camkit's is tested against its definition (``samples=1`` is the
    plain test, and a hand-made average).

    Args:
        model: The model.
        method: Builds the explainer for a model, e.g. ``lambda m: GradCAM(m, "layer4")``.
        x: Inputs ``(N, C, *spatial)``.
        target: As in :func:`~camkit.metrics.randomization_test`.
        samples: Inputs averaged per map (the last one the input itself).
        noise: The noise's standard deviation as a share of each input's range.
        layers: As in :func:`~camkit.metrics.randomization_test`.
        seed: The seed of the noise and of the re-initialisation.
        reseed: As in :func:`~camkit.metrics.randomization_test`.
        progress: Show a progress bar over the steps.

    Returns:
        The similarities per step and sample, and the smoothed maps.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> result = smooth_mprt(model, lambda m: GradCAM(m, "1"), torch.randn(2, 1, 8, 8),
        ...                      samples=4)
        >>> result.spearman.shape
        torch.Size([2, 2])
    """
    n, _ = check_batch(x, 1)
    check_count("samples", samples)
    non_negative(noise, "noise")
    spread = (x.detach().flatten(1).amax(1) - x.detach().flatten(1).amin(1)) * noise
    generator = torch.Generator().manual_seed(seed_value(seed))
    shape = (samples - 1, *x.shape)
    # drawn in float32 whatever x's precision: a seed gives the same noise
    draws = torch.randn(shape, generator=generator).to(x.device, x.dtype)
    draws = draws * spread.view(1, n, *([1] * (x.dim() - 1)))

    def smoothed(m: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        explain = method(m)

        def average(inputs: Tensor, classes: Tensor) -> Tensor:
            total = explain(inputs, classes).detach().double() / samples
            for draw in draws:
                total += explain(inputs + draw, classes).detach().double() / samples
            return total

        return average

    return randomization_test(
        model,
        smoothed,
        x,
        target,
        mode="cascading",
        layers=layers,
        seed=seed,
        reseed=reseed,
        progress=progress,
    )

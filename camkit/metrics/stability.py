"""Robustness as a rate: how fast the map changes for how much the input (or the model's
output, or a layer's) changes.

:func:`local_lipschitz_estimate` (Alvarez-Melis and Jaakkola, 2018) and
:func:`continuity` (Montavon et al., 2018) divide the change of the map by the
change of the input; the relative stabilities (Agarwal et al., 2022) divide the
map's relative change by the input's (:func:`relative_input_stability`), the
logits' (:func:`relative_output_stability`) or a layer's
(:func:`relative_representation_stability`). Each re-runs the explainer
(through the explainer contract) on perturbed inputs, explaining the same
classes, and reports the largest value over the perturbations: lower is more
robust. They follow Quantus 0.6's defaults (noise, number of copies, norms).

One difference from Quantus runs through them: with
``nan_when_prediction_changes``, camkit leaves out the copies whose predicted
class differs from the input's and takes the largest over the rest (``NaN`` if
none is left), where Quantus 0.6 takes ``np.max`` over all copies, so that a
single changed prediction makes the whole sample ``NaN``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from camkit._engine.layers import find_layer
from camkit._engine.option_checks import callable_or_none, non_negative, positive_number
from camkit.errors import CamkitValueError
from camkit.metrics._common import (
    Maps,
    MetricResult,
    check_batch,
    reruns_explainer,
    summarize,
)
from camkit.metrics._removal import baseline_image, baseline_values, check_count
from camkit.metrics.robustness import Copy, Noise, gaussian_noise, over_copies, uniform_noise
from camkit.targets import Target

__all__ = [
    "continuity",
    "local_lipschitz_estimate",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
]


def _largest(values: Tensor) -> Tensor:
    """The largest of each row, ignoring NaN; NaN for a row of NaN."""
    largest = torch.where(values.isnan(), -torch.inf, values).amax(dim=1)
    return torch.where(largest == -torch.inf, torch.nan, largest)


@reruns_explainer
def local_lipschitz_estimate(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    samples: int = 200,
    std: float = 0.1,
    noise: Noise | None = None,
    seed: int = 0,
    nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Local Lipschitz Estimate: the largest ratio of the map's change to the input's,
    over noisy copies of the input.

    Alvarez-Melis and Jaakkola, *On the Robustness of Interpretability Methods*,
    2018, https://arxiv.org/abs/1806.08049. For copies :math:`x' = x + \delta`,
    :math:`\delta \sim N(0, \sigma^2)` on every value,
    :math:`\max \|e(x) - e(x')\|_2 / (\|x - x'\|_2 + 10^{-10})`. As Quantus 0.6's
    ``quantus.LocalLipschitzEstimate`` (200 copies, :math:`\sigma = 0.1`).

    Args:
        model: The model (for the predicted classes).
        x: ``(N, C, *spatial)`` inputs.
        maps: The explainer, or a function ``maps(x, classes)`` (re-run on every copy).
        target: The classes explained (``None``: each sample's predicted class).
        samples: How many noisy copies.
        std: The Gaussian noise's standard deviation.
        noise: Your own perturbation, ``noise(x, step)``, in place of the Gaussian.
        seed: The seed of the default noise.
        nan_when_prediction_changes: Leave out copies whose predicted class changed.
        batch_size: Rows per forward pass for the predictions; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The estimate per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> result = local_lipschitz_estimate(model, torch.randn(2, 1, 8, 8),
        ...                                   GradCAM(model, "1"), samples=3)
        >>> result.values.shape
        torch.Size([2])
    """
    non_negative(std, "std")
    callable_or_none(noise, "noise", "a function noise(x, step) returning a noisy copy")

    def ratio(copy: Copy) -> Tensor:
        step = (copy.x.double() - copy.noisy.double()).flatten(1)
        moved: Tensor = torch.linalg.vector_norm(step, dim=1)
        change: Tensor = torch.linalg.vector_norm(copy.maps - copy.noisy_maps, dim=1)
        return change / (moved + 1e-10)

    values = over_copies(
        model, x, maps, target, samples, noise or gaussian_noise(std, seed),
        nan_when_prediction_changes, batch_size, ratio,
    )  # fmt: skip
    return summarize("local_lipschitz_estimate", _largest(values))


@reruns_explainer
def continuity(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    steps: int = 28,
    baseline: str | float = "black",
    nan_when_prediction_changes: bool = False,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Continuity: the largest ratio of the map's change to the input's as the image is
    shifted sideways.

    Montavon, Samek and Müller, *Methods for Interpreting and Understanding Deep
    Neural Networks*, Digital Signal Processing 2018,
    https://arxiv.org/abs/1706.07979. The image is shifted along its last axis
    by :math:`k \cdot d - W` positions, :math:`d = \lfloor (2W + 1) /
    \text{steps} \rfloor`, :math:`k = 1 \ldots` ``steps``, the uncovered
    columns filled with the baseline, and the maps re-computed;
    :math:`\max \|e(x) - e(x')\|_1 / (\|x - x'\|_2 + 10^{-9})`. As Quantus 0.6's
    ``quantus.Continuity`` (28 steps, the "black" baseline), but for the shift
    of 0, where Quantus divides the maps' difference, 0 up to rounding, by
    :math:`10^{-9}`: camkit leaves that step out (it perturbs nothing).

    Args:
        model: The model (for the predicted classes).
        x: ``(N, C, *spatial)`` inputs.
        maps: The explainer, or a function ``maps(x, classes)`` (re-run on every shift).
        target: The classes explained (``None``: each sample's predicted class).
        steps: How many shifts.
        baseline: ``"black"`` (each input's smallest value), ``"mean"`` or a number.
        nan_when_prediction_changes: Leave out shifts whose predicted class changed.
        batch_size: Rows per forward pass for the predictions; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The largest ratio per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> continuity(model, torch.randn(2, 1, 8, 8), GradCAM(model, "1"), steps=4).values.shape
        torch.Size([2])
    """
    _, batch_size = check_batch(x, batch_size)
    check_count("steps", steps)
    width = x.shape[-1]
    stride = (2 * width + 1) // steps
    if stride < 1:
        raise CamkitValueError(
            f"steps: got {steps}; allowed: at most 2 W + 1 = {2 * width + 1} for width {width}"
        )
    shifts = [k * stride - width for k in range(1, steps + 1) if k * stride != width]
    fill = baseline_values(x, baseline)
    image = baseline_image(fill, x)

    def shifted(x: Tensor, step: int) -> Tensor:
        return _shift(x, image, shifts[step])

    def ratio(copy: Copy) -> Tensor:
        step = (copy.x.double() - copy.noisy.double()).flatten(1)
        distance: Tensor = torch.linalg.vector_norm(step, dim=1)
        return (copy.maps - copy.noisy_maps).abs().sum(dim=1) / (distance + 1e-9)

    values = over_copies(
        model, x, maps, target, len(shifts), shifted, nan_when_prediction_changes, batch_size,
        ratio,
    )  # fmt: skip
    return summarize("continuity", _largest(values))


def _shift(x: Tensor, fill: Tensor, by: int) -> Tensor:
    """``x`` moved ``by`` positions along its last axis (right when positive), the columns
    uncovered taken from ``fill`` (same shape)."""
    width = x.shape[-1]
    if abs(by) >= width:
        return fill.clone()
    if by > 0:
        return torch.cat([fill[..., :by], x[..., : width - by]], dim=-1)
    return torch.cat([x[..., -by:], fill[..., width + by :]], dim=-1)


def _relative(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """``||(a - b) / a||`` per row, each zero of ``a`` replaced by ``eps``, as Agarwal et al."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    norm: Tensor = torch.linalg.vector_norm((a - b) / torch.where(a == 0, eps, a), dim=1)
    return norm


def _stability(
    name: str,
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target,
    samples: int,
    noise: Noise | None,
    seed: int,
    eps: float,
    nan_when_prediction_changes: bool,
    batch_size: int | None,
    denominator: Callable[[Copy], Tensor],
    wants_logits: bool = False,
    layer: tuple[str, nn.Module] | None = None,
) -> MetricResult:
    positive_number(eps, "eps")
    callable_or_none(noise, "noise", "a function noise(x, step) returning a noisy copy")

    def ratio(copy: Copy) -> Tensor:
        below = denominator(copy)
        return _relative(copy.maps, copy.noisy_maps, eps) / torch.where(below == 0, eps, below)

    values = over_copies(
        model, x, maps, target, samples, noise or uniform_noise(0.02, 0.2, seed),
        nan_when_prediction_changes, batch_size, ratio, wants_logits, layer,
    )  # fmt: skip
    return summarize(name, _largest(values))


@reruns_explainer
def relative_input_stability(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    samples: int = 200,
    noise: Noise | None = None,
    seed: int = 0,
    eps: float = 1e-6,
    nan_when_prediction_changes: bool = True,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Relative Input Stability (RIS): the largest ratio of the map's relative change to
    the input's.

    Agarwal et al., *Rethinking Stability for Attribution-based Explanations*,
    2022, https://arxiv.org/abs/2203.06877:
    :math:`\max_{x'} \|(e_x - e_{x'}) / e_x\|_2 \,/\, \|(x - x') / x\|_2`, every
    division element-wise with each zero replaced by ``eps``. As Quantus 0.6's
    ``quantus.RelativeInputStability``: 200 copies, noise uniform on
    [0.02, 0.2] added to every value, copies that change the prediction left
    out. A map's zeros make its relative change large: compare RIS between
    methods, not as an absolute number.

    Args:
        model: The model (for the predicted classes).
        x: ``(N, C, *spatial)`` inputs.
        maps: The explainer, or a function ``maps(x, classes)`` (re-run on every copy).
        target: The classes explained (``None``: each sample's predicted class).
        samples: How many noisy copies.
        noise: Your own perturbation, ``noise(x, step)``.
        seed: The seed of the default noise.
        eps: What a zero is replaced by in a division.
        nan_when_prediction_changes: Leave out copies whose predicted class changed.
        batch_size: Rows per forward pass; None sizes the passes to the
            input (:ref:`metrics-batch-size`).

    Returns:
        The largest ratio per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> relative_input_stability(model, torch.randn(2, 1, 8, 8), GradCAM(model, "1"),
        ...                          samples=3).values.shape
        torch.Size([2])
    """

    def inputs(copy: Copy) -> Tensor:
        return _relative(copy.x, copy.noisy, eps)

    return _stability(
        "relative_input_stability", model, x, maps, target, samples, noise, seed, eps,
        nan_when_prediction_changes, batch_size, inputs,
    )  # fmt: skip


@reruns_explainer
def relative_output_stability(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    samples: int = 200,
    noise: Noise | None = None,
    seed: int = 0,
    eps: float = 1e-6,
    nan_when_prediction_changes: bool = True,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Relative Output Stability (ROS): the largest ratio of the map's relative change to
    the change of the logits.

    Agarwal et al. (2022), as :func:`relative_input_stability` with the
    denominator :math:`\|h(x) - h(x')\|_2`, :math:`h` the model's logits (a zero
    replaced by ``eps``), as Quantus 0.6's ``quantus.RelativeOutputStability``.

    Args:
        model: As in :func:`relative_input_stability`.
        x: As in :func:`relative_input_stability`.
        maps: As in :func:`relative_input_stability`.
        target: As in :func:`relative_input_stability`.
        samples: As in :func:`relative_input_stability`.
        noise: As in :func:`relative_input_stability`.
        seed: As in :func:`relative_input_stability`.
        eps: As in :func:`relative_input_stability`.
        nan_when_prediction_changes: As in :func:`relative_input_stability`.
        batch_size: As in :func:`relative_input_stability`.

    Returns:
        The largest ratio per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> relative_output_stability(model, torch.randn(2, 1, 8, 8), GradCAM(model, "1"),
        ...                           samples=3).values.shape
        torch.Size([2])
    """

    def outputs(copy: Copy) -> Tensor:
        # wants_logits: both logits come from the explainer's passes, or from passes run
        # for them by over_copies
        moved = cast(Tensor, copy.reference_logits).double() - cast(Tensor, copy.logits).double()
        norm: Tensor = torch.linalg.vector_norm(moved, dim=1)
        return norm

    return _stability(
        "relative_output_stability", model, x, maps, target, samples, noise, seed, eps,
        nan_when_prediction_changes, batch_size, outputs, wants_logits=True,
    )  # fmt: skip


@reruns_explainer
def relative_representation_stability(
    model: nn.Module,
    x: Tensor,
    maps: Maps,
    target: Target = None,
    *,
    layer: str,
    samples: int = 200,
    noise: Noise | None = None,
    seed: int = 0,
    eps: float = 1e-6,
    nan_when_prediction_changes: bool = True,
    batch_size: int | None = None,
) -> MetricResult:
    r"""Relative Representation Stability (RRS): the largest ratio of the map's relative
    change to the relative change of a layer's output.

    Agarwal et al. (2022), as :func:`relative_input_stability` with the
    denominator :math:`\|(l_x - l_{x'}) / l_x\|_2`, :math:`l` the output of
    ``layer`` (a dotted name) flattened, as Quantus 0.6's
    ``quantus.RelativeRepresentationStability`` with ``layer_names=[layer]``
    (by default Quantus concatenates every layer's output; name the layer you
    mean). Given a camkit explainer of ``model``, the layer's output on the
    input and on each copy is read from the explainer's own first forward
    pass where that pass is checked to be the model's own on that input (the
    same input, eval mode, the caller's autocast, the logits the explainer
    reports; the calling thread's), which saves a pass per copy; otherwise a
    pass is run for it.

    Args:
        model: As in :func:`relative_input_stability`.
        x: As in :func:`relative_input_stability`.
        maps: As in :func:`relative_input_stability`.
        target: As in :func:`relative_input_stability`.
        layer: The layer whose output is compared, by dotted name.
        samples: As in :func:`relative_input_stability`.
        noise: As in :func:`relative_input_stability`.
        seed: As in :func:`relative_input_stability`.
        eps: As in :func:`relative_input_stability`.
        nan_when_prediction_changes: As in :func:`relative_input_stability`.
        batch_size: As in :func:`relative_input_stability`.

    Returns:
        The largest ratio per sample, and its mean.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import GradCAM
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> relative_representation_stability(model, torch.randn(2, 1, 8, 8), GradCAM(model, "1"),
        ...                                   layer="1", samples=3).values.shape
        torch.Size([2])
    """
    _, module = find_layer(model, layer)

    def representations(copy: Copy) -> Tensor:
        # over_copies gives both, as it was given the layer
        return _relative(cast(Tensor, copy.reference_layer), cast(Tensor, copy.layer), eps)

    return _stability(
        "relative_representation_stability", model, x, maps, target, samples, noise, seed,
        eps, nan_when_prediction_changes, batch_size, representations, layer=(layer, module),
    )  # fmt: skip

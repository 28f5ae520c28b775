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

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from camkit._engine.model import Precision, eval_mode, forward
from camkit._engine.model_outputs import logits_in
from camkit._engine.option_checks import callable_or_none, non_negative, seed_value
from camkit.errors import CamkitTypeError, CamkitValueError
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
    copies are drawn in order, so call it with steps 0, 1, 2, ... The noise is drawn in
    float32 whatever ``x``'s precision, so that a seed gives the same copies of a float64
    or half-precision input."""
    generator = torch.Generator(device="cpu").manual_seed(seed_value(seed))

    def noise(x: Tensor, step: int) -> Tensor:
        delta = torch.rand(x.shape, generator=generator) * (high - low) + low
        return x + delta.to(x.device, x.dtype)

    return noise


def gaussian_noise(std: float, seed: int) -> Noise:
    """Noise ``N(0, std^2)`` on every value, seeded (and drawn in float32) as
    :func:`uniform_noise`."""
    generator = torch.Generator(device="cpu").manual_seed(seed_value(seed))

    def noise(x: Tensor, step: int) -> Tensor:
        return x + (torch.randn(x.shape, generator=generator) * std).to(x.device, x.dtype)

    return noise


class Copy(NamedTuple):
    """What an :data:`Objective` sees of one noisy copy of the batch."""

    x: Tensor
    """The batch."""
    noisy: Tensor
    """The copy."""
    maps: Tensor
    """The maps of ``x``, flattened ``(N, P)``, float64."""
    noisy_maps: Tensor
    """The maps of the copy, as ``maps``."""
    logits: Tensor | None
    """The model's logits on the copy where they are known (asked for by
    :func:`over_copies`'s ``wants_logits``, or read from the explainer's own pass)."""
    reference_logits: Tensor | None
    """The model's logits on ``x``, as ``logits``."""
    layer: Tensor | None
    """The output of :func:`over_copies`'s ``layer`` on the copy, flattened ``(N, D)``
    float64; ``None`` without a layer."""
    reference_layer: Tensor | None
    """The same on ``x``."""


Objective = Callable[[Copy], Tensor]
"""``objective(copy)``: one value per sample for one :class:`Copy`, ``(N,)``."""


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
    layer: tuple[str, nn.Module] | None = None,
) -> Tensor:
    """``(N, samples)``: ``objective`` on each noisy copy of ``x`` and its maps (re-run for the
    same classes); NaN for a copy left out because its prediction changed. With ``layer``
    (its dotted name and module), the objective also gets that layer's output on ``x`` and
    on each copy: read from the explainer's own pass where it can be (see
    :class:`_FirstPass`), else from a pass run for it."""
    _, batch_size = check_batch(x, batch_size)
    explainer_of(maps, "a robustness metric")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise CamkitValueError(f"samples: got {samples!r}; allowed: a positive int")
    classes = classes_of(model, x, target, batch_size)

    def explained(inputs: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        # a camkit explainer of this model gives its forward pass's logits with the maps
        # (and, watched, the layer's output): passes the caller need not run again
        with _FirstPass(model, None if layer is None else layer[1]) as watch:
            e, scores = maps_and_logits(maps, inputs, classes, model)
        seen = None if layer is None else watch.layer_output(inputs, scores)
        if layer is not None and seen is None:
            seen = layer_output(model, *layer, inputs, batch_size)
        return e.double().flatten(1), scores, seen

    reference, reference_logits, reference_layer = explained(x)
    if reference_logits is None and (nan_when_prediction_changes or wants_logits):
        reference_logits = logits(model, x, batch_size)
    predicted = None
    if nan_when_prediction_changes and reference_logits is not None:
        predicted = reference_logits.argmax(1).cpu()
    values = torch.full((len(x), samples), torch.nan, dtype=torch.float64)
    for step in range(samples):
        noisy = noise(x, step)
        changed, scores, seen = explained(noisy)
        if scores is None and (predicted is not None or wants_logits):
            scores = logits(model, noisy, batch_size)
        copy = Copy(x, noisy, reference, changed, scores, reference_logits, seen, reference_layer)
        value = objective(copy).cpu()
        if predicted is not None and scores is not None:
            value = torch.where(scores.argmax(1).cpu() == predicted, value, torch.nan)
        values[:, step] = value
    return values


class _FirstPass:
    """Watches the first forward pass of ``model`` that an explainer runs, for the output of
    ``module`` in it.

    That output is the layer's output on the explained input only if that first pass was
    the model's own eval-mode pass on that very input, which :meth:`layer_output` checks
    from what the pass saw: its input equal to the input, the model in eval mode, the
    caller's autocast regions open (as in a pass run here), and its output equal to the
    logits the explainer reported (which the contract,
    :attr:`~camkit.Explainer.reports_output`, says are the eval-mode model's). An
    explainer whose first pass is another (noisy copies, augmentations, a batch in parts)
    fails the check, and the caller runs the pass itself. Only the calling thread's passes
    are watched: another thread running the model meanwhile is not taken for the
    explainer. With no module it watches nothing.
    """

    def __init__(self, model: nn.Module, module: nn.Module | None) -> None:
        self.model, self.module = model, module
        self.started, self.inside = False, False
        self.thread = threading.get_ident()  # another thread's passes are not watched
        self.precision = Precision.of_caller()  # the autocast regions the caller has open
        self.input: object = None
        self.output: object = None
        self.seen: object = None
        self.plain = False
        self.handles: list[Any] = []

    def __enter__(self) -> _FirstPass:
        if self.module is not None:
            self.handles = [
                self.model.register_forward_pre_hook(self._starts),
                self.module.register_forward_hook(self._layer),
                self.model.register_forward_hook(self._ends),
            ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _starts(self, model: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() != self.thread:
            return
        if not self.started:
            self.started = self.inside = True
            self.input = args[0] if args else None
            # the pass's precision is the caller's, in which a pass run here would be
            self.plain = not model.training and Precision.of_caller() == self.precision

    def _layer(self, _module: nn.Module, _args: object, output: object) -> None:
        if self.inside and self.seen is None and threading.get_ident() == self.thread:
            # a copy: a layer after it may write in place
            self.seen = _flat_copy(output) if isinstance(output, Tensor) else False

    def _ends(self, _model: nn.Module, _args: object, output: object) -> None:
        if self.inside and threading.get_ident() == self.thread:
            self.inside, self.output = False, logits_in(output)

    def layer_output(self, x: Tensor, logits: Tensor | None) -> Tensor | None:
        """The module's output on ``x``, flattened ``(N, D)`` float64, if the first pass was
        the model's own on ``x`` that gave ``logits``; else ``None``."""
        first, seen, output = self.input, self.seen, self.output
        if not (
            self.plain
            and logits is not None
            and isinstance(first, Tensor)
            and isinstance(seen, Tensor)
            and isinstance(output, Tensor)
            and len(seen) == len(x)
            and (first is x or (first.shape == x.shape and bool(torch.equal(first, x))))
            and output.shape == logits.shape
            and bool(torch.equal(output, logits))
        ):
            return None
        return seen


def _flat_copy(output: Tensor) -> Tensor:
    """A layer's output as kept: flattened ``(N, D)``, float64, copied (a later in-place
    operation in the model, such as ``ReLU(inplace=True)``, must not change it)."""
    return output.detach().to(torch.float64, copy=True).flatten(1)


@torch.no_grad()
def layer_output(
    model: nn.Module, layer: str, module: nn.Module, x: Tensor, batch_size: int
) -> Tensor:
    """``layer``'s output on ``x`` (its first call in a forward pass), flattened per sample,
    ``(N, D)`` float64."""
    outputs: list[Tensor] = []
    calls: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, Tensor):
            raise CamkitTypeError(
                f"layer: {layer!r} returns {type(output).__name__}; relative representation "
                f"stability needs a layer whose output is a tensor"
            )
        calls.append(_flat_copy(output))

    handle = module.register_forward_hook(keep)
    try:
        with eval_mode(model):
            for start in range(0, len(x), batch_size):
                calls.clear()
                forward(model, x[start : start + batch_size])
                if not calls:
                    raise CamkitValueError(
                        f"layer: the forward pass never reached {layer!r}; name a layer the "
                        f"model runs"
                    )
                outputs.append(calls[0])
    finally:
        handle.remove()
    return torch.cat(outputs)


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
    non_negative(radius, "radius")
    callable_or_none(noise, "noise", "a function noise(x, step) returning a noisy copy")

    def relative(copy: Copy) -> Tensor:
        change: Tensor = torch.linalg.vector_norm(copy.noisy_maps - copy.maps, dim=1)
        size: Tensor = torch.linalg.vector_norm(copy.maps, dim=1)
        return change / size

    return over_copies(
        model, x, maps, target, samples, noise or uniform_noise(-radius, radius, seed),
        nan_when_prediction_changes, batch_size, relative,
    )  # fmt: skip

"""Checks for explainers: the contract test camkit runs on each of its own, for yours too.

:func:`check_explainer` calls an explainer the way the map store, the metrics
and the command line do, and checks that what it *declares* (see
:class:`~camkit.Explainer`) is true. camkit's test suite runs it on every
camkit explainer; run it in your tests on an explainer you write:

>>> import torch
>>> from torch import nn
>>> import camkit
>>> from camkit.testing import check_explainer
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(144, 3))
>>> check_explainer(camkit.GradCAM(model, "1"), torch.randn(2, 1, 8, 8), target=[0, 2])

:func:`model_state` and :func:`assert_model_unchanged` check that a call left
a model exactly as it was.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["ModelState", "assert_model_unchanged", "check_explainer", "model_state"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
)


@dataclass
class ModelState:
    """Everything about a model that an explainer's call must leave as it was.

    Attributes:
        hooks: The number of hooks of each kind on each module.
        grads: Each parameter's ``.grad`` (cloned), or ``None``.
        requires_grad: Each parameter's flag.
        buffers: Each buffer (cloned), such as batch normalization's statistics.
        training: Each module's ``training`` flag.
        output: The model's eval-mode output on the ``x`` given, or ``None``.
    """

    hooks: list[tuple[str, int]]
    grads: dict[str, Tensor | None]
    requires_grad: dict[str, bool]
    buffers: dict[str, Tensor]
    training: dict[str, bool]
    output: Tensor | None


def model_state(model: nn.Module, x: Tensor | None = None) -> ModelState:
    """Record ``model``'s hooks, gradients, flags and buffers (and its output on ``x``)."""
    if not isinstance(model, nn.Module):
        raise CamkitTypeError(f"model: got {type(model).__name__}; allowed: a torch.nn.Module")
    if x is not None and not isinstance(x, Tensor):
        raise CamkitTypeError(f"x: got {type(x).__name__}; allowed: a tensor, or None")
    hooks = [
        (f"{name}.{attr}", len(getattr(m, attr)))
        for name, m in model.named_modules()
        for attr in _HOOK_DICTS
        if hasattr(m, attr)
    ]
    training = {n: m.training for n, m in model.named_modules()}
    output = None
    if x is not None:
        with torch.no_grad():
            model.eval()
            output = model(x).clone()
        for name, module in model.named_modules():
            module.training = training[name]
    return ModelState(
        hooks=hooks,
        grads={n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        buffers={n: b.clone() for n, b in model.named_buffers()},
        training=training,
        output=output,
    )


def assert_model_unchanged(before: ModelState, after: ModelState) -> None:
    """Raise ``AssertionError`` naming what differs between two :func:`model_state` records."""
    _expect(after.hooks == before.hooks, f"hooks changed: {before.hooks} -> {after.hooks}")
    _expect(after.requires_grad == before.requires_grad, "requires_grad flags changed")
    _expect(after.training == before.training, "training flags changed")
    _expect(before.grads.keys() == after.grads.keys(), "the parameters changed")
    for name, grad in before.grads.items():
        other = after.grads[name]
        same = other is None if grad is None else other is not None and torch.equal(grad, other)
        _expect(same, f"the .grad of {name!r} changed")
    _expect(before.buffers.keys() == after.buffers.keys(), "the buffers changed")
    for name, buffer in before.buffers.items():
        _expect(torch.equal(buffer, after.buffers[name]), f"buffer {name!r} changed")
    if before.output is not None:
        _expect(
            after.output is not None and torch.equal(before.output, after.output),
            "the model's output changed",
        )


def check_explainer(
    explainer: Explainer,
    x: Tensor,
    target: Target = None,
    *,
    gradcheck: bool = True,
) -> None:
    """Check that ``explainer`` keeps the :class:`~camkit.Explainer` contract on ``x``.

    It checks that the explainer declares its model, layers and JSON-valued
    settings; that ``explain(x, target)`` returns one float32, finite map per
    sample (``(N, *spatial)`` like ``x``, or ``(N, C, *spatial)`` where it
    declares ``input_channels``) with per-sample scores and the output of the
    forward pass (the model's own eval-mode output on ``x`` where it declares
    ``reports_output``), and that ``explainer(x, target)`` returns the same maps,
    called as it is or under :func:`torch.no_grad` or :func:`torch.inference_mode`;
    that ``upsample=False`` gives maps at a layer's resolution where
    ``layer_resolution`` is declared and is refused with a
    :class:`~camkit.CamkitValueError` otherwise; that ``differentiable=True``
    keeps the maps in the autograd graph where declared (with ``gradcheck``,
    checked by :func:`torch.autograd.gradcheck` in float64 through the input,
    on a float64 copy of the model) and is refused, with the declared reason,
    otherwise; and that no call, failed ones included, changes the model.
    The explainer must be deterministic (seed a random method).

    Args:
        explainer: The explainer to check.
        x: A small input batch for its model.
        target: A target with one class (or score) per sample.
        gradcheck: Run :func:`torch.autograd.gradcheck` for a differentiable
            explainer (costly for a large model; the maps must be smooth in
            ``x`` near it, so use a model without ReLU kinks nearby).

    Raises:
        AssertionError: Naming the first broken promise.
    """
    name = type(explainer).__name__
    _expect(isinstance(explainer, Explainer), f"{name} is not a camkit.Explainer")
    _expect(isinstance(explainer.model, nn.Module), f"{name}.model is not an nn.Module")
    layers = explainer.layer_names
    _expect(
        isinstance(layers, list) and all(isinstance(n, str) for n in layers),
        f"{name}.layer_names is not a list of names: {layers!r}",
    )
    settings = explainer.settings()
    _expect(
        json.loads(json.dumps(settings)) == settings,
        f"{name}.settings() is not made of JSON values: {settings!r}",
    )
    _expect(settings.get("method") == name, f"{name}.settings() does not name the method")
    _expect(settings.get("layers") == layers, f"{name}.settings() does not name the layers")

    before = model_state(explainer.model)
    result = explainer.explain(x, target)
    _check_result(name, explainer, result, x)
    again = explainer(x, target)
    _expect(torch.equal(again, result.maps), f"{name}(x, target) differs from explain().maps")
    for quiet in (torch.no_grad, torch.inference_mode):  # as inference code calls it
        try:
            with quiet():
                inside = explainer(x, target)
        except Exception as failure:
            raise AssertionError(
                f"{name}(x, target) fails under torch.{quiet.__name__}(): "
                f"{type(failure).__name__}: {failure}"
            ) from failure
        _expect(
            torch.equal(inside, result.maps),
            f"{name}(x, target) under torch.{quiet.__name__}() differs from its maps outside",
        )

    if explainer.layer_resolution:
        small = explainer.explain(x, target, upsample=False).maps
        _expect(small.shape[0] == len(x), f"{name}: upsample=False lost the batch axis")
    else:
        _expect_refusal(name, "upsample", lambda: explainer.explain(x, target, upsample=False))

    if not explainer.differentiable:
        error = _expect_refusal(
            name, "differentiable", lambda: explainer.explain(x, target, differentiable=True)
        )
        _expect(
            explainer.not_differentiable_because in str(error),
            f"{name}: the refusal does not say why: {error}",
        )
    elif gradcheck:
        _check_gradients(explainer, x, target)
    else:
        kept = explainer.explain(x, target, differentiable=True).maps
        _expect(kept.requires_grad, f"{name}: differentiable=True gave maps outside the graph")
    assert_model_unchanged(before, model_state(explainer.model))


def _check_result(name: str, explainer: Explainer, result: CAMResult, x: Tensor) -> None:
    _expect(isinstance(result, CAMResult), f"{name}.explain returned {type(result).__name__}")
    maps = result.maps
    shape = (len(x), *x.shape[1:]) if explainer.input_channels else (len(x), *x.shape[2:])
    _expect(tuple(maps.shape) == shape, f"{name}: maps {tuple(maps.shape)}, expected {shape}")
    _expect(maps.dtype == torch.float32, f"{name}: maps are {maps.dtype}, not float32")
    _expect(not maps.requires_grad, f"{name}: maps are in the autograd graph by default")
    _expect(bool(torch.isfinite(maps).all()), f"{name}: maps are not finite")
    _expect(tuple(result.scores.shape) == (len(x),), f"{name}: scores are not one per sample")
    _expect(result.output is not None, f"{name}: the result has no model output")
    if explainer.reports_output:
        model = explainer.model
        training = {m: m.training for m in model.modules()}
        try:
            with torch.no_grad():
                expected = model.eval()(x)
        finally:
            for module, flag in training.items():
                module.training = flag
        _expect(
            _same_values(result.output, expected),
            f"{name} declares reports_output, but explain's output is not the model's "
            f"eval-mode output on x",
        )


def _same_values(got: Any, expected: Any) -> bool:
    """Whether two model outputs hold the same values: tensors equal to float32's rounding
    of a forward pass (``torch.testing.assert_close``'s default for the dtype), and
    tuples, lists and dicts of them alike."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor) or got.shape != expected.shape:
            return False
        try:
            torch.testing.assert_close(got.detach(), expected.detach())
        except AssertionError:
            return False
        return True
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(_same_values(got[k], expected[k]) for k in expected)
        )
    if isinstance(expected, (tuple, list)):
        return (
            isinstance(got, (tuple, list))
            and len(got) == len(expected)
            and all(_same_values(a, b) for a, b in zip(got, expected, strict=True))
        )
    return bool(got == expected)


def _expect_refusal(name: str, option: str, call: Any) -> CamkitValueError:
    try:
        call()
    except CamkitValueError as error:
        _expect(str(error).startswith(f"{option}: "), f"{name}: refusal {error} names no option")
        return error
    raise AssertionError(f"{name}: {option} is not declared, yet it was not refused")


def _check_gradients(explainer: Explainer, x: Tensor, target: Target) -> None:
    wide = copy.deepcopy(explainer)
    wide.model.double()
    x64 = x.detach().double().requires_grad_(True)

    def maps(inputs: Tensor) -> Tensor:
        return wide.explain(inputs, target, differentiable=True).maps

    _expect(
        torch.autograd.gradcheck(maps, (x64,), eps=1e-6, atol=1e-5, rtol=1e-4),
        f"{type(explainer).__name__}: gradcheck failed",
    )


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)

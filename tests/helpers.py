"""Test helpers: an independent plain-autograd Grad-CAM, a model snapshot, explainers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import camkit
from camkit.testing import ModelState, assert_model_unchanged, model_state

MNIST_LAYER = "features.relu"
# Every explainer on the MNIST net's last conv ReLU, by name: model -> explainer.
MNIST_EXPLAINERS: dict[str, Callable[[nn.Module], Any]] = {
    "GradCAM": lambda m: camkit.GradCAM(m, MNIST_LAYER),
    "GradCAMPlusPlus": lambda m: camkit.GradCAMPlusPlus(m, MNIST_LAYER),
    "XGradCAM": lambda m: camkit.XGradCAM(m, MNIST_LAYER),
    "HiResCAM": lambda m: camkit.HiResCAM(m, MNIST_LAYER),
    "LayerCAM": lambda m: camkit.LayerCAM(m, MNIST_LAYER),
    "EigenCAM": lambda m: camkit.EigenCAM(m, MNIST_LAYER),
    "ScoreCAM": lambda m: camkit.ScoreCAM(m, MNIST_LAYER, batch_size=16),
    "AblationCAM": lambda m: camkit.AblationCAM(m, MNIST_LAYER, batch_size=16),
    "GuidedBackprop": lambda m: camkit.GuidedBackprop(m),
    "GuidedGradCAM": lambda m: camkit.GuidedGradCAM(m, MNIST_LAYER),
    "GradCAMElementWise": lambda m: camkit.GradCAMElementWise(m, MNIST_LAYER),
    "EigenGradCAM": lambda m: camkit.EigenGradCAM(m, MNIST_LAYER),
    "ShapleyCAM": lambda m: camkit.ShapleyCAM(m, MNIST_LAYER),
    "SmoothGradCAMPlusPlus": lambda m: camkit.SmoothGradCAMPlusPlus(m, MNIST_LAYER, seed=0),
    "FinerCAM": lambda m: camkit.FinerCAM(m, MNIST_LAYER),
    "FEM": lambda m: camkit.FEM(m, MNIST_LAYER),
    "SSCAM": lambda m: camkit.SSCAM(m, MNIST_LAYER, samples=2, seed=0, batch_size=16),
    "ISCAM": lambda m: camkit.ISCAM(m, MNIST_LAYER, samples=2, batch_size=16),
    "RandomCAM": lambda m: camkit.RandomCAM(m, MNIST_LAYER, seed=0),
    "two layers": lambda m: camkit.GradCAM(m, ["features.conv1", MNIST_LAYER]),
}


def reference_gradcam(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    classes: Tensor | None = None,
    score: Any = None,
) -> Tensor:
    """Raw signed Grad-CAM at the layer's resolution, by plain autograd.

    The whole forward pass records a graph; the gradient is taken with respect
    to the layer's own output tensor (its last call). The hook hands a clone
    downstream so in-place operations after the layer cannot alter the stored
    activation. ``model`` must already be in eval mode.
    """
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        store["A"] = output
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = model(x)
            y = out[torch.arange(len(x)), classes] if score is None else score(out)
            (grad,) = torch.autograd.grad(y.sum(), store["A"])
    finally:
        handle.remove()
    A = store["A"].detach().double()
    spatial = tuple(range(2, A.dim()))
    alpha = grad.double().mean(dim=spatial)
    return torch.einsum("nk,nk...->n...", alpha, A)


def finish(raw: Tensor, size: tuple[int, ...]) -> Tensor:
    """ReLU, upsample with align_corners=False, then min-max normalize per map."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    m = F.interpolate(raw.clamp(min=0)[:, None], size=size, mode=mode, align_corners=False)[:, 0]
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    out = torch.where(hi > lo, (flat - lo) / (hi - lo).clamp(min=1e-300), torch.zeros_like(flat))
    return out.view_as(m)


Snapshot = ModelState
snapshot = model_state
assert_untouched = assert_model_unchanged


FLOAT32_EPS = torch.finfo(torch.float32).eps


class GradCAMMagnitude(camkit.BaseCAM):
    """``sum_k |alpha_k| |A^k|``: the size of the terms a Grad-CAM map sums, which bounds its
    rounding. Two computations of one map whose inputs agree to float32's rounding differ by
    at most ``(2 K + 1) eps`` times it (``K`` channels summed in any order, each weight off
    by one rounding); :func:`assert_gradcam_close` checks that bound."""

    channels = 0
    """``K``, the layer's channels, once a call has run."""

    def weights(self, context: camkit.LayerContext) -> Tensor:
        self.channels = context.activations.shape[2]
        return context.gradients.mean(dim=context.spatial_dims).abs()

    def combine(self, weighted: Tensor) -> Tensor:
        return weighted.abs().sum(dim=1)


def assert_gradcam_close(got: Tensor, expected: Tensor, magnitude: Tensor, channels: int) -> None:
    """Raw Grad-CAM maps equal up to the rounding of float32 arithmetic on terms of size
    ``magnitude`` (from :class:`GradCAMMagnitude`): a bound that follows from the
    computation, not from one machine's kernels."""
    bound = (2 * channels + 1) * FLOAT32_EPS * magnitude.double()
    excess = (got.double() - expected.double()).abs() - bound
    assert float(excess.max()) <= 0, f"off by {float(excess.max())} beyond the rounding bound"
    assert float(magnitude.max()) > 0  # the bound is not vacuous


def reference_activations_and_gradients(
    model: nn.Module, layer: nn.Module, x: Tensor, classes: Tensor
) -> tuple[Tensor, Tensor]:
    """The layer's output A ``(N, C, *s)`` and ``dy^c/dA`` ``(N, k, C, *s)`` by plain autograd.

    ``classes`` is ``(N, k)``; one full backward pass per target column.
    """
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        store["A"] = output
        return output.clone()

    handle = layer.register_forward_hook(hook)
    grads = []
    try:
        with torch.enable_grad():
            out = model(x)
            for j in range(classes.shape[1]):
                y = out[torch.arange(len(x)), classes[:, j]].sum()
                (g,) = torch.autograd.grad(y, store["A"], retain_graph=True)
                grads.append(g.double())
    finally:
        handle.remove()
    return store["A"].detach().double(), torch.stack(grads, dim=1)


# Everything that reads a tensor's value on the host, and so waits for a GPU.
READS = {"cpu", "numpy", "tolist", "item", "__bool__", "__int__", "__float__", "__index__"}
READS |= {"__complex__", "nonzero", "unique", "masked_select", "argwhere"}


class Recorder(TorchFunctionMode):
    """Records every torch function called in its ``with`` block: name, args, kwargs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        self.calls.append((getattr(func, "__qualname__", repr(func)), args, kwargs))
        return func(*args, **kwargs)


def reference_gradcam_at(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    score: Callable[[Any], Tensor],
    call: int = -1,
    pick: Callable[[Any], Tensor] = lambda output: output,
    arrange: Callable[[Tensor], Tensor] = lambda t: t,
) -> Tensor:
    """Raw signed Grad-CAM ``(N, *spatial)`` by plain autograd, at one call of ``module``
    and one part of its output (``pick``), for a score function ``(N,)`` of the output;
    ``arrange`` lays activation and gradient out as ``(N, C, *spatial)`` (tokens on a
    grid, channels-last moved). ``model`` must already be in eval mode."""
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, i, output: seen.append(pick(output)))
    try:
        with torch.enable_grad():
            out = model(x)
            activation = seen[call]
            (grad,) = torch.autograd.grad(score(out).sum(), activation)
    finally:
        handle.remove()
    A, grad = arrange(activation.detach()).double(), arrange(grad)
    alpha = grad.double().mean(dim=tuple(range(2, A.dim())))
    return torch.einsum("nk,nk...->n...", alpha, A)


WRONG_VALUES: list[Any] = [
    -1, 0, 1.5, True, "bogus", float("nan"), float("inf"), None, [], object(),
]  # fmt: skip
"""Values of the wrong kind or range for one option or another (a negative count, a float
for an int, a string for a number, NaN, None, an empty list, an object): the option tests give
each option each of them, unless it is the option's default or allowed there."""

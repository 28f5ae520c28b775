"""The CAM base class: hooks, targets, gradients, ReLU, upsampling, scaling.

A method is a subclass that says how channel (or pixel) weights come from the
layer's activations and gradients, by overriding :meth:`BaseCAM.weights`.
Everything else lives here, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from camkit import _maps
from camkit._hooks import LayerCapture
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.layers import find_layer
from camkit.targets import Target, check_target, resolve_scores

__all__ = ["BaseCAM", "CAMResult"]


@dataclass(frozen=True)
class CAMResult:
    """Everything one call of :meth:`BaseCAM.explain` produced.

    Attributes:
        maps: The maps, float32 on the input's device: ``(N, *input spatial)``
            by default, ``(N, *layer spatial)`` with ``upsample=False``.
        output: The model output of the same forward pass (detached), so the
            predictions need no second forward pass.
        scores: The explained score of each sample, shape ``(N,)``, detached.
        classes: The class explained for each sample, shape ``(N,)``, or
            ``None`` when the target was a callable.
    """

    maps: Tensor
    output: Any
    scores: Tensor
    classes: Tensor | None


class BaseCAM(ABC):
    """A class activation map method bound to one layer of one model.

    Constructing a CAM only looks the layer up; it attaches nothing to the
    model. Each call attaches a forward hook, runs the model, and removes the
    hook before returning or raising. During the call the model is in eval
    mode; afterwards every module's ``training`` flag is as it was, no
    parameter's ``.grad`` has changed, and no hook remains.

    The part of the network before the layer runs under :func:`torch.no_grad`;
    autograd records only the part after it, and the gradient of the score
    with respect to the layer's output comes from :func:`torch.autograd.grad`,
    so nothing is back-propagated into parameters.

    If the layer runs several times in one forward pass (torchvision's ResNet
    blocks call one ``ReLU`` two or three times), the map is computed from its
    *last* call, the one nearest the output.

    Args:
        model: Any :class:`torch.nn.Module`. It is not modified.
        layer: The layer to explain: a dotted name as in
            :meth:`torch.nn.Module.named_modules` (``"features.relu"``) or the
            module object. Its output must be a floating-point tensor of shape
            ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.

    Raises:
        CamkitValueError: If the model has no such layer; the message lists the
            closest names.
        CamkitTypeError: If ``model`` or ``layer`` has the wrong type.
    """

    needs_gradients: ClassVar[bool] = True
    """Whether :meth:`weights` needs the gradients of the score."""

    def __init__(self, model: nn.Module, layer: str | nn.Module) -> None:
        self.layer_name, self.layer = find_layer(model, layer)
        self.model = model

    @abstractmethod
    def weights(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        """Weights of the layer's channels, the one thing a method defines.

        Args:
            activations: The layer's output ``A``, float32, ``(N, C, *spatial)``.
            gradients: ``d score / d A``, same shape, or ``None`` for methods
                whose :attr:`needs_gradients` is false.

        Returns:
            Channel weights ``(N, C)`` or pixel weights ``(N, C, *spatial)``;
            the map is ``sum_k weights_k * A^k``.
        """

    def __call__(
        self,
        x: Tensor,
        target: Target = None,
        *,
        relu: bool = True,
        upsample: bool = True,
        normalize: bool = True,
    ) -> Tensor:
        """Compute one map per sample; see :meth:`explain` for the arguments.

        Returns:
            The maps, float32 on ``x``'s device, shape ``(N, *x.shape[2:])``
            (``(N, *layer spatial)`` with ``upsample=False``).
        """
        return self.explain(x, target, relu=relu, upsample=upsample, normalize=normalize).maps

    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        relu: bool = True,
        upsample: bool = True,
        normalize: bool = True,
    ) -> CAMResult:
        """Run the model on ``x`` and explain ``target`` at the layer.

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: What to explain (see :mod:`camkit.targets`): ``None`` for
                each sample's predicted class, an ``int`` for one class, a
                sequence or 1-D integer tensor of one class per sample, or a
                callable mapping the model output to ``(N,)`` scores.
            relu: Keep only positive evidence, ``ReLU(sum_k w_k A^k)``. With
                ``False`` the signed map is returned.
            upsample: Resize the map to ``x``'s spatial size by (bi/tri)linear
                interpolation (``align_corners=False``). With ``False`` the map
                keeps the layer's resolution.
            normalize: Scale each map to min 0 and max 1 (a constant map becomes
                all zeros), after the ReLU and the upsampling.

        Returns:
            The maps with the model output, scores and classes of the same pass.

        Raises:
            CamkitTypeError: For an input or target of the wrong type, or a layer
                whose output is not a floating-point tensor.
            CamkitValueError: For an empty batch, classes out of range, a wrong
                number of targets, a layer the forward pass never reaches, or a
                score that does not depend on the layer.
        """
        with torch.inference_mode(False):
            return self._explain(x, target, relu=relu, upsample=upsample, normalize=normalize)

    def _explain(
        self, x: Tensor, target: Target, *, relu: bool, upsample: bool, normalize: bool
    ) -> CAMResult:
        batch_size = _check_input(x)
        checked = check_target(target, batch_size)
        with _eval_mode(self.model), LayerCapture(self.layer_name, self.layer) as capture:
            with torch.no_grad():
                output = self.model(x)
            activation = self._reached(capture, batch_size, x, upsample)
            with torch.enable_grad():
                scores, classes = resolve_scores(checked, output, batch_size)
                gradients = self._gradients(scores, activation) if self.needs_gradients else None
        activations = activation.detach().float()
        weights = self.weights(activations, gradients)
        maps = _maps.weighted_sum(activations, weights)
        if relu:
            maps = maps.clamp_min(0)
        if upsample:
            maps = _maps.upsample(maps, tuple(x.shape[2:]))
        if normalize:
            maps = _maps.min_max_normalize(maps)
        return CAMResult(
            maps=maps.to(x.device),
            output=_detached(output),
            scores=scores.detach(),
            classes=classes,
        )

    def _reached(self, capture: LayerCapture, batch_size: int, x: Tensor, upsample: bool) -> Tensor:
        activation = capture.activation
        if activation is None:
            raise CamkitValueError(
                f"layer: {self.layer_name!r} was not reached in the forward pass; "
                f"choose a layer the model runs on this input"
            )
        shape = tuple(activation.shape)
        if activation.dim() not in (3, 4, 5) or shape[0] != batch_size:
            raise CamkitValueError(
                f"layer: {self.layer_name!r} returned shape {shape}; a CAM needs "
                f"(N, C, L), (N, C, H, W) or (N, C, D, H, W) with N = {batch_size}"
            )
        if upsample and activation.dim() != x.dim():
            raise CamkitValueError(
                f"upsample: cannot resize the map of {self.layer_name!r}, with "
                f"{activation.dim() - 2} spatial dims, to the input's "
                f"{tuple(x.shape[2:])}; pass upsample=False"
            )
        return activation

    def _gradients(self, scores: Tensor, activation: Tensor) -> Tensor:
        gradient = None
        if scores.requires_grad:
            (gradient,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
        if gradient is None:
            raise CamkitValueError(
                f"target: the score does not depend on layer {self.layer_name!r}; "
                f"choose a layer the score is computed from"
            )
        return gradient.float()


def _check_input(x: object) -> int:
    if not isinstance(x, Tensor):
        raise CamkitTypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise CamkitTypeError(
            f"x: expected a floating-point tensor, got dtype {x.dtype}; convert it with x.float()"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise CamkitValueError(
            f"x: expected a non-empty batch (N, C, *spatial), got shape {tuple(x.shape)}"
        )
    return int(x.shape[0])


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _detached(output: Any) -> Any:
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(_detached(o) for o in output))
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(o) for o in output)
    if isinstance(output, dict):
        return {k: _detached(v) for k, v in output.items()}
    return output

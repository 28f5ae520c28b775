"""Guided Backpropagation and Guided Grad-CAM: input-resolution, fine-grained maps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camkit._gradients import score_gradients
from camkit._hooks import _Hooks
from camkit._model import check_input, detached, eval_mode, forward
from camkit.base import CAMResult, LayerSpec
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.methods.gradient import GradCAM
from camkit.targets import Target, bind_target, check_target

__all__ = ["GuidedBackprop", "GuidedGradCAM"]


class _GuidedReLU(torch.autograd.Function):
    """Identity forward; backward passes only positive gradients where the ReLU was active."""

    @staticmethod
    def forward(ctx: Any, output: Tensor) -> Tensor:
        ctx.save_for_backward(output)
        return output.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (output,) = ctx.saved_tensors
        guided: Tensor = grad.clamp_min(0) * (output > 0)
        return guided


class _GuidedReLUs(_Hooks):
    def on_output(self, index: int, output: Tensor) -> Tensor:
        result: Tensor = _GuidedReLU.apply(output)
        return result


class GuidedBackprop:
    r"""Guided Backpropagation: the input gradient with only positive signals let through ReLUs.

    Springenberg et al., *Striving for Simplicity: The All Convolutional Net*,
    ICLR Workshop 2015, https://arxiv.org/abs/1412.6806.

    At every ``nn.ReLU`` module (in-place ones included), the backward pass
    keeps a gradient only where both the ReLU's output and the incoming
    gradient are positive:

    .. math::

        R^{(l)} = \mathbb{1}[f^{(l)} > 0]\; \mathbb{1}[R^{(l+1)} > 0]\; R^{(l+1)}.

    The result is the signed gradient of the score with respect to the input,
    ``(N, C, *spatial)`` like ``x`` (``(N, k, C, *spatial)`` for ``k`` targets),
    float32 and not normalized. ReLUs called as functions (``F.relu``) are not
    guided. The model is restored exactly: the guidance lives in forward hooks
    that are removed when the call ends.

    Args:
        model: Any :class:`torch.nn.Module` with ``nn.ReLU`` modules.

    Raises:
        CamkitValueError: If the model has no ``nn.ReLU`` module.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(),
        ...                       nn.Linear(144, 2))
        >>> GuidedBackprop(model)(torch.randn(3, 1, 8, 8), target=1).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
        if not self.relus:
            raise CamkitValueError(
                "model: has no nn.ReLU module to guide; Guided Backprop would be the plain "
                "input gradient"
            )

    def __call__(self, x: Tensor, target: Target = None) -> Tensor:
        """Return the guided input gradients; see :meth:`explain`."""
        return self.explain(x, target).maps

    def explain(self, x: Tensor, target: Target = None) -> CAMResult:
        """Run the model on ``x`` and back-propagate ``target``'s score with guidance.

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: As for :meth:`camkit.BaseCAM.explain`.

        Returns:
            The guided gradients as ``maps``, with the output, scores and classes.
        """
        batch_size = check_input(x)
        checked = check_target(target, batch_size)
        with torch.inference_mode(False), eval_mode(self.model), _GuidedReLUs(self.relus):
            leaf = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                output = forward(self.model, leaf)
                bound = bind_target(checked, output, batch_size)
                scores = bound.scores(output)
                (grads,) = score_gradients(scores, [leaf])
        if grads is None:
            raise CamkitValueError("target: the score does not depend on the input")
        maps = grads.float()
        classes, scores = bound.classes, scores.detach()
        if not bound.multi:
            maps, scores = maps[:, 0], scores[:, 0]
            classes = None if classes is None else classes[:, 0]
        return CAMResult(maps, detached(output), scores, classes, {})


class GuidedGradCAM:
    r"""Guided Grad-CAM: Guided Backprop masked by the (upsampled) Grad-CAM map.

    Selvaraju et al., IJCV 2020, Sec. 3.2, https://arxiv.org/abs/1610.02391:

    .. math::

        G^c = R^c \odot \operatorname{up}(L^c_{\text{Grad-CAM}}),

    with :math:`R^c` the Guided Backprop input gradient and the Grad-CAM map
    upsampled to the input and scaled to [0, 1]. Shape ``(N, C, *spatial)``
    like ``x``, float32.

    Args:
        model: Any :class:`torch.nn.Module` with ``nn.ReLU`` modules.
        layer: The layer for Grad-CAM, as for :class:`~camkit.GradCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> GuidedGradCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(self, model: nn.Module, layer: LayerSpec) -> None:
        self.guided = GuidedBackprop(model)
        self.gradcam = GradCAM(model, layer)

    def __call__(self, x: Tensor, target: Target = None) -> Tensor:
        """Return Guided Grad-CAM maps; see :meth:`explain`."""
        return self.explain(x, target).maps

    def explain(self, x: Tensor, target: Target = None) -> CAMResult:
        """Compute Guided Backprop and Grad-CAM for ``target`` and multiply them."""
        guided = self.guided.explain(x, target)
        cam = self.gradcam.explain(x, target if guided.classes is None else guided.classes)
        weight = cam.maps.unsqueeze(guided.maps.dim() - x.dim() + 1)
        return CAMResult(
            guided.maps * weight,
            guided.output,
            guided.scores,
            guided.classes,
            {self.gradcam.layer_name: cam.maps},
        )

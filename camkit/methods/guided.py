"""Guided Backpropagation and Guided Grad-CAM: input-resolution, fine-grained maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camkit._hooks import Hooks
from camkit._model import eval_mode
from camkit._outputs import logits_in
from camkit._pipeline import Request, check_finite, explained_by, maps_only, result, scored
from camkit.base import DIFFERENTIABLE_METHODS, LayerSpec
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.methods.gradient import GradCAM
from camkit.result import CAMResult
from camkit.targets import Target, class_scores

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


class _GuidedReLUs(Hooks):
    def on_output(self, index: int, output: Tensor) -> Tensor:
        result: Tensor = _GuidedReLU.apply(output)
        return result


def _refuse_differentiable(differentiable: bool, method: str) -> None:
    if differentiable:
        raise CamkitValueError(
            f"differentiable: {method} replaces the ReLUs' backward pass, so its maps are "
            f"not a function autograd can differentiate; differentiable maps come from "
            f"{DIFFERENTIABLE_METHODS}"
        )


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

    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        differentiable: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """Run the model on ``x`` and back-propagate ``target``'s score with guidance.

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: As for :meth:`camkit.BaseCAM.explain`.
            differentiable: Not offered: the guided backward pass replaces the
                ReLUs' gradient, so the maps are not a function autograd can
                differentiate; ``True`` raises an error.
            forward_args: Further positional inputs of the model, as for
                :meth:`camkit.BaseCAM.explain`.
            forward_kwargs: Keyword inputs of the model, as ``forward_args``.

        Returns:
            The guided gradients as ``maps``, with the output, scores and classes.

        Raises:
            CamkitTypeError: For an input or target of the wrong type.
            CamkitValueError: For an empty batch, classes out of range, a score
                that does not depend on the input, a NaN or infinite score
                or gradient, or ``differentiable=True``.
        """
        _refuse_differentiable(differentiable, type(self).__name__)
        with torch.inference_mode(False):  # a target made here must not be an inference tensor
            request = Request.check(x, target, forward_args, forward_kwargs)
            with eval_mode(self.model), _GuidedReLUs(self.relus), torch.enable_grad():
                leaf = x.detach().clone().requires_grad_(True)
                output = request.run(self.model, leaf)
                bound, scores = scored(request, output)
                (gradients,) = explained_by(scores, [leaf], ["the input"])
        maps = gradients.float()
        check_finite(x, scores, {"input": maps})
        return result(maps, {}, output, bound, scores)

    __call__ = maps_only(explain)


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

    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        differentiable: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """Compute Guided Backprop and Grad-CAM for ``target`` and multiply them.

        The arguments are those of :meth:`GuidedBackprop.explain`. The Grad-CAM
        map of the same classes is in the result's ``layer_maps``.
        """
        _refuse_differentiable(differentiable, type(self).__name__)
        options: dict[str, Any] = {"forward_args": forward_args, "forward_kwargs": forward_kwargs}
        guided = self.guided.explain(x, target, **options)
        cam_target: Target = target
        if target is None and guided.classes is not None:  # the predicted class, on the device
            predicted = guided.classes  # (read as a target tensor, it would go to the host)
            cam_target = lambda out: class_scores(logits_in(out), predicted)  # noqa: E731
        cam = self.gradcam.explain(x, cam_target, **options)
        weight = cam.maps.unsqueeze(guided.maps.dim() - x.dim() + 1)
        return CAMResult(
            guided.maps * weight,
            guided.output,
            guided.scores,
            guided.classes,
            {self.gradcam.layer_name: cam.maps},
        )

    __call__ = maps_only(explain)

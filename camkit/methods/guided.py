"""Guided Backpropagation and Guided Grad-CAM: input-resolution, fine-grained maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camkit._engine.hooks import Hooks
from camkit._engine.model import eager
from camkit._engine.model_outputs import logits_in
from camkit._engine.pipeline import Explained, Request, bind_and_score, gradients_at, run_pass
from camkit.base import LayerSpec
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
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


_GUIDED = (
    "it replaces the ReLUs' backward pass, so its maps are not a function autograd can "
    "differentiate"
)


class GuidedBackprop(Explainer):
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

    reports_output = True

    not_differentiable_because = _GUIDED
    input_channels = True

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        model = eager(model)
        self.model = model
        self.relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
        self.layer_names = []
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
        upsample: bool = True,
        differentiable: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """Run the model on ``x`` and back-propagate ``target``'s score with guidance.

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: As for :meth:`camkit.BaseCAM.explain`.
            upsample: Only ``True``: the maps are gradients at the input.
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
                or gradient, ``upsample=False`` or ``differentiable=True``.
        """
        return run_pass(
            self,
            x,
            target,
            self._explained,
            upsample=upsample,
            differentiable=differentiable,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
        )

    def _explained(self, request: Request) -> Explained:
        with _GuidedReLUs(self.relus), torch.enable_grad():
            leaf = request.x.detach().clone().requires_grad_(True)
            output = request.run(self.model, leaf)
            bound, scores = bind_and_score(request, output)
            (gradients,) = gradients_at(scores, [leaf], ["the input"])
        return Explained(gradients.float(), {}, output, bound, scores)


class GuidedGradCAM(Explainer):
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

    reports_output = True

    not_differentiable_because = _GUIDED
    input_channels = True

    def __init__(self, model: nn.Module, layer: LayerSpec) -> None:
        self.guided = GuidedBackprop(model)
        self.gradcam = GradCAM(model, layer)
        self.model = self.guided.model
        self.layer_names = self.gradcam.layer_names

    def explain(
        self,
        x: Tensor,
        target: Target = None,
        *,
        upsample: bool = True,
        differentiable: bool = False,
        forward_args: Sequence[Any] = (),
        forward_kwargs: Mapping[str, Any] | None = None,
    ) -> CAMResult:
        """Compute Guided Backprop and Grad-CAM for ``target`` and multiply them.

        The arguments are those of :meth:`GuidedBackprop.explain`. The Grad-CAM
        map of the same classes is in the result's ``layer_maps``.
        """
        return run_pass(
            self,
            x,
            target,
            self._explained,
            upsample=upsample,
            differentiable=differentiable,
            forward_args=forward_args,
            forward_kwargs=forward_kwargs,
        )

    def _explained(self, request: Request) -> Explained:
        guided = self.guided._explained(request)
        classes = guided.target.classes  # (N, k) on the device: Grad-CAM explains the same
        cam_target = request.target.function
        if classes is not None:
            cam_target = lambda out: class_scores(logits_in(out), classes)  # noqa: E731
        options: dict[str, Any] = {
            "forward_args": request.forward_args,
            "forward_kwargs": request.forward_kwargs,
        }
        with request.precision.callers():  # Grad-CAM's own pass runs as the caller asked
            cam = self.gradcam.explain(request.x, cam_target, **options).maps
        cam = cam if cam.dim() > request.x.dim() - 1 else cam[:, None]  # (N, k, *spatial)
        layer_maps = {self.gradcam.layer_name: cam}
        weighted = guided.maps * cam.unsqueeze(2)  # guided maps are (N, k, C, *spatial)
        return Explained(weighted, layer_maps, guided.output, guided.target, guided.scores)

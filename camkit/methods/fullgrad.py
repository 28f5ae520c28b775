"""FullGrad: the input gradient and every bias's gradient, summed into one map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit._engine import map_ops
from camkit._engine.hooks import Hooks
from camkit._engine.model import eager
from camkit._engine.pipeline import Explained, Request, bind_and_score, gradients_at, run_pass
from camkit.errors import CamkitTypeError, CamkitValueError
from camkit.explainer import Explainer
from camkit.result import CAMResult
from camkit.targets import Target

__all__ = ["FullGrad"]

_BIASED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FullGrad(Explainer):
    r"""FullGrad: input-gradient times input, plus every bias's gradient map, each normalized.

    Srinivas & Fleuret, *Full-Gradient Representation for Neural Network
    Visualization*, NeurIPS 2019, https://arxiv.org/abs/1905.00780.

    A ReLU network's output is exactly :math:`\nabla_x f \cdot x + \sum_l
    \nabla_{b_l} f \cdot b_l`; FullGrad shows both parts. With :math:`z_l` the
    output of each convolution and batch normalization with a bias (over the
    whole model), :math:`b_l` its bias (for batch normalization, the effective
    bias :math:`\beta - \mu \gamma / \sqrt{\sigma^2 + \epsilon}` of eval mode),

    .. math::

        S = \sum_{c} \psi\big(\nabla_x y^c \odot x\big)_c
            + \sum_l \sum_c \psi\big(b_{l,c}\, \nabla_{z_l} y^c\big)_c,

    then scaled to :math:`[0, 1]`: ``(N, *spatial)`` maps like a CAM's
    (``(N, k, *spatial)`` for ``k`` targets). :math:`\psi` takes the absolute
    value, scales it and resizes it to the input; how, ``scaling`` says:

    * ``"authors"`` (the default), as the authors' code does
      (idiap/fullgrad-saliency, ``_postProcess`` then ``F.interpolate``): each
      sample's term, all its channels together, is shifted to minimum 0 and
      divided by its maximum plus :math:`10^{-6}`, *then* resized,
      (bi/tri)linearly with ``align_corners=True``.
    * ``"per_channel"``, as pytorch-grad-cam's ``FullGrad`` does: each channel
      of each sample is scaled to [0, 1] on its own (dividing by its range plus
      :math:`10^{-7}`), then resized (``align_corners=False``, as its OpenCV
      resize). pytorch-grad-cam includes only ``Conv2d`` and ``BatchNorm2d``
      layers; on those, the two give the same maps.

    Args:
        model: Any :class:`torch.nn.Module`; it is not modified.
        layers: The biased layers to include: one name or module, or a list of them; by
            default every convolution and batch normalization with a bias.
        scaling: How each term is scaled before it is resized and summed:
            ``"authors"`` or ``"per_channel"`` (see above).

    Raises:
        CamkitValueError: If the model has no biased layer and none is given, or
            ``scaling`` is not one of the two.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                       nn.Flatten(), nn.Linear(144, 2)).eval()
        >>> FullGrad(model)(torch.randn(3, 1, 8, 8), target=1).shape
        torch.Size([3, 8, 8])
    """

    reports_output = True

    not_differentiable_because = "each term is scaled per channel outside the autograd graph"

    def __init__(
        self,
        model: nn.Module,
        layers: str | nn.Module | Sequence[str | nn.Module] | None = None,
        *,
        scaling: str = "authors",
    ) -> None:
        if scaling not in _SCALINGS:
            raise CamkitValueError(
                f"scaling: got {scaling!r}; allowed: {', '.join(map(repr, _SCALINGS))}"
            )
        self.scaling = scaling
        if not isinstance(model, nn.Module):
            raise CamkitTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        model = eager(model)
        self.model = model
        named = dict(model.named_modules())
        chosen: list[tuple[str, nn.Module]]
        if layers is None:
            chosen = [
                (name, m)
                for name, m in named.items()
                if isinstance(m, _BIASED) and getattr(m, "bias", None) is not None
            ]
        else:
            if isinstance(layers, (str, nn.Module)):  # one layer (a name is not a sequence here)
                layers = [layers]
            if not isinstance(layers, Sequence):
                raise CamkitTypeError(
                    f"layers: got {type(layers).__name__}; allowed: a layer's name or module, "
                    f"a list of them, or None for every convolution and batch normalization"
                )
            if not layers:
                raise CamkitValueError(
                    "layers: got an empty list; allowed: one or more biased layers (names or "
                    "modules), or None for every convolution and batch normalization"
                )
            by_module = {id(m): name for name, m in named.items()}
            chosen = []
            for layer in layers:
                module = named.get(layer) if isinstance(layer, str) else layer
                if not isinstance(module, _BIASED) or id(module) not in by_module:
                    raise CamkitValueError(
                        f"layers: {layer!r} is not a convolution or batch normalization of "
                        f"the model"
                    )
                chosen.append((by_module[id(module)], module))
        if not chosen:
            raise CamkitValueError(
                "model: has no convolution or batch normalization with a bias, so FullGrad "
                "would be input-gradient times input alone; pass layers= or use another method"
            )
        self.layers: list[tuple[str, nn.Module]] = chosen
        self.layer_names = [name for name, _ in chosen]

    def settings(self) -> dict[str, Any]:
        """The method, the biased layers and ``scaling``."""
        return {**super().settings(), "scaling": self.scaling}

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
        """Run the model on ``x`` and sum the normalized full-gradient maps of ``target``.

        Args:
            x: The input batch, a floating-point tensor ``(N, C, *spatial)``.
            target: As for :meth:`camkit.BaseCAM.explain`.
            upsample: Only ``True``: FullGrad's terms are summed at the input's resolution.
            differentiable: Only ``False`` (see :attr:`not_differentiable_because`).
            forward_args: Further positional inputs of the model.
            forward_kwargs: Keyword inputs of the model.

        Returns:
            The maps (scaled to [0, 1]), with the output, scores and classes; the
            ``layer_maps`` hold each term before the final scaling: ``"input"``
            and one per biased layer.

        Raises:
            CamkitTypeError: For an input or target of the wrong type.
            CamkitValueError: For an empty batch, classes out of range, a NaN
                or infinite score, ``upsample=False`` or ``differentiable=True``.
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
        x = request.x
        recorder = _Outputs(self.layers)
        with recorder, torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            output = request.run(self.model, leaf)
            bound, scores = bind_and_score(request, output)
            reached = [i for i, out in enumerate(recorder.outputs) if out is not None]
            tensors = [leaf, *(cast(Tensor, recorder.outputs[i]) for i in reached)]
            names = ["the input", *(f"layer {self.layers[i][0]!r}" for i in reached)]
            gradients = gradients_at(scores, tensors, names)
        size = tuple(x.shape[2:])
        terms = {"input": _psi(gradients[0] * leaf.detach()[:, None], size, self.scaling)}
        for i, gradient in zip(reached, gradients[1:], strict=True):
            name, module = self.layers[i]
            bias = _bias(module).view(1, 1, -1, *[1] * (gradient.dim() - 3))
            terms[name] = _psi(gradient * bias, size, self.scaling)
        total = torch.stack(list(terms.values())).sum(0)
        maps = map_ops.scale_maps_(total.contiguous())
        return Explained(maps, terms, output, bound, scores)


class _Outputs(Hooks):
    """Keep each biased layer's (last) output, in the autograd graph."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        super().__init__(layers)
        self.outputs: list[Tensor | None] = [None] * len(layers)

    def on_output(self, index: int, output: Any) -> Any:
        self.outputs[index] = output
        return output.clone()  # an in-place ReLU after the layer must not rewrite it


def _bias(module: nn.Module) -> Tensor:
    """The layer's bias; batch normalization's effective bias in eval mode."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        mean, var = module.running_mean, module.running_var
        bias = cast(Tensor, module.bias)
        if mean is None or var is None:  # no running statistics: batch statistics, no fixed bias
            return bias.detach().float()
        scale = module.weight if module.weight is not None else torch.ones_like(mean)
        return (bias - mean * scale / torch.sqrt(var + module.eps)).detach().float()
    return cast(Tensor, module.bias).detach().float()


_SCALINGS = ("authors", "per_channel")
_AUTHORS_EPSILON = 1e-6
_PER_CHANNEL_EPSILON = 1e-7
_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _psi(values: Tensor, size: tuple[int, ...], scaling: str) -> Tensor:
    """``(N, k, C, *spatial)``: absolute value, scaled and resized to ``size`` as
    ``scaling`` says (see :class:`FullGrad`), summed over channels: ``(N, k, *size)``."""
    n, k, c = values.shape[:3]
    magnitude = values.detach().abs().float()
    if scaling == "authors":
        flat = magnitude.flatten(2)  # each sample's (and target's) channels together
        shifted = flat - flat.amin(dim=2, keepdim=True)
        scaled = (shifted / (shifted.amax(dim=2, keepdim=True) + _AUTHORS_EPSILON)).view_as(
            magnitude
        )
        resized = scaled.flatten(0, 2)
        if len(size) == resized.dim() - 1 and tuple(resized.shape[1:]) != size:
            mode = _MODES[len(size)]
            resized = F.interpolate(resized[:, None], size, mode=mode, align_corners=True)[:, 0]
    else:
        flat = magnitude.flatten(3)  # each channel on its own
        low = flat.amin(dim=3, keepdim=True)
        span = flat.amax(dim=3, keepdim=True) - low
        scaled = ((flat - low) / (span + _PER_CHANNEL_EPSILON)).view_as(magnitude)
        resized = scaled.flatten(0, 2)
        if len(size) == resized.dim() - 1:
            resized = map_ops.upsample(resized.contiguous(), size)
    return resized.reshape(n, k, c, *resized.shape[1:]).sum(dim=2)

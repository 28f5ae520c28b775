"""CAM methods that weight the layer's channels (or pixels) by the score's gradients."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from camkit.base import BaseCAM, LayerSpec
from camkit.context import LayerContext
from camkit.errors import CamkitValueError

__all__ = ["GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "XGradCAM"]


class GradCAM(BaseCAM):
    r"""Grad-CAM: channels weighted by their spatially averaged gradient.

    Selvaraju et al., *Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization*, IJCV 2020 (ICCV 2017),
    https://arxiv.org/abs/1610.02391.

    For the pre-softmax score :math:`y^c` and the layer's activations
    :math:`A^k` over :math:`Z` spatial positions,

    .. math::

        \alpha_k^c = \frac{1}{Z} \sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}},
        \qquad
        L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big).

    On a network that ends in global average pooling and one linear layer,
    :math:`\alpha_k^c = w_k^c / Z` and Grad-CAM equals CAM (Zhou et al., 2016)
    up to scale.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...     nn.Flatten(), nn.Linear(4, 10))
        >>> maps = GradCAM(model, "1")(torch.randn(2, 1, 8, 8), target=3)
        >>> maps.shape
        torch.Size([2, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        r"""Return :math:`\alpha_k^c`, the mean gradient of each channel."""
        return context.gradients.mean(dim=context.spatial_dims)


class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++: gradients weighted per pixel to credit every instance of a class.

    Chattopadhay et al., *Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks*, WACV 2018,
    https://arxiv.org/abs/1710.11063.

    camkit uses the paper's closed form for an exponential score
    :math:`Y^c = \exp(S^c)` (their Eq. 19), in which higher derivatives become
    powers of the first, :math:`g = \partial S^c / \partial A^k_{ij}`:

    .. math::

        \alpha_{ij}^{kc} = \frac{g_{ij}^2}
            {2 g_{ij}^2 + \sum_{a,b} A^k_{ab}\, g_{ij}^3},
        \qquad
        w_k^c = \sum_{i,j} \alpha_{ij}^{kc}\, \mathrm{ReLU}(g_{ij}),

    with :math:`\alpha = 0` where :math:`g = 0` (or the denominator is 0). The
    positive factor :math:`\exp(S^c)` scales every weight equally and is dropped.
    This is the approximation used by the authors' code and by the usual
    implementations, not the exact higher-order derivatives of :math:`S^c`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> GradCAMPlusPlus(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return :math:`w_k^c`, the alpha-weighted sum of positive gradients.

        Only positive gradients count, and there :math:`\\alpha\\,g = g / (2 + g \\sum A)`:
        the same value with fewer operations, and no :math:`g^3` to overflow.
        """
        g, dims = context.gradients, context.spatial_dims
        total = context.activations.sum(dim=dims, keepdim=True)
        denominator = total * g + 2
        usable = (g > 0) & (denominator != 0)
        return torch.where(usable, g / torch.where(usable, denominator, 1.0), 0.0).sum(dim=dims)


class XGradCAM(BaseCAM):
    r"""XGrad-CAM: gradients weighted by the normalized activations.

    Fu et al., *Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs*, BMVC 2020, https://arxiv.org/abs/2008.02312.

    .. math::

        \alpha_k^c = \sum_{i,j} \frac{A^k_{ij}}{\sum_{a,b} A^k_{ab}}
            \frac{\partial y^c}{\partial A^k_{ij}},

    with :math:`\alpha_k^c = 0` for a channel whose activations sum to 0.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> XGradCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        r"""Return :math:`\alpha_k^c`."""
        a, dims = context.activations, context.spatial_dims
        total = a.sum(dim=dims)
        weighted = (a * context.gradients).sum(dim=dims)
        return torch.where(total != 0, weighted / torch.where(total != 0, total, 1.0), 0.0)


class HiResCAM(BaseCAM):
    r"""HiResCAM: gradients times activations, element-wise, with no averaging.

    Draelos & Carin, *Use HiResCAM instead of Grad-CAM for faithful explanations
    of convolutional neural networks*, 2020, https://arxiv.org/abs/2011.08891.

    .. math::

        L^c = \mathrm{ReLU}\Big(\sum_k \frac{\partial y^c}{\partial A^k} \odot A^k\Big).

    When everything after the layer is piecewise linear (ReLU, max-pooling,
    linear layers), the signed map sums exactly to :math:`y^c - b^c`, where
    :math:`b^c` is the score of the linear piece at zero.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> HiResCAM(model, "1")(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def weights(self, context: LayerContext) -> Tensor:
        """Return the gradients themselves as pixel weights."""
        return context.gradients


class LayerCAM(BaseCAM):
    r"""LayerCAM: activations weighted by their positive gradients, pixel by pixel.

    Jiang et al., *LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization*, IEEE TIP 2021, https://doi.org/10.1109/TIP.2021.3089943.

    .. math::

        L^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\Big(
            \frac{\partial y^c}{\partial A^k_{ij}}\Big) A^k_{ij}\Big).

    For shallow layers the paper rescales the map as
    :math:`\tanh(\gamma L^c / \max L^c)` with :math:`\gamma = 2`; pass
    ``tanh_scale=2.0`` to do so (applied per map at the layer's resolution).

    Args:
        model: As for :class:`~camkit.BaseCAM`.
        layer: As for :class:`~camkit.BaseCAM`.
        tanh_scale: The paper's :math:`\gamma`, or ``None`` for no rescaling.
        **options: ``layout``, ``prefix_tokens``, ``grid`` as for :class:`~camkit.BaseCAM`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> LayerCAM(model, "1", tanh_scale=2.0)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | list[LayerSpec],
        *,
        tanh_scale: float | None = None,
        **options: object,
    ) -> None:
        super().__init__(model, layer, **options)  # type: ignore[arg-type]
        if tanh_scale is not None and not tanh_scale > 0:
            raise CamkitValueError(f"tanh_scale: got {tanh_scale}; allowed: a positive number")
        self.tanh_scale = tanh_scale

    def weights(self, context: LayerContext) -> Tensor:
        """Return the positive part of the gradients as pixel weights."""
        return context.gradients.clamp_min(0)

    def refine(self, maps: Tensor, context: LayerContext) -> Tensor:
        """Apply the paper's tanh rescaling when ``tanh_scale`` is set."""
        if self.tanh_scale is None:
            return maps
        peak = maps.flatten(2).amax(dim=2).view(*maps.shape[:2], *([1] * (maps.dim() - 2)))
        return torch.tanh(self.tanh_scale * maps / torch.where(peak > 0, peak, 1.0))

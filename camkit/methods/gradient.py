"""CAM methods that weight the layer's channels by the score's gradients."""

from __future__ import annotations

from torch import Tensor

from camkit.base import BaseCAM
from camkit.errors import CamkitValueError

__all__ = ["GradCAM"]


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

    def weights(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        """Return :math:`\\alpha_k^c`, the mean gradient of each channel."""
        if gradients is None:
            raise CamkitValueError("gradients: Grad-CAM needs the score's gradients")
        return gradients.flatten(2).mean(dim=2)
